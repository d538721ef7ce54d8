"""The Engine's membership calls (a mixin of `dengine.node.engine.Engine`): the members,
adding a learner, promoting it, changing a member's address, removing a member (the leader
hands over first when it is the one removed); see `dengine.node.membership`."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from dengine.api import MemberInfo
from dengine.config import parse_address
from dengine.errors import ConfigError, DengineError, InvalidRequest, NotLeader, Timeout
from dengine.kv.validate import check_node_id
from dengine.node.membership import promoted
from dengine.proto import Membership
from dengine.raft import Role

if TYPE_CHECKING:  # pragma: no cover
    from dengine.node.node import Node


class MemberApi:
    """The Engine's membership calls (a mixin: it provides `_node` and `_timeout`)."""

    if TYPE_CHECKING:  # pragma: no cover
        _node: Node

        @staticmethod
        def _timeout(timeout: float | None) -> float: ...

    def _is_leader(self) -> bool:
        return self._node.role == Role.LEADER

    def members(self) -> list[MemberInfo]:
        """The latest configuration this node has appended (match indexes: leader only)."""
        return self._node.members.member_list(self._node.leader_id)

    def peer_client_address(self, node_id: int) -> str:
        """The client address `node_id` announced to this node ("" if not known yet)."""
        return self._node.members.peer_client_address(node_id)

    def membership(self) -> Membership:
        """A copy of the latest configuration this node has appended (the learners'
        `promote` flags included)."""
        return self._node.members.copy()

    def new_member_id(self) -> int:
        """The id a member added without one gets (see `Members.new_id`)."""
        return self._node.members.new_id()

    def peer_connected(self, node_id: int) -> bool:
        """Whether this node's link to `node_id` is up (itself: True)."""
        return self._node.members.connected(node_id)

    async def add_learner(
        self,
        node_id: int,
        address: str,
        *,
        promote_when_caught_up: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Add `node_id` (peer address `address`) as a learner; returns once committed.

        Leader only. With `promote_when_caught_up` the leader (this one or a later one)
        makes it a voter once it is within `promote_lag` entries.
        """
        _check_peer_address(node_id, address)
        membership = self._leader_membership()
        for role, group in (("voter", membership.voters), ("learner", membership.learners)):
            if any(m.id == node_id for m in group):
                raise InvalidRequest(f"node {node_id} is already a {role}")
        new = Membership()
        new.CopyFrom(membership)
        new.learners.add(id=node_id, address=address, promote=promote_when_caught_up)
        await self._node.members.change(new, self._timeout(timeout))

    async def promote(self, node_id: int, *, timeout: float | None = None) -> None:
        """Make learner `node_id` a voter; InvalidRequest unless it has caught up."""
        check_node_id(node_id)
        membership = self._leader_membership()
        if not any(m.id == node_id for m in membership.learners):
            what = "a voter already" if any(m.id == node_id for m in membership.voters) else (
                "not a member")
            raise InvalidRequest(f"node {node_id} is not a learner ({what})")
        self._node.members.check_learner_caught_up(node_id)
        await self._node.members.change(promoted(membership, node_id), self._timeout(timeout))

    async def update_member(self, node_id: int, address: str, *,
                            timeout: float | None = None) -> None:
        """Give member `node_id` a new peer address (etcd's MemberUpdate); returns once
        committed. The member must then listen there (restart it with that address)."""
        _check_peer_address(node_id, address)
        membership = self._leader_membership()
        found = False
        for m in (*membership.voters, *membership.learners):
            if m.id == node_id:
                m.address, found = address, True
        if not found:
            raise InvalidRequest(f"node {node_id} is not a member")
        await self._node.members.change(membership, self._timeout(timeout))

    async def remove_member(self, node_id: int, *, timeout: float | None = None) -> None:
        """Remove a voter or learner; returns once the change is committed.

        A leader asked to remove itself first hands leadership to the most caught-up voter
        and then raises NotLeader naming it: the removal is retried there (the client does
        that by itself).
        """
        check_node_id(node_id)
        membership = self._leader_membership()
        ids = {m.id for m in (*membership.voters, *membership.learners)}
        if node_id not in ids:
            raise InvalidRequest(f"node {node_id} is not a member")
        seconds = self._timeout(timeout)
        if node_id == self._node.node_id:
            await self._hand_over(membership, seconds)
        new = Membership()
        new.voters.extend(m for m in membership.voters if m.id != node_id)
        new.learners.extend(m for m in membership.learners if m.id != node_id)
        if not new.voters:
            raise InvalidRequest(f"cannot remove node {node_id}: it is the only voter")
        await self._node.members.change(new, seconds)

    async def move_leader(self, node_id: int, *, timeout: float | None = None) -> None:
        """Hand leadership to voter `node_id` (etcd's MoveLeader); returns once this node
        knows `node_id` leads. NotLeader unless this node leads; InvalidRequest if
        `node_id` is not a voter; Timeout if the transfer did not complete in time (it is
        abandoned after an election timeout, and asked again)."""
        check_node_id(node_id)
        membership = self._leader_membership()
        if node_id not in {m.id for m in membership.voters}:
            raise InvalidRequest(f"node {node_id} is not a voter: it cannot lead")
        if node_id != self._node.node_id:
            await self._transfer(node_id, self._timeout(timeout))

    async def _hand_over(self, membership: Membership, timeout: float) -> None:
        others = [m.id for m in membership.voters if m.id != self._node.node_id]
        if not others:
            raise InvalidRequest(f"cannot remove node {self._node.node_id}: it is the only voter")
        matches = {m.id: m.match_index for m in self.members()}
        target = max(others, key=lambda i: (matches.get(i, 0), -i))
        await self._transfer(target, timeout, f"; node {self._node.node_id} was not removed")
        raise NotLeader(
            f"node {self._node.node_id} handed leadership to node {self._node.leader_id} "
            f"before its removal; ask node {self._node.leader_id} to remove node "
            f"{self._node.node_id}",
            leader_id=self._node.leader_id,
            leader_address=self._node.leader_address(),
        )

    async def _transfer(self, target: int, timeout: float, why: str = "") -> None:
        """Until another node leads (`target`, unless it lost to another meanwhile)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        interval = self._node.config.tick_ms / 1000.0
        asked = False
        while self._is_leader() or self._node.leader_id in (0, self._node.node_id):
            if loop.time() >= deadline:
                raise Timeout(f"leadership transfer to node {target} did not complete "
                              f"within {timeout}s{why}")
            if self._is_leader() and (not asked or self._node.members.transfer_target() != target):
                # (again when abandoned after an election timeout)
                with contextlib.suppress(DengineError):  # leadership lost meanwhile
                    self._node.transfer_leadership(target)
                asked = True
            await asyncio.sleep(interval)

    def _leader_membership(self) -> Membership:
        self._node.check_running()
        if not self._is_leader():
            raise self._node.not_leader()
        return self._node.members.copy()


def _check_peer_address(node_id: int, address: str) -> None:
    """A valid node id and peer address (HOST:PORT), else InvalidRequest."""
    check_node_id(node_id)
    try:
        parse_address(address)
    except ConfigError as e:
        raise InvalidRequest(f"peer address of node {node_id}: {e.message}") from None

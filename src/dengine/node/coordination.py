"""The Engine's coordination calls (a mixin of `dengine.node.engine.Engine`): the Raft
group's own events (`leader_changes`, `membership_changes`, and the long-poll form the
servers use) and the recipes of `dengine.recipes` (`lock`, `election`) bound to the Engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from dengine.api import Leader, MemberSet
from dengine.recipes import RecipeCalls

if TYPE_CHECKING:  # pragma: no cover
    from dengine.node.node import Node


class Coordination(RecipeCalls):
    """The Engine's coordination calls (a mixin: it provides `_node`)."""

    if TYPE_CHECKING:  # pragma: no cover
        _node: Node

    # -- the Raft group's own events ------------------------------------------------------

    def leader_changes(self) -> AsyncIterator[Leader]:
        """`async for leader in engine.leader_changes():` the leader as this node knows it
        now, then each change (a new leader, the same one elected again at a higher term,
        `Leader(0, "", term)` while none is known), as the node learns it: no polling.
        Run leader-only work while `leader.id == engine.node_id`. Ends when the engine
        stops (raises Unavailable/StorageError if it failed or was removed)."""
        return self._node.group_events.leader.follow()

    def membership_changes(self) -> AsyncIterator[MemberSet]:
        """`async for members in engine.membership_changes():` the configuration this node
        has applied (voters and learners, id -> peer address), then each one it applies.
        Ends like `leader_changes`."""
        return self._node.group_events.membership.follow()

    async def wait_leader_change(self, known: Leader | None, timeout: float) -> Leader:
        """The leader as this node knows it, once it differs from `known` (at once when it
        does, or `known` is None), else after `timeout` s (the servers' long-poll)."""
        self._node.check_running()
        changes = self._node.group_events.leader
        current = changes.value
        if known is not None and (known.id, known.term) == (current.id, current.term):
            known = current  # (the address a client knows may be another node's view)
        return await changes.wait_change(known, timeout)

    async def wait_membership_change(self, known: MemberSet | None, timeout: float
                                     ) -> MemberSet:
        """`wait_leader_change` of the applied configuration."""
        self._node.check_running()
        return await self._node.group_events.membership.wait_change(known, timeout)

"""etcd's `etcdserverpb.Cluster` service on a node: MemberList, MemberAdd, MemberRemove,
MemberUpdate, MemberPromote (docs/operations.md, "Membership through etcd's API").

etcd's membership maps onto dengine's: a member is a node id with one peer address; a
member's etcd ID is its node id. MemberAdd picks the new member's id (`Engine.new_member_id`:
one more than any id the cluster's log knows) and adds it as a learner; without
`is_learner` the learner carries the `promote` flag, so the leader makes it a voter once it
has caught up. etcd shows such a member as a voter at once (it was added as one), and so
does this service; it votes once promoted. A member is "started" once it announced its
client address to this node (etcd: once it published its name): an unstarted member has
no name and no client URLs, as on etcd.

The changes are made by the leader: a follower forwards the request (once) to the leader's
client port, as it does a write, and answers once it has applied what the leader had
committed. Before a change the leader runs etcd's checks (`--strict-reconfig-check`, on by
default in etcd), over its links to the members, with etcd's errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from dengine.config import NodeConfig, parse_address
from dengine.errors import ConfigError, DengineError, KvError, NotLeader, Unavailable
from dengine.node.engine import Engine
from dengine.proto.etcd import rpc_pb2
from dengine.server.etcd.checks import check_message_size, decode
from dengine.server.etcd.errors import LEADER_CHANGED, TIMED_OUT
from dengine.server.etcd.forward import APPLIED_INDEX, Forwarder, forwarded
from dengine.server.etcd.kv import EtcdBase, timeout_of

log = logging.getLogger("dengine.server.etcd")

SERVICE = "etcdserverpb.Cluster"
DEFAULT_TIMEOUT_S = 5.0  # a change without a deadline (etcdctl always sends one)
RETRY_S = 0.05  # another change pending, or the leader's term not committed yet: retry

# etcd's errors of the Cluster service (rpctypes), code and text.
MEMBER_NOT_FOUND = ("NOT_FOUND", "etcdserver: member not found")
MEMBER_BAD_URLS = ("INVALID_ARGUMENT", "etcdserver: given member URLs are invalid")
PEER_URL_EXIST = ("FAILED_PRECONDITION", "etcdserver: Peer URLs already exists")
NOT_ENOUGH_STARTED = ("FAILED_PRECONDITION",
                      "etcdserver: re-configuration failed due to not enough started members")
MEMBER_NOT_LEARNER = ("FAILED_PRECONDITION", "etcdserver: can only promote a learner member")
LEARNER_NOT_READY = ("FAILED_PRECONDITION",
                     "etcdserver: can only promote a learner member which is in sync with leader")
UNHEALTHY = ("UNAVAILABLE", "etcdserver: unhealthy cluster")


def etcd_error(error: tuple[str, str]) -> KvError:
    return KvError(*error)


def url(address: str, tls: bool = False) -> str:
    """etcd's URL form of a HOST:PORT (https with TLS: the cluster's members are
    configured alike, so this member's settings tell)."""
    return f"{'https' if tls else 'http'}://{address}" if address else ""


def peer_address(urls: list[str]) -> str:
    """The HOST:PORT of a member's peer URLs: exactly one http(s)://HOST:PORT (a dengine
    member has one peer address); etcd's "given member URLs are invalid" otherwise."""
    if len(urls) != 1:
        raise etcd_error(MEMBER_BAD_URLS)
    scheme, sep, rest = urls[0].strip().partition("://")
    if not sep or scheme not in ("http", "https") or "/" in rest or "?" in rest:
        raise etcd_error(MEMBER_BAD_URLS)
    try:
        parse_address(rest)
    except ConfigError:
        raise etcd_error(MEMBER_BAD_URLS) from None
    return rest


@dataclass(frozen=True)
class MemberView:
    """One member as etcd's API shows it and its checks count it."""

    id: int
    address: str
    client_address: str
    voter: bool  # etcd's view: a voter, or a learner to be promoted once caught up
    started: bool  # it announced its client address (etcd: published its name)
    active: bool  # this node's link to it is up (itself: True)


def check_add(members: list[MemberView], address: str, learner: bool) -> None:
    """etcd's checks of MemberAdd, in its order (its mayAddMember, then the apply's)."""
    voters = [m for m in members if m.voter]
    if not learner:  # IsReadyToAddVotingMember: a quorum of the new voters started
        started = sum(m.started for m in voters)
        if not (started == 1 and len(voters) == 1) and started < (len(voters) + 1) // 2 + 1:
            raise etcd_error(NOT_ENOUGH_STARTED)
    if not all(m.active for m in voters):  # isConnectedFullySince
        raise etcd_error(UNHEALTHY)
    if any(m.address == address for m in members):
        raise etcd_error(PEER_URL_EXIST)


def check_remove(members: list[MemberView], node_id: int, self_id: int) -> None:
    """etcd's checks of MemberRemove (mayRemoveMember, then the apply's)."""
    target = next((m for m in members if m.id == node_id), None)
    if target is None:
        raise etcd_error(MEMBER_NOT_FOUND)
    if not target.voter:
        return
    rest = [m for m in members if m.voter and m.id != node_id]
    if sum(m.started for m in rest) < len(rest) // 2 + 1:  # IsReadyToRemoveVotingMember
        raise etcd_error(NOT_ENOUGH_STARTED)
    if node_id != self_id and not target.active:  # a member down is safe to remove
        return
    voters = [m for m in members if m.voter]
    if sum(m.active for m in voters) - 1 < 1 + (len(voters) - 1) // 2:
        raise etcd_error(UNHEALTHY)


def check_promote(members: list[MemberView], node_id: int, caught_up: bool) -> None:
    """etcd's checks of MemberPromote (isLearnerReady, IsReadyToPromoteMember, apply)."""
    target = next((m for m in members if m.id == node_id), None)
    if target is None:
        raise etcd_error(MEMBER_NOT_FOUND)
    if target.voter:
        raise etcd_error(MEMBER_NOT_LEARNER)
    if not caught_up:
        raise etcd_error(LEARNER_NOT_READY)
    voters = [m for m in members if m.voter]
    if 1 + sum(m.started for m in voters) < (len(voters) + 1) // 2 + 1:
        raise etcd_error(NOT_ENOUGH_STARTED)


def check_update(members: list[MemberView], node_id: int, address: str) -> None:
    """etcd's checks of MemberUpdate (the apply's: the member exists, no other has the URL)."""
    if not any(m.id == node_id for m in members):
        raise etcd_error(MEMBER_NOT_FOUND)
    if any(m.address == address and m.id != node_id for m in members):
        raise etcd_error(PEER_URL_EXIST)


class ClusterService(EtcdBase):
    """Handlers of `etcdserverpb.Cluster` over an Engine."""

    def __init__(self, engine: Engine, config: NodeConfig, forwarder: Forwarder) -> None:
        super().__init__(engine, config)
        self._forwarder = forwarder

    def generic_handler(self) -> grpc.GenericRpcHandler:
        handlers: dict[str, Callable[[bytes, Any], Awaitable[bytes]]] = {
            "MemberList": self.member_list,
            "MemberAdd": self._changer("MemberAdd", rpc_pb2.MemberAddRequest,
                                       rpc_pb2.MemberAddResponse, self._add),
            "MemberRemove": self._changer("MemberRemove", rpc_pb2.MemberRemoveRequest,
                                          rpc_pb2.MemberRemoveResponse, self._remove),
            "MemberUpdate": self._changer("MemberUpdate", rpc_pb2.MemberUpdateRequest,
                                          rpc_pb2.MemberUpdateResponse, self._update),
            "MemberPromote": self._changer("MemberPromote", rpc_pb2.MemberPromoteRequest,
                                           rpc_pb2.MemberPromoteResponse, self._promote),
        }
        return grpc.method_handlers_generic_handler(SERVICE, {
            name: grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=None, response_serializer=None)
            for name, fn in handlers.items()
        })

    # -- the members as etcd shows them ---------------------------------------------------

    def views(self) -> list[MemberView]:
        """The latest configuration this node has appended, by id."""
        engine, own = self._engine, self._config.node_id
        promote = {m.id for m in engine.membership().learners if m.promote}
        out = []
        for m in engine.members():
            client = m.client_address or (self._config.client_address if m.id == own else "")
            out.append(MemberView(
                id=m.id, address=m.address, client_address=client,
                voter=m.role == "voter" or m.id in promote,
                started=bool(client), active=engine.peer_connected(m.id)))
        return sorted(out, key=lambda v: v.id)

    def fill(self, members: Any, views: list[MemberView]) -> None:
        """`members` (a repeated etcd Member) from `views`."""
        peer_tls, client_tls = bool(self._config.peer_cert_file), bool(self._config.cert_file)
        for v in views:
            members.add(ID=v.id, name=f"node{v.id}" if v.started else "",
                        peerURLs=[url(v.address, peer_tls)],
                        clientURLs=[url(v.client_address, client_tls)] if v.started else [],
                        isLearner=not v.voter)

    async def member_list(self, request: bytes, context: Any) -> bytes:
        try:
            check_message_size(len(request), self._config)
            decode(rpc_pb2.MemberListRequest, request)
            resp = rpc_pb2.MemberListResponse()
            self.fill(resp.members, self.views())
            self.stamp(resp.header)
            return bytes(resp.SerializeToString())
        except Exception as exc:
            await self.fail(context, exc)

    # -- changes --------------------------------------------------------------------------

    def _changer(self, method: str, request_cls: Any, response_cls: Any,
                 change: Callable[[Any, Any, float], Awaitable[None]]
                 ) -> Callable[[bytes, Any], Awaitable[bytes]]:
        path = f"/{SERVICE}/{method}"

        async def handle(request: bytes, context: Any) -> bytes:
            try:
                check_message_size(len(request), self._config)
                req = decode(request_cls, request)
                await self.gate.admin(context)  # etcd: member changes are root's
                loop = asyncio.get_running_loop()
                deadline = loop.time() + (timeout_of(context) or DEFAULT_TIMEOUT_S)
                while True:
                    resp = response_cls()
                    try:
                        await self._on_leader(change, req, resp, deadline)
                    except NotLeader as e:
                        answer = await self._forward(e, path, request, response_cls, context,
                                                     deadline)
                        if answer is not None:
                            return answer
                        await asyncio.sleep(RETRY_S)  # the leader changes: ask the new one
                        continue
                    self.fill(resp.members, self.views())
                    self.stamp(resp.header)
                    if forwarded(context):  # the asking follower waits for its own apply
                        index = self._engine.status().commit_index
                        context.set_trailing_metadata(((APPLIED_INDEX, str(index)),))
                    return bytes(resp.SerializeToString())
            except Exception as exc:
                await self.fail(context, exc)

        handle.__name__ = method
        return handle

    async def _on_leader(self, change: Callable[[Any, Any, float], Awaitable[None]],
                         req: Any, resp: Any, deadline: float) -> None:
        """Run `change` (checks, then the engine's change) on the leader; retried while
        the leader cannot start a change yet (one change at a time, its term not
        committed), until the deadline."""
        loop = asyncio.get_running_loop()
        while True:
            engine = self._engine
            if not engine.is_leader:
                raise NotLeader(leader_id=engine.leader_id,
                                leader_address=engine.leader_address())
            try:
                await change(req, resp, max(0.001, deadline - loop.time()))
                return
            except NotLeader:
                raise
            except Unavailable as e:
                if not self._engine.is_leader or not self._engine.running:
                    raise
                if loop.time() + RETRY_S >= deadline:
                    log.debug("membership change not started before the deadline: %s", e)
                    raise KvError("UNAVAILABLE", TIMED_OUT) from None
            await asyncio.sleep(RETRY_S)

    async def _forward(self, e: NotLeader, path: str, request: bytes, response_cls: Any,
                       context: Any, deadline: float) -> bytes | None:
        """The leader's answer to the request; None to ask again, while the leader changes
        (none known yet, or the one asked handed leadership over: a leader asked to remove
        itself does, and the change is then the new leader's to make)."""
        engine = self._engine
        if forwarded(context):  # never sent on twice: the asking member tries again
            raise e
        address = e.leader_address or engine.leader_address()
        time_left = deadline - asyncio.get_running_loop().time() > RETRY_S
        if not e.leader_id or not address:
            if time_left and engine.running:
                return None
            raise e
        try:
            answer, index = await self._forwarder.call(
                address, path, request, timeout_of(context),
                identity=await self.gate.forward_identity(context))
        except KvError as ke:
            if ke.message == LEADER_CHANGED and time_left:
                return None
            raise
        if index:
            # A member removed by this change stops serving: the answer still stands.
            with contextlib.suppress(DengineError):
                await engine.wait_applied(index, timeout=timeout_of(context))
        resp = response_cls.FromString(answer)
        self.stamp(resp.header)
        return bytes(resp.SerializeToString())

    async def _add(self, req: rpc_pb2.MemberAddRequest, resp: Any, timeout: float) -> None:
        address = peer_address(list(req.peerURLs))
        check_add(self.views(), address, req.isLearner)
        node_id = self._engine.new_member_id()
        await self._engine.add_learner(node_id, address,
                                       promote_when_caught_up=not req.isLearner,
                                       timeout=timeout)
        resp.member.ID = node_id
        resp.member.peerURLs.extend(req.peerURLs)
        resp.member.isLearner = req.isLearner
        log.info("etcd MemberAdd: node %d (%s) added as a %s", node_id, address,
                 "learner" if req.isLearner else "learner, promoted to voter once caught up")

    async def _remove(self, req: rpc_pb2.MemberRemoveRequest, resp: Any,
                      timeout: float) -> None:
        check_remove(self.views(), req.ID, self._config.node_id)
        await self._engine.remove_member(req.ID, timeout=timeout)

    async def _update(self, req: rpc_pb2.MemberUpdateRequest, resp: Any,
                      timeout: float) -> None:
        views = self.views()
        if not any(m.id == req.ID for m in views):  # before the URLs, as etcd (which
            raise etcd_error(MEMBER_NOT_FOUND)      # does not check an update's URLs)
        address = peer_address(list(req.peerURLs))
        check_update(views, req.ID, address)
        await self._engine.update_member(req.ID, address, timeout=timeout)

    async def _promote(self, req: rpc_pb2.MemberPromoteRequest, resp: Any,
                       timeout: float) -> None:
        views = self.views()
        target = next((m for m in self._engine.members() if m.id == req.ID), None)
        last = self._engine.status().last_log_index
        caught_up = (target is not None and target.match_index > 0
                     and last - target.match_index <= self._config.promote_lag)
        check_promote(views, req.ID, caught_up)
        await self._engine.promote(req.ID, timeout=timeout)

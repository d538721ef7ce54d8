"""The gRPC client service: parses requests, calls the Engine, answers with error fields.

Requests arrive as raw bytes (no gRPC-side deserializer) so that a malformed message is
answered with INVALID_REQUEST and a clear message instead of a gRPC INTERNAL status.
Keys, values, commands and node ids are validated by the Engine (`dengine.kv`), the same
checks and messages as for embedded calls; a write's commands go to it as the bytes the
client sent (`kv.codec.split_write_request`), never decoded and encoded again.
Application errors are response fields (with the leader hint); the servicer never lets an
exception escape, so one bad request cannot disturb the others.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage

from dengine.api import Leader, MemberSet
from dengine.config import NodeConfig
from dengine.errors import (
    Compacted,
    DengineError,
    InvalidRequest,
    KvError,
    NotLeader,
    Overloaded,
    Unavailable,
)
from dengine.kv import Limits, consistency_from_wire, etcd_check
from dengine.kv import auth as kvauth
from dengine.kv import watch as kvwatch
from dengine.kv.codec import (
    split_write_request,
)
from dengine.proto.client_pb2 import (
    AddMemberRequest,
    AuthenticateResponse,
    Error,
    EventsRequest,
    EventsResponse,
    GetLeaderRequest,
    GetLeaderResponse,
    KvReadRequest,
    KvReadResponse,
    KvResult,
    LeaseKeepAliveBatchRequest,
    LeaseKeepAliveBatchResponse,
    LeaseRequest,
    LeaseResponse,
    MemberChangeResponse,
    MemberListRequest,
    MemberListResponse,
    MemberStatus,
    PromoteMemberRequest,
    ReadRequest,
    ReadResponse,
    ReadResult,
    RemoveMemberRequest,
    StatusRequest,
    StatusResponse,
    WatchPollRequest,
    WatchPollResponse,
    WriteRequest,
    WriteResponse,
    WriteResult,
)
from dengine.proto.common_pb2 import Member
from dengine.proto.etcd import rpc_pb2
from dengine.proto.etcd.rpc_pb2 import RangeRequest, TxnRequest
from dengine.server.etcd.gate import Check, Gate
from dengine.server.native_auth import CHECKS, WithToken, check_request

log = logging.getLogger(__name__)

SERVICE_NAME = "dengine.RaftClientService"

# Leave the engine this much of the gRPC deadline to send its own TIMEOUT error back.
_DEADLINE_MARGIN = 0.05
# The longest an Events long-poll waits for a change (a client asking more gets this).
MAX_EVENTS_WAIT_S = 30.0
# A watch poll answers this long before its deadline, and checks its node's leader this
# often while it waits.
_POLL_MARGIN = 0.5
_POLL_SLICE_S = 0.5
# Bytes a ReadResult adds to its value in a ReadResponse (tags, lengths, found flag).
_READ_RESULT_OVERHEAD = 16

Req = TypeVar("Req", bound=ProtoMessage)
Resp = TypeVar("Resp", bound=ProtoMessage)


class EngineLike(Protocol):
    """The part of `dengine.node.engine.Engine` the service uses."""

    async def write_encoded(self, commands: Sequence[bytes], *, timeout: float | None = ...,
                            forwarded: bool = ..., auth_info: bytes = ...) -> list[Any]: ...
    async def get_many(self, keys: Sequence[bytes], consistency: str = ..., *,
                       timeout: float | None = ...) -> list[bytes | None]: ...
    async def read_query(self, fn: Callable[[Any], Any], consistency: str = ..., *,
                         timeout: float | None = ...) -> Any: ...
    def header_ids(self) -> tuple[int, int, int]: ...
    @property
    def watches(self) -> Any: ...
    @property
    def leader_id(self) -> int: ...
    def status(self) -> Any: ...
    def members(self) -> Sequence[Any]: ...
    async def add_learner(self, node_id: int, address: str, *,
                          promote_when_caught_up: bool = ..., timeout: float | None = ...
                          ) -> None: ...
    async def promote(self, node_id: int, *, timeout: float | None = ...) -> None: ...
    async def remove_member(self, node_id: int, *, timeout: float | None = ...) -> None: ...
    async def wait_leader_change(self, known: Leader | None, timeout: float) -> Leader: ...
    async def wait_membership_change(self, known: MemberSet | None, timeout: float
                                     ) -> MemberSet: ...
    async def etcd_lease_grant(self, req: Any, *, timeout: float | None = ...) -> Any: ...
    async def etcd_lease_revoke(self, req: Any, *, timeout: float | None = ...) -> Any: ...
    async def etcd_lease_time_to_live(self, req: Any, *, timeout: float | None = ...
                                      ) -> Any: ...
    async def etcd_lease_leases(self, req: Any = ..., *, timeout: float | None = ...
                                ) -> Any: ...
    async def lease_keepalive_ttls(self, lease_ids: Sequence[int], *,
                                   timeout: float | None = ...) -> list[int]: ...
    def query_local(self, fn: Callable[[Any], Any]) -> Any: ...


def error_message(exc: DengineError) -> Error:
    """The wire form of a dengine error (with the leader hint of NOT_LEADER)."""
    return Error(
        code=exc.code,
        message=exc.message,
        leader_id=getattr(exc, "leader_id", 0) or 0,
        leader_address=getattr(exc, "leader_address", "") or "",
        grpc_code=exc.grpc_code if isinstance(exc, KvError) else "",
    )


class ClientService:
    """Handlers of `dengine.RaftClientService` over an Engine."""

    def __init__(
        self, engine: EngineLike, config: NodeConfig,
        peer_client_address: Callable[[int], str] | None = None, *,
        gate: Gate | None = None,
        login: Callable[[bytes, Any], Awaitable[bytes]] | None = None,
    ) -> None:
        self._engine = engine
        # etcd's auth: who a request acts for (its connection's token) and whether it may
        # (one Gate per node, the etcd services'), and etcd's Authenticate
        self._gate = gate if gate is not None else Gate(engine)  # type: ignore[arg-type]
        self._login = login
        self._config = config
        self._limits = Limits.of(config)
        # Maps another node's id to its client address (the engine learns it from Hellos).
        self._peer_client_address = peer_client_address
        # The native listener's bound HOST:PORT, announced by Status ("" = none).
        self.native_address = ""
        # Write requests being served (admitted, not yet answered) and their bytes: beyond
        # max_pending_writes / max_pending_write_bytes a write is refused with OVERLOADED
        # before it reaches the node (memory and the leader's loop stay bounded).
        self.pending_writes = 0
        self.pending_write_bytes = 0
        self.overloaded = 0  # writes refused so far

    def _leader_address(self, leader_id: int) -> str:
        if leader_id == self._config.node_id:
            return self._config.client_address
        if leader_id and self._peer_client_address is not None:
            return self._peer_client_address(leader_id) or ""
        return ""

    def handlers(self) -> dict[str, Callable[[bytes, Any], Awaitable[ProtoMessage]]]:
        """Method name -> handler(request bytes, context with `time_remaining()` and
        `invocation_metadata()`); shared by the gRPC service and the native listener so
        that both behave the same."""
        table = self._handlers()
        for name, (response, rule) in CHECKS.items():
            table[name] = self._checked(table[name], response, rule, name)
        return table

    def _checked(self, handler: Callable[[bytes, Any], Awaitable[ProtoMessage]],
                 response: Any, rule: Callable[[bytes], Check | None], name: str,
                 ) -> Callable[[bytes, Any], Awaitable[ProtoMessage]]:
        """`handler` once its request passed etcd's permission checks (nothing is checked
        while auth is off; the request is decoded for them only while it is on). A watch
        without a user is refused as etcd refuses it: "permission denied"."""
        async def checked(request: bytes, context: Any) -> ProtoMessage:
            stamp = b""
            try:
                stamp = await check_request(self._gate, name, rule(request), request, context)
            except DecodeError:
                pass  # malformed: the handler says so
            except Exception as exc:
                if name == "WatchPoll" and isinstance(exc, KvError) and (
                        exc.message == kvauth.USER_EMPTY[1]):
                    exc = kvauth.error(kvauth.PERMISSION_DENIED)
                return response(error=self._error(exc, "auth"))
            if stamp:  # a Write while auth is on: its commands proposed stamped
                return await self._write(request, context, forwarded=name != "Write",
                                         auth_info=stamp)
            return await handler(request, context)
        return checked

    def _handlers(self) -> dict[str, Callable[[bytes, Any], Awaitable[ProtoMessage]]]:
        return {
            "Write": self.write,
            "ForwardWrite": self.forward_write,
            "Read": self.read,
            "Status": self.status,
            "GetLeader": self.get_leader,
            "MemberList": self.member_list,
            "AddMember": self.add_member,
            "PromoteMember": self.promote_member,
            "RemoveMember": self.remove_member,
            "KvRead": self.kv_read,
            "Events": self.events,
            "Lease": self.lease,
            "LeaseKeepAlive": self.lease_keepalive,
            "WatchPoll": self.watch_poll,
            "Authenticate": self.authenticate,
            "UseToken": self.use_token,
        }

    def generic_handler(self) -> grpc.GenericRpcHandler:
        """One handler per method; request bytes are parsed by the handler itself."""
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            name: grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=None, response_serializer=_serialize
            )
            for name, fn in self.handlers().items()
        })

    async def authenticate(self, request: bytes, context: Any) -> AuthenticateResponse:
        """etcd's Authenticate (the etcd service's own code: the same checks, errors and
        token); on a native connection the token becomes the connection's."""
        try:
            if self._login is None:
                raise InvalidRequest("this node does not serve etcd's Authenticate")
            answer = await self._login(request, context)
        except Exception as exc:
            return AuthenticateResponse(error=self._error(exc, "Authenticate"))
        bind = getattr(context, "bind_token", None)
        if bind is not None:
            bind(rpc_pb2.AuthenticateResponse.FromString(answer).token)
        return AuthenticateResponse(response=answer)

    async def use_token(self, request: bytes, context: Any) -> AuthenticateResponse:
        """Act as the user of a token Authenticate issued (etcd's AuthenticateResponse
        carries it): checked, then on a native connection it becomes the connection's
        (etcd's lock and election services call this node for their callers so)."""
        try:
            token = self._parse(request, rpc_pb2.AuthenticateResponse).token
            await self._gate.check(WithToken(token, context))
        except Exception as exc:
            return AuthenticateResponse(error=self._error(exc, "UseToken"))
        bind = getattr(context, "bind_token", None)
        if bind is not None:
            bind(token)
        return AuthenticateResponse(response=request)

    async def write(self, request: bytes, context: Any) -> WriteResponse:
        return await self._write(request, context, forwarded=False)

    async def forward_write(self, request: bytes, context: Any) -> WriteResponse:
        """A Write that followers sent on for their etcd clients (`server/etcd/forward.py`):
        each follower waits for its own apply, so the commit that covers it is sent to
        the followers at once (`Node.propose(forwarded=True)`)."""
        return await self._write(request, context, forwarded=True)

    async def _write(self, request: bytes, context: Any, *, forwarded: bool,
                     auth_info: bytes = b"") -> WriteResponse:
        size = len(request)
        try:
            self._admit_write(size)
        except Overloaded as exc:
            return WriteResponse(error=error_message(exc))
        self.pending_writes += 1
        self.pending_write_bytes += size
        try:
            self._check_size(request)
            commands = split_write_request(request)
            if commands is None:  # unknown fields, or malformed: protobuf tells which
                req = self._parse(request, WriteRequest)
                commands = [cmd.SerializeToString() for cmd in req.commands]
            write = functools.partial(self._engine.write_encoded, commands,
                                      timeout=_timeout(context))
            results = await (write(forwarded=forwarded, auth_info=auth_info) if auth_info
                             else write(forwarded=True) if forwarded else write())
        except Exception as exc:  # the service keeps serving whatever happens
            return WriteResponse(error=self._error(exc, "Write"))
        finally:
            self.pending_writes -= 1
            self.pending_write_bytes -= size
        ids = self._engine.header_ids()
        cluster_id, member_id, raft_term = ids
        resp = WriteResponse(cluster_id=cluster_id, member_id=member_id,
                             raft_term=raft_term)
        add = resp.results.add  # built in place: no copy of each result into the list
        for r in results:
            if r.response is None:  # a plain insert or delete: its revision
                add(index=r.index, succeeded=r.succeeded, value=r.value or b"",
                    revision=r.revision)
            else:
                _etcd_result(add(index=r.index, succeeded=r.succeeded, revision=r.revision),
                             r.response, ids)
        return resp

    async def kv_read(self, request: bytes, context: Any) -> KvReadResponse:
        """etcd Range requests and read-only txns, all read at one point of the log; each
        answered with its response or etcd's error."""
        try:
            req = self._parse(request, KvReadRequest)
            consistency = consistency_from_wire(req.consistency)
            count = len(req.ranges) + len(req.txns)
            if count > self._config.max_read_keys:
                raise InvalidRequest(
                    f"read of {count} ranges and txns exceeds max_read_keys "
                    f"({self._config.max_read_keys}); read fewer at a time"
                )
            ranges: list[Any] = [self._range_request(r) for r in req.ranges]
            ranges += [self._read_txn_request(t) for t in req.txns]
            answers = await self._engine.read_query(
                functools.partial(_ranges, ranges, self._config.max_response_bytes),
                consistency, timeout=_timeout(context)
            ) if ranges else []
            results = []
            size = 0
            ids = self._engine.header_ids()
            for answer in answers:
                if isinstance(answer, KvError):
                    results.append(KvResult(error=error_message(answer)))
                    continue
                header = answer.header
                header.cluster_id, header.member_id, header.raft_term = ids
                data = answer.SerializeToString()
                size += len(data)
                results.append(KvResult(response=data))
            if size > self._config.max_response_bytes:
                raise InvalidRequest(
                    f"response of {size} bytes for {len(ranges)} ranges exceeds "
                    f"max_response_bytes ({self._config.max_response_bytes} bytes); read "
                    "fewer keys at a time (limit)"
                )
        except Exception as exc:
            return KvReadResponse(error=self._error(exc, "KvRead"))
        return KvReadResponse(results=results)

    async def watch_poll(self, request: bytes, context: Any) -> WatchPollResponse:
        """The changes of a range above a revision, waiting up to `wait_ms` for one
        (docs/etcd-model.md, "Watch"); served from this node's applied state."""
        engine = self._engine
        resp = WatchPollResponse(member_id=self._config.node_id)
        try:
            req = self._parse(request, WatchPollRequest)
            rng = kvwatch.watch_range(req.key, req.range_end)
            if rng.empty:
                raise InvalidRequest("watch range is empty (range_end must be above key)")
            spec = kvwatch.WatchSpec(rng, 0, req.prev_kv, req.noput, req.nodelete, False)
            hub = engine.watches
            require_leader = req.require_leader
            if require_leader and not engine.leader_id:
                raise Unavailable(f"node {self._config.node_id} knows no leader")
            after = req.after_revision if req.after_revision >= 0 else hub.revision()
            remaining = _timeout(context)
            wait = req.wait_ms / 1000.0
            if remaining is not None:
                wait = min(wait, max(0.0, remaining - _POLL_MARGIN))
            max_events = req.max_events or kvwatch.MAX_EVENTS
            loop = asyncio.get_running_loop()
            until = loop.time() + wait
            while True:  # in slices: a node that loses its leader says so
                batch = await hub.poll(after, spec, min(_POLL_SLICE_S, until - loop.time()),
                                       max_events=max_events)
                after = batch.revision
                if batch.changes or loop.time() >= until:
                    break
                if require_leader and not engine.leader_id:
                    raise Unavailable(f"node {self._config.node_id} lost its leader")
            resp.revision = batch.revision
            kvwatch.add_events(resp.events, batch.changes, req.prev_kv)
            resp.header_revision = hub.revision()
        except Compacted as e:
            resp.error.CopyFrom(error_message(e))
            resp.compact_revision = e.compact_revision
        except Exception as e:
            resp.error.CopyFrom(self._error(e, "WatchPoll"))
        return resp

    async def lease(self, request: bytes, context: Any) -> LeaseResponse:
        """One of etcd's lease calls (LeaseRequest), answered with etcd's response."""
        engine = self._engine
        try:
            req = self._parse(request, LeaseRequest)
            which = req.WhichOneof("request")
            timeout = _timeout(context)
            if which == "grant":
                resp = await engine.etcd_lease_grant(
                    self._parse(req.grant, rpc_pb2.LeaseGrantRequest), timeout=timeout)
            elif which == "revoke":
                resp = await engine.etcd_lease_revoke(
                    self._parse(req.revoke, rpc_pb2.LeaseRevokeRequest), timeout=timeout)
            elif which == "time_to_live":
                resp = await engine.etcd_lease_time_to_live(
                    self._parse(req.time_to_live, rpc_pb2.LeaseTimeToLiveRequest),
                    timeout=timeout)
            elif which == "leases":
                resp = await engine.etcd_lease_leases(
                    self._parse(req.leases, rpc_pb2.LeaseLeasesRequest), timeout=timeout)
            else:
                raise InvalidRequest("LeaseRequest: no request set")
        except Exception as exc:
            return LeaseResponse(error=self._error(exc, "Lease"))
        return LeaseResponse(response=resp.SerializeToString())

    async def lease_keepalive(self, request: bytes, context: Any
                              ) -> LeaseKeepAliveBatchResponse:
        """Keep-alives of many leases at the leader: one TTL each (0: unknown)."""
        try:
            req = self._parse(request, LeaseKeepAliveBatchRequest)
            ttls = await self._engine.lease_keepalive_ttls(req.ids, timeout=_timeout(context))
        except Exception as exc:
            return LeaseKeepAliveBatchResponse(error=self._error(exc, "LeaseKeepAlive"))
        return LeaseKeepAliveBatchResponse(ttls=ttls)

    async def read(self, request: bytes, context: Any) -> ReadResponse:
        try:
            req = self._parse(request, ReadRequest)
            consistency = consistency_from_wire(req.consistency)
            if len(req.keys) > self._config.max_read_keys:
                raise InvalidRequest(
                    f"read of {len(req.keys)} keys exceeds max_read_keys "
                    f"({self._config.max_read_keys}); read fewer keys at a time"
                )
            values: list[bytes | None] = []
            if req.keys:
                values = await self._engine.get_many(
                    list(req.keys), consistency, timeout=_timeout(context)
                )
                self._check_response_size(values)
        except Exception as exc:
            return ReadResponse(error=self._error(exc, "Read"))
        return ReadResponse(results=[
            ReadResult() if v is None else ReadResult(found=True, value=v) for v in values
        ])

    async def status(self, request: bytes, context: Any) -> StatusResponse:
        try:
            self._parse(request, StatusRequest)
            st = self._engine.status()
            leader_id = int(st.leader_id or 0)
            return StatusResponse(
                node_id=st.node_id,
                cluster_id=st.cluster_id,
                role=role_name(st.role),
                term=st.term,
                leader_id=leader_id,
                leader_address=self._leader_address(leader_id),
                commit_index=st.commit_index,
                applied_index=st.applied_index,
                first_log_index=st.first_log_index,
                last_log_index=st.last_log_index,
                voters=_members(st.voters),
                learners=_members(st.learners),
                client_address=self._config.client_address,
                snapshot_index=st.snapshot_index,
                native_address=self.native_address,
            )
        except Exception as exc:
            return StatusResponse(error=self._error(exc, "Status"))

    async def get_leader(self, request: bytes, context: Any) -> GetLeaderResponse:
        try:
            self._parse(request, GetLeaderRequest)
            st = self._engine.status()
            leader_id = int(st.leader_id or 0)
            return GetLeaderResponse(
                leader_id=leader_id,
                leader_address=self._leader_address(leader_id),
                term=st.term,
            )
        except Exception as exc:
            return GetLeaderResponse(error=self._error(exc, "GetLeader"))

    async def member_list(self, request: bytes, context: Any) -> MemberListResponse:
        try:
            req = self._parse(request, MemberListRequest)
            st = self._engine.status()
            leader_id = int(st.leader_id or 0)
            if req.leader_only and leader_id != self._config.node_id:
                raise NotLeader(leader_id=leader_id,
                                leader_address=self._leader_address(leader_id))
            return MemberListResponse(members=self._member_statuses(), leader_id=leader_id,
                                      term=st.term)
        except Exception as exc:
            return MemberListResponse(error=self._error(exc, "MemberList"))

    async def add_member(self, request: bytes, context: Any) -> MemberChangeResponse:
        try:
            req = self._parse(request, AddMemberRequest)
            await self._engine.add_learner(
                req.node_id, req.address, promote_when_caught_up=req.promote_when_caught_up,
                timeout=_timeout(context),
            )
            return MemberChangeResponse(members=self._member_statuses())
        except Exception as exc:
            return MemberChangeResponse(error=self._error(exc, "AddMember"))

    async def promote_member(self, request: bytes, context: Any) -> MemberChangeResponse:
        try:
            req = self._parse(request, PromoteMemberRequest)
            await self._engine.promote(req.node_id, timeout=_timeout(context))
            return MemberChangeResponse(members=self._member_statuses())
        except Exception as exc:
            return MemberChangeResponse(error=self._error(exc, "PromoteMember"))

    async def remove_member(self, request: bytes, context: Any) -> MemberChangeResponse:
        try:
            req = self._parse(request, RemoveMemberRequest)
            await self._engine.remove_member(req.node_id, timeout=_timeout(context))
            return MemberChangeResponse(members=self._member_statuses())
        except Exception as exc:
            return MemberChangeResponse(error=self._error(exc, "RemoveMember"))

    async def events(self, request: bytes, context: Any) -> EventsResponse:
        """The leader or the configuration this node knows, once it differs from the one
        the client knows (a long-poll: at most `wait_ms`, MAX_EVENTS_WAIT_S and the
        call's deadline)."""
        try:
            req = self._parse(request, EventsRequest)
            wait = min(req.wait_ms / 1000, MAX_EVENTS_WAIT_S)
            remaining = context.time_remaining()
            if remaining is not None:
                wait = min(wait, max(0.0, remaining - 2 * _DEADLINE_MARGIN))
            if req.kind == EventsRequest.LEADER:
                known = Leader(req.leader_id, "", req.term) if req.known else None
                leader = await self._engine.wait_leader_change(known, wait)
                return EventsResponse(leader_id=leader.id, term=leader.term,
                                      leader_address=leader.address
                                      or self._leader_address(leader.id))
            if req.kind == EventsRequest.MEMBERS:
                members = MemberSet({m.id: m.address for m in req.voters},
                                    {m.id: m.address for m in req.learners})
                current = await self._engine.wait_membership_change(
                    members if req.known else None, wait)
                return EventsResponse(voters=_members(current.voters),
                                      learners=_members(current.learners))
            raise InvalidRequest(f"unknown kind of events: {req.kind}")
        except Exception as exc:
            return EventsResponse(error=self._error(exc, "Events"))

    def _admit_write(self, size: int) -> None:
        """Overloaded when one more write of `size` bytes would pass the pending limits
        (a lone write is always admitted: max_request_size bounds it)."""
        cfg = self._config
        if self.pending_writes and (
            self.pending_writes >= cfg.max_pending_writes
            or self.pending_write_bytes + size > cfg.max_pending_write_bytes
        ):
            self.overloaded += 1
            raise Overloaded(
                f"node {cfg.node_id} is overloaded: {self.pending_writes} writes "
                f"({self.pending_write_bytes} bytes) pending (max_pending_writes "
                f"{cfg.max_pending_writes}, max_pending_write_bytes "
                f"{cfg.max_pending_write_bytes}); not applied, retry later"
            )

    def _range_request(self, data: bytes) -> RangeRequest:
        """An encoded RangeRequest, decoded and checked as etcd does (KvError)."""
        etcd_check.check_request_size(len(data), self._limits.max_request_bytes)
        try:
            request = RangeRequest.FromString(data)
        except DecodeError as e:
            raise etcd_check.invalid(f"dengine: malformed RangeRequest: {e}") from None
        etcd_check.check_range(request)
        return request

    def _read_txn_request(self, data: bytes) -> TxnRequest:
        """An encoded read-only TxnRequest, decoded and checked as etcd does (KvError)."""
        etcd_check.check_request_size(len(data), self._limits.max_request_bytes)
        try:
            request = TxnRequest.FromString(data)
        except DecodeError as e:
            raise etcd_check.invalid(f"dengine: malformed TxnRequest: {e}") from None
        etcd_check.check_txn(request, self._limits.max_txn_ops)
        if not etcd_check.is_txn_readonly(request):
            raise etcd_check.invalid("dengine: a txn that writes is not a read (send it "
                                     "as a Write)")
        return request

    def _check_response_size(self, values: Sequence[bytes | None]) -> None:
        """InvalidRequest when the answer would pass max_response_bytes (the values are
        the state machine's own objects: nothing was copied yet)."""
        limit = self._config.max_response_bytes
        size = _READ_RESULT_OVERHEAD * len(values)
        for v in values:
            if v is not None:
                size += len(v)
        if size > limit:
            raise InvalidRequest(
                f"response of {size} bytes for {len(values)} keys exceeds "
                f"max_response_bytes ({limit} bytes); read fewer keys at a time"
            )

    def _member_statuses(self) -> list[MemberStatus]:
        out = []
        for m in self._engine.members():
            client_address = m.client_address or (
                self._config.client_address if m.id == self._config.node_id else ""
            )
            out.append(MemberStatus(
                id=m.id, address=m.address, client_address=client_address, role=m.role,
                match_index=m.match_index, is_leader=m.is_leader,
            ))
        return out

    def _check_size(self, data: bytes) -> None:
        if len(data) > self._config.max_request_size:
            raise InvalidRequest(
                f"request of {len(data)} bytes exceeds max_request_size "
                f"({self._config.max_request_size} bytes)"
            )

    def _parse(self, data: bytes, cls: type[Req]) -> Req:
        self._check_size(data)
        try:
            return cls.FromString(data)
        except DecodeError as e:
            raise InvalidRequest(f"malformed {cls.__name__}: {e}") from None

    @staticmethod
    def _error(exc: Exception, method: str) -> Error:
        if isinstance(exc, DengineError):
            return error_message(exc)
        log.exception("%s failed with an unexpected error", method)
        return Error(code=DengineError.code, message=f"internal error: {exc!r}")


def role_name(role: Any) -> str:
    """A role as a lowercase word whether the engine reports an enum or a string."""
    name = getattr(role, "name", None) or str(getattr(role, "value", role))
    return str(name).rsplit(".", 1)[-1].lower()


def _members(members: Any) -> list[Member]:
    """Voters/learners from a {id: address} mapping or an iterable of ids or Members."""
    if isinstance(members, dict):
        return [Member(id=int(i), address=str(a or "")) for i, a in sorted(members.items())]
    return [m if isinstance(m, Member) else Member(id=m) if isinstance(m, int)
            else Member(id=int(m.id), address=str(getattr(m, "address", "") or ""))
            for m in members or ()]


def _etcd_result(out: WriteResult, response: Any, ids: tuple[int, int, int]) -> None:
    """The wire form of an applied etcd request's result in `out`: the etcd response
    (header filled in with `ids`: cluster id, member id, raft term) or etcd's error."""
    if isinstance(response, KvError):
        out.error.CopyFrom(error_message(response))
    else:
        header = response.header
        header.cluster_id, header.member_id, header.raft_term = ids
        out.response = response.SerializeToString()


def _ranges(requests: Sequence[RangeRequest | TxnRequest], max_bytes: int, store: Any
            ) -> list[Any]:
    """Each range's RangeResponse (a read-only txn's TxnResponse), or its etcd error, on
    one state of the store; each answer built only while it stays within `max_bytes`."""
    out: list[Any] = []
    for request in requests:
        try:
            if isinstance(request, TxnRequest):
                out.append(store.read_txn(request, max_bytes))
            else:
                out.append(store.range(request, max_bytes))
        except KvError as e:
            out.append(e)
    return out


def _timeout(context: Any) -> float | None:
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return max(0.001, remaining - _DEADLINE_MARGIN)


def _serialize(message: ProtoMessage) -> bytes:
    return message.SerializeToString()

"""The asyncio client of a dengine cluster: the user-facing API.

`Client` offers `dengine.api.ClientApi` (the embedded `Engine`'s calls) plus the cluster's
status and membership. Requests go through two parts of their own:

* `dengine.client.batcher`: concurrent calls from one client are batched. All puts,
  deletes and writes submitted while fewer than `max_inflight` Write requests are in
  flight go out as one Write (bounded by `max_batch_commands` and `max_batch_bytes`);
  reads of one consistency level likewise.
* `dengine.client.routing`: which node a request goes to and over which transport (native
  frames or gRPC), leader discovery, redirects, retries, and what a failure means for a
  write (`Timeout` means unknown, the rest means not applied).
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message as ProtoMessage

from dengine.api import (
    DeleteResult,
    Key,
    KeyValue,
    Leader,
    MemberInfo,
    MemberSet,
    NodeStatus,
    PutResult,
    RangeResult,
    SortOrder,
    SortTarget,
    TxnResult,
    WatchFilter,
    WatchStream,
    WriteResult,
)
from dengine.client.batcher import Batcher, Item, each_alone
from dengine.client.commands import delete, insert
from dengine.client.leases import ClientLeases
from dengine.client.routing import (
    Backoff,
    Router,
    Unsent,
    error_from_wire,
    member_from_wire,
    parse_endpoints,
)
from dengine.client.watch import RemoteWatch
from dengine.config import parse_address
from dengine.errors import (
    DengineError,
    InvalidRequest,
    KvError,
    Timeout,
    Unavailable,
)
from dengine.kv import (
    EVENTUAL,
    LINEARIZABLE,
    WIRE_LEVELS,
    as_bytes,
    check_node_id,
    consistency_to_wire,
    etcd_check,
)
from dengine.kv import ops as kvops
from dengine.kv import watch as kvwatch
from dengine.kv.ops import Compare, Op
from dengine.proto.client_pb2 import (
    AddMemberRequest,
    EventsRequest,
    EventsResponse,
    GetLeaderRequest,
    GetLeaderResponse,
    KvReadRequest,
    KvReadResponse,
    KvResult,
    MemberChangeResponse,
    MemberListRequest,
    MemberListResponse,
    PromoteMemberRequest,
    ReadRequest,
    ReadResponse,
    RemoveMemberRequest,
    StatusRequest,
    StatusResponse,
    WriteRequest,
    WriteResponse,
)
from dengine.proto.client_pb2 import WriteResult as WireResult
from dengine.proto.common_pb2 import Member, WriteCommand
from dengine.proto.etcd import rpc_pb2
from dengine.recipes import RecipeCalls
from dengine.tls import ClientTls, client_tls

_DEADLINE_GRACE_S = 0.1
# How long one Events long-poll waits on the node for a change.
EVENTS_POLL_S = 10.0

T = TypeVar("T")
P = TypeVar("P")


class Client(ClientLeases, RecipeCalls):
    """Async client of a dengine cluster. Create it, use it, `await close()` (or `async with`).

    `endpoints`: client (gRPC) addresses "host:port" of some or all nodes (a list or a
    comma-separated string). `timeout`: default deadline of each call in seconds, retries
    included. `transport`: "auto" (native where the node offers it, else gRPC), "native"
    or "grpc" (see `dengine.client.routing`). TLS (etcdctl's flags): `cacert`, the CA
    file that signed the nodes' certificates (without it, the system's trusted CAs),
    `cert` and `key`, a client certificate for nodes that require one; any of them, or
    `tls=True`, turns TLS on (`tls` also takes a `dengine.tls.ClientTls`). The host names
    of `endpoints` are checked against the nodes' certificates. `dial_timeout`: a call
    gives up once every endpoint it may use has refused connections (or named an unknown
    host) for this many seconds (0: after one try of each; None, the default: retried
    until the deadline, as across a restart). `user` and `password`: with etcd's auth
    enabled on the cluster, every connection authenticates as that user (etcd's simple
    token, renewed once when a node no longer knows it) and every request is checked
    against its roles' permissions (docs/auth.md); or `token`, one etcd's Authenticate
    issued: the client acts for its user (no renewal). `metadata`: gRPC metadata sent
    with every call (with `transport="grpc"`).
    """

    def __init__(
        self,
        endpoints: str | Iterable[str] = "127.0.0.1:9081",
        *,
        timeout: float = 5.0,
        max_batch_commands: int = 1024,
        max_batch_bytes: int = 1024 * 1024,
        max_inflight: int = 4,
        transport: str = "auto",
        tls: ClientTls | bool | None = None,
        cacert: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        dial_timeout: float | None = None,
        user: str | None = None,
        password: str = "",
        token: str | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self._router = Router(endpoints, transport, tls=client_tls(tls, cacert, cert, key),
                              dial_timeout=dial_timeout, user=user, password=password,
                              token=token, metadata=metadata)
        self._timeout = check_timeout(timeout)
        self._closed = False
        self._closed_event = asyncio.Event()  # ends the watches
        self._writes: Batcher[list[WriteCommand], list[WireResult]] = Batcher(
            self._send_writes, max_batch_commands, max_batch_bytes, max_inflight
        )
        self._reads: dict[int, Batcher[list[bytes], list[bytes | None]]] = {
            level: Batcher(
                functools.partial(self._send_reads, level=level),
                max_batch_commands, max_batch_bytes, max_inflight,
            )
            for level in WIRE_LEVELS.values()
        }
        self._ranges: dict[int, Batcher[list[bytes], list[KvResult]]] = {
            level: Batcher(
                functools.partial(self._send_ranges, level=level),
                max_batch_commands, max_batch_bytes, max_inflight,
            )
            for level in WIRE_LEVELS.values()
        }
        self._keepalives: Batcher[list[int], list[int]] = Batcher(
            self._send_keepalives, max_batch_commands, max_batch_bytes, max_inflight)
        # Read-only txns: KvRead's `txns`, served as reads (no log entry), as etcd does.
        self._read_txns: dict[int, Batcher[list[bytes], list[KvResult]]] = {
            level: Batcher(
                functools.partial(self._send_ranges, level=level, kind="txns"),
                max_batch_commands, max_batch_bytes, max_inflight,
            )
            for level in (WIRE_LEVELS[LINEARIZABLE], WIRE_LEVELS[EVENTUAL])
        }

    @property
    def endpoints(self) -> list[str]:
        return list(self._router.endpoints)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def grpc_channel(self, endpoint: str) -> grpc.aio.Channel:
        """This client's gRPC channel to `endpoint` (etcd's services beside dengine's, e.g.
        `dengine.client.backup`); closed with the client."""
        return self._router._channel(parse_endpoints([endpoint])[0])

    async def grpc_metadata(self, endpoint: str, timeout: float | None = None
                            ) -> tuple[tuple[str, str], ...] | None:
        """The metadata a call on `grpc_channel(endpoint)` needs to act as this client's
        user (etcd's `token`), None without one; etcd's auth errors raised."""
        deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
        try:
            return await self._router.grpc_metadata(parse_endpoints([endpoint])[0], deadline)
        except Unsent as e:
            raise e.error from None

    async def close(self) -> None:
        """Fail pending calls with Unavailable and close every connection."""
        if self._closed:
            return
        self._closed = True
        self._closed_event.set()
        await self._writes.close()
        for batcher in self._reads.values():
            await batcher.close()
        for ranges in (*self._ranges.values(), *self._read_txns.values()):
            await ranges.close()
        await self._keepalives.close()
        await self._router.close()

    # ---- key-value API ------------------------------------------------------------------

    async def put(
        self, key: Key, value: Key, *, prev_kv: bool = False, lease: int = 0,
        timeout: float | None = None,
    ) -> PutResult:
        """Set `key` to `value`; the revision it made (and the key before, with prev_kv)."""
        if prev_kv or lease:
            request = kvops.put_request(key, value, prev_kv=prev_kv, lease=lease)
            command = WriteCommand(put=request.SerializeToString())
        else:
            command = insert(key, value)
        result, ids = await self._kv_write_ids(command, timeout)
        if result.response:
            return kvops.put_result(rpc_pb2.PutResponse.FromString(result.response))
        # A plain insert's result holds no etcd response: the header of its Write.
        cluster_id, member_id, raft_term = ids
        return PutResult.with_header(result.revision, cluster_id, member_id, raft_term)

    async def delete(self, key: Key, *, timeout: float | None = None) -> None:
        await self.write([delete(key)], timeout=timeout)

    async def write(
        self, commands: Sequence[WriteCommand], *, timeout: float | None = None
    ) -> list[WriteResult]:
        """Apply `commands` (see `insert`, `delete`) in order; one result per command."""
        if not commands:
            raise InvalidRequest("a write needs at least one command")
        size = sum(c.ByteSize() for c in commands)
        results = await self._submit(self._writes, list(commands), size, timeout)
        return [WriteResult(r.index, r.succeeded, r.value) for r in results]

    async def get(
        self, key: Key, consistency: str = "linearizable", *, timeout: float | None = None
    ) -> bytes | None:
        return (await self.get_many([key], consistency, timeout=timeout))[0]

    async def get_many(
        self, keys: Sequence[Key], consistency: str = "linearizable", *,
        timeout: float | None = None,
    ) -> list[bytes | None]:
        """Values of `keys` in order (None = absent), all read at one consistency level."""
        level = consistency_to_wire(consistency)
        raw = [as_bytes(k) for k in keys]
        if not raw:
            return []
        return await self._submit(self._reads[level], raw, sum(len(k) for k in raw), timeout)

    # ---- etcd's data model (dengine.api.ClientApi) -------------------------------------

    async def get_kv(
        self, key: Key, *, revision: int = 0, consistency: str = "linearizable",
        timeout: float | None = None,
    ) -> KeyValue | None:
        """`key` with its revisions (at `revision`, 0: the current one), None if absent."""
        result = await self.range(key, revision=revision, consistency=consistency,
                                  timeout=timeout)
        return result.kvs[0] if result.kvs else None

    async def range(
        self, key: Key, range_end: Key | None = None, *, prefix: bool = False,
        from_key: bool = False, limit: int = 0, revision: int = 0,
        sort_target: SortTarget = "key", sort_order: SortOrder = None,
        keys_only: bool = False, count_only: bool = False,
        consistency: str = "linearizable", timeout: float | None = None,
    ) -> RangeResult:
        """The keys of [key, range_end) (`prefix`: starting with `key`; `from_key`: every
        key >= `key`; neither: `key` alone), as etcd's Range."""
        level = consistency_to_wire(consistency)
        request = kvops.range_request(
            key, range_end, prefix=prefix, from_key=from_key, limit=limit,
            revision=revision, sort_target_name=sort_target, sort_order_name=sort_order,
            keys_only=keys_only, count_only=count_only,
            serializable=consistency == EVENTUAL,
        ).SerializeToString()
        [result] = await self._submit(self._ranges[level], [request], len(request), timeout)
        if result.HasField("error"):
            raise error_from_wire(result.error)
        return kvops.range_result(rpc_pb2.RangeResponse.FromString(result.response))

    async def delete_range(
        self, key: Key, range_end: Key | None = None, *, prefix: bool = False,
        from_key: bool = False, prev_kv: bool = False, timeout: float | None = None,
    ) -> DeleteResult:
        """Delete the keys of a range (as `range` selects them)."""
        request = kvops.delete_request(key, range_end, prefix=prefix, from_key=from_key,
                                       prev_kv=prev_kv)
        result = await self._kv_write(
            WriteCommand(delete_range=request.SerializeToString()), timeout)
        return kvops.delete_result(rpc_pb2.DeleteRangeResponse.FromString(result.response))

    async def txn(
        self, compare: Sequence[Compare] = (), success: Sequence[Op] = (),
        failure: Sequence[Op] = (), *, timeout: float | None = None,
    ) -> TxnResult:
        """If every compare holds, run `success`, else `failure`: one revision, atomic."""
        request = kvops.txn_request(compare, success, failure)
        data = request.SerializeToString()
        if etcd_check.is_txn_readonly(request):
            # A read, as etcd serves it: linearizable unless every range is serializable.
            level = WIRE_LEVELS[EVENTUAL if etcd_check.is_txn_serializable(request)
                                else LINEARIZABLE]
            answers = await self._submit(self._read_txns[level], [data], len(data), timeout)
            if answers:  # else a server before KvRead's txns: through the log
                [answer] = answers
                if answer.HasField("error"):
                    raise error_from_wire(answer.error)
                return kvops.txn_result(rpc_pb2.TxnResponse.FromString(answer.response))
        result = await self._kv_write(WriteCommand(txn=data), timeout)
        return kvops.txn_result(rpc_pb2.TxnResponse.FromString(result.response))

    async def compare_and_swap(
        self, key: Key, expected: Key | None, new: Key, *, timeout: float | None = None
    ) -> bool:
        """Set `key` to `new` if it holds `expected` (None: if it is absent); whether it did."""
        request = kvops.cas_request(key, expected, new)
        result = await self._kv_write(WriteCommand(txn=request.SerializeToString()), timeout)
        return rpc_pb2.TxnResponse.FromString(result.response).succeeded

    async def compact(
        self, revision: int, *, physical: bool = False, timeout: float | None = None
    ) -> None:
        """Drop the history below `revision` (reads there then fail with Compacted)."""
        request = kvops.compaction_request(revision, physical=physical)
        await self._kv_write(WriteCommand(compaction=request.SerializeToString()), timeout)

    def watch(
        self, key: Key, range_end: Key | None = None, *, prefix: bool = False,
        start_revision: int = 0, prev_kv: bool = False, filters: Sequence[WatchFilter] = (),
        progress_notify: bool = False,
    ) -> WatchStream:
        """The changes of `key` (or of [key, range_end), or with `prefix` of every key
        starting with `key`) from `start_revision` (0: from now; in the past: the history
        replayed), in revision order, exactly once each:

            async for event in client.watch(b"/config/", prefix=True, start_revision=r):
                ...  # event.type (PUT/DELETE), event.kv, event.prev_kv, event.revision

        Served by any node; resumes by itself from the last delivered revision across
        connection loss, node failure and leader change (dengine/client/watch.py).
        Raises Compacted (with `compact_revision`) when the history it needs is gone;
        ends when the client closes. `filters`: "noput", "nodelete". `progress_notify`
        has no effect: `.revision` always tells the revision the watch is current to."""
        if self._closed:
            raise Unavailable("client closed")
        spec = kvwatch.spec(key, range_end, prefix=prefix, start_revision=start_revision,
                            prev_kv=prev_kv, filters=filters, progress_notify=progress_notify)
        return RemoteWatch(self._router, spec, closed=self._closed_event)

    async def _kv_write(self, command: WriteCommand, timeout: float | None) -> WireResult:
        return (await self._kv_write_ids(command, timeout))[0]

    async def _kv_write_ids(self, command: WriteCommand, timeout: float | None
                            ) -> tuple[WireResult, tuple[int, int, int]]:
        """The command's wire result, and the header ids (cluster id, member id, Raft
        term) of the member that answered (zeros from a server that does not send them)."""
        results = await self._submit(self._writes, [command], command.ByteSize(), timeout)
        [result] = results
        if result.HasField("error"):
            raise error_from_wire(result.error)
        return result, getattr(results, "header_ids", (0, 0, 0))

    # ---- cluster information ------------------------------------------------------------

    async def status(
        self, endpoint: str | None = None, *, timeout: float | None = None
    ) -> NodeStatus:
        """The status of `endpoint` (or of the first node that answers)."""
        deadline = self._deadline(timeout)
        targets = parse_endpoints([endpoint]) if endpoint else None
        resp, addr = await self._router.call_any("Status", StatusRequest(), StatusResponse,
                                                 deadline, targets)
        return NodeStatus(
            endpoint=addr,
            node_id=resp.node_id,
            cluster_id=resp.cluster_id,
            role=resp.role,
            term=resp.term,
            leader_id=resp.leader_id,
            leader_address=resp.leader_address,
            commit_index=resp.commit_index,
            applied_index=resp.applied_index,
            first_log_index=resp.first_log_index,
            last_log_index=resp.last_log_index,
            voters={m.id: m.address for m in resp.voters},
            learners={m.id: m.address for m in resp.learners},
            snapshot_index=resp.snapshot_index,
            native_address=resp.native_address,
        )

    async def status_all(
        self, *, timeout: float | None = None
    ) -> dict[str, NodeStatus | DengineError]:
        """The status of every endpoint, queried in parallel (an error for unreachable ones)."""

        async def one(addr: str) -> NodeStatus | DengineError:
            try:
                return await self.status(addr, timeout=timeout)
            except DengineError as e:
                return e

        endpoints = self.endpoints
        results = await asyncio.gather(*(one(a) for a in endpoints))
        return dict(zip(endpoints, results, strict=True))

    async def leader(self, *, timeout: float | None = None) -> Leader:
        """The current leader (waits, within the deadline, until some node knows one)."""
        deadline = self._deadline(timeout)
        backoff = Backoff()
        while True:
            resp, addr = await self._router.call_any(
                "GetLeader", GetLeaderRequest(), GetLeaderResponse, deadline
            )
            if resp.leader_id:
                address = resp.leader_address
                if address:
                    self._router.remember_leader(address)
                return Leader(resp.leader_id, address, resp.term)
            self._router.rotate()
            await backoff.sleep(deadline, Unavailable(f"no leader known to {addr}"))

    # ---- membership ---------------------------------------------------------------------

    async def members(self, *, timeout: float | None = None) -> list[MemberInfo]:
        """The current configuration, voters and learners, as the leader sees it."""
        resp = await self._router.call_leader(
            "MemberList", MemberListRequest(leader_only=True), MemberListResponse,
            self._deadline(timeout), write=False,
        )
        return [member_from_wire(m) for m in resp.members]

    async def add_member(
        self, node_id: int, address: str, promote: bool = False, *,
        timeout: float | None = None,
    ) -> list[MemberInfo]:
        """Add node `node_id` (peer `address`, HOST:PORT) as a learner; with `promote`, the
        leader makes it a voter once it has caught up. Returns the new configuration.

        One change at a time: while another is pending the call retries until its deadline
        (then `Unavailable`). `Timeout` means the change may still take effect."""
        try:
            parse_address(address)
        except DengineError as e:
            raise InvalidRequest(f"member address: {e.message}") from None
        request = AddMemberRequest(node_id=check_node_id(node_id), address=address,
                                   promote_when_caught_up=promote)
        return await self._change("AddMember", request, timeout)

    async def promote_member(self, node_id: int, *, timeout: float | None = None
                             ) -> list[MemberInfo]:
        """Make the caught-up learner `node_id` a voter. Returns the new configuration."""
        request = PromoteMemberRequest(node_id=check_node_id(node_id))
        return await self._change("PromoteMember", request, timeout)

    async def remove_member(self, node_id: int, *, timeout: float | None = None
                            ) -> list[MemberInfo]:
        """Remove member `node_id` (the leader hands leadership over first if it is the one
        removed). Returns the new configuration."""
        request = RemoveMemberRequest(node_id=check_node_id(node_id))
        return await self._change("RemoveMember", request, timeout)

    async def _change(self, method: str, request: ProtoMessage, timeout: float | None
                      ) -> list[MemberInfo]:
        resp = await self._router.call_leader(method, request, MemberChangeResponse,
                                              self._deadline(timeout), write=True)
        return [member_from_wire(m) for m in resp.members]

    # ---- the Raft group's own events -----------------------------------------------------

    def leader_changes(self) -> AsyncIterator[Leader]:
        """`async for leader in client.leader_changes():` the leader as a node of the
        cluster knows it, then each change (a new leader id or term; `Leader(0, "", term)`
        while the node answering knows none), by long-polls on any node (another node when
        one fails). Changes closer together than one round trip may be seen as the last
        one only. Ends when the client is closed."""
        def request(known: Leader | None) -> EventsRequest:
            if known is None:
                return EventsRequest(kind=EventsRequest.LEADER)
            return EventsRequest(kind=EventsRequest.LEADER, known=True,
                                 leader_id=known.id, term=known.term)

        def parse(resp: EventsResponse) -> Leader:
            return Leader(resp.leader_id, resp.leader_address, resp.term)

        return self._follow(request, parse, lambda a, b: (a.id, a.term) == (b.id, b.term))

    def membership_changes(self) -> AsyncIterator[MemberSet]:
        """`async for members in client.membership_changes():` the configuration a node
        has applied (voters and learners, id -> peer address), then each change, like
        `leader_changes`."""
        def request(known: MemberSet | None) -> EventsRequest:
            if known is None:
                return EventsRequest(kind=EventsRequest.MEMBERS)
            return EventsRequest(
                kind=EventsRequest.MEMBERS, known=True,
                voters=[Member(id=i, address=a) for i, a in known.voters.items()],
                learners=[Member(id=i, address=a) for i, a in known.learners.items()])

        def parse(resp: EventsResponse) -> MemberSet:
            return MemberSet({m.id: m.address for m in resp.voters},
                             {m.id: m.address for m in resp.learners})

        return self._follow(request, parse, lambda a, b: a == b)

    async def _follow(
        self, request: Callable[[T | None], EventsRequest],
        parse: Callable[[EventsResponse], T], same: Callable[[T, T], bool],
    ) -> AsyncIterator[T]:
        known: T | None = None
        backoff = Backoff()
        while not self._closed:
            req = request(known)
            req.wait_ms = int(EVENTS_POLL_S * 1000) if known is not None else 0
            attempt = EVENTS_POLL_S + self._timeout
            try:
                resp, _ = await self._router.call_any(
                    "Events", req, EventsResponse, self._deadline(attempt),
                    attempt_timeout=attempt)
            except (Unavailable, Timeout):
                if self._closed:
                    return
                await backoff.sleep(math.inf, Unavailable("unreachable"))
                continue
            backoff = Backoff()
            value = parse(resp)
            if known is None or not same(value, known):
                known = value
                yield value

    # ---- internals ----------------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> float:
        if self._closed:
            raise Unavailable("client closed")
        if timeout is None:
            return time.monotonic() + self._timeout
        return time.monotonic() + check_timeout(timeout)

    async def _submit(
        self, batcher: Batcher[P, T], payload: P, size: int, timeout: float | None
    ) -> T:
        deadline = self._deadline(timeout)
        item = batcher.submit(payload, size, deadline)
        fut = item.future
        # The batch's own deadline handling reports the more precise error (e.g. never
        # sent); this outer bound only catches what it cannot. A timer on the future rather
        # than asyncio.wait_for, which wraps it in more futures and callbacks on every call
        # (~20 µs of a 1 ms round trip).
        loop = asyncio.get_running_loop()
        timer = loop.call_later(
            max(0.0, deadline - time.monotonic()) + _DEADLINE_GRACE_S, _give_up, fut,
            timeout or self._timeout, batcher is self._writes,
        )
        try:
            return await fut
        except BaseException:
            # Cancelled by the caller (asyncio.wait_for...), or past the deadline: nothing
            # of this call may keep delaying later ones (see Batcher.abandon).
            batcher.abandon(item)
            raise
        finally:
            timer.cancel()

    async def _send_writes(
        self, batch: list[Item[list[WriteCommand], list[WireResult]]]
    ) -> None:
        commands = [c for item in batch for c in item.payload]
        deadline = max(item.deadline for item in batch)
        try:
            resp = await self._router.call_leader(
                "Write", WriteRequest(commands=commands), WriteResponse, deadline, write=True
            )
        except (InvalidRequest, KvError):
            if len(batch) == 1:
                raise
            # One caller's bad command must not fail the others: send each alone.
            await each_alone(self._send_writes, batch)
            return
        results = list(resp.results)
        if len(results) != len(commands):
            raise DengineError(
                f"server answered {len(results)} results for {len(commands)} commands"
            )
        ids = (resp.cluster_id, resp.member_id, resp.raft_term)
        pos = 0
        for item in batch:
            n = len(item.payload)
            if not item.future.done():
                mine = _Results(results[pos:pos + n])
                mine.header_ids = ids
                item.future.set_result(mine)
            pos += n

    async def _send_reads(
        self, batch: list[Item[list[bytes], list[bytes | None]]], *, level: int
    ) -> None:
        keys = [k for item in batch for k in item.payload]
        deadline = max(item.deadline for item in batch)
        try:
            resp = await self._router.call_leader(
                "Read", ReadRequest(keys=keys, consistency=level),  # type: ignore[arg-type]
                ReadResponse, deadline, write=False,
            )
        except (InvalidRequest, KvError):
            if len(batch) == 1:
                raise
            await each_alone(functools.partial(self._send_reads, level=level), batch)
            return
        if len(resp.results) != len(keys):
            raise DengineError(f"server answered {len(resp.results)} values for {len(keys)} keys")
        values = [r.value if r.found else None for r in resp.results]
        pos = 0
        for item in batch:
            n = len(item.payload)
            if not item.future.done():
                item.future.set_result(values[pos:pos + n])
            pos += n

    async def _send_ranges(
        self, batch: list[Item[list[bytes], list[KvResult]]], *, level: int,
        kind: str = "ranges",
    ) -> None:
        """A KvRead of the batch's encoded RangeRequests (`kind` "ranges") or read-only
        TxnRequests ("txns")."""
        ranges = [r for item in batch for r in item.payload]
        deadline = max(item.deadline for item in batch)
        request = KvReadRequest(consistency=level)  # type: ignore[arg-type]
        getattr(request, kind).extend(ranges)
        try:
            resp = await self._router.call_leader(
                "KvRead", request, KvReadResponse, deadline, write=False,
            )
        except (InvalidRequest, KvError):
            if len(batch) == 1:
                raise
            await each_alone(functools.partial(self._send_ranges, level=level, kind=kind),
                             batch)
            return
        if kind == "txns" and not resp.results:
            # A server before KvRead's txns ignores them: the callers go through the log.
            for item in batch:
                if not item.future.done():
                    item.future.set_result([])
            return
        if len(resp.results) != len(ranges):
            raise DengineError(f"server answered {len(resp.results)} results for "
                               f"{len(ranges)} ranges")
        pos = 0
        for item in batch:
            n = len(item.payload)
            if not item.future.done():
                item.future.set_result(list(resp.results[pos:pos + n]))
            pos += n


class _Results(list[WireResult]):
    """One caller's wire results of a Write, with the header ids of the answering member."""

    header_ids: tuple[int, int, int] = (0, 0, 0)


def check_timeout(timeout: float) -> float:
    """A deadline in seconds: a finite number above 0 (InvalidRequest otherwise)."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
            or not 0 < timeout < math.inf:
        raise InvalidRequest(f"timeout must be a finite number of seconds above 0, "
                             f"got {timeout!r}")
    return float(timeout)


def _give_up(fut: asyncio.Future[Any], timeout: float, write: bool) -> None:
    if not fut.done():
        fut.set_exception(Timeout(f"no answer within {timeout:g} s"
                                  + (" (the write may still be applied)" if write else "")))

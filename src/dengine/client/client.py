"""The asyncio client of a dengine cluster (native protocol, or gRPC).

Endpoints are the nodes' gRPC addresses. With `transport="auto"` (the default) the first
call to a node asks it (gRPC Status) for its native listener and then sends everything
over one pipelined native connection (`dengine.client.native`): Python's gRPC costs
~430 µs per round trip here, the native frames ~30 µs. A node without one, or whose
native port cannot be reached, is served over gRPC; the native port is tried again when
that node has to be reconnected. "native" insists on it, "grpc" never uses it.

It finds the leader, follows NOT_LEADER redirects, retries within the deadline, and maps
error codes to `dengine.errors` exceptions. Concurrent calls from one client are batched:
all puts/deletes/writes submitted while fewer than `max_inflight` Write RPCs are in flight
go out as one Write RPC (bounded by `max_batch_commands` and `max_batch_bytes`); reads of
one consistency level likewise.

Outcome of a failed write — one rule: `Timeout` means unknown, the rest means no.

* unknown (it may be applied, now or later): `Timeout`, and its subclass `ConnectionLost`
  (the request was sent, then the connection broke or the server shut down before
  answering); also the rare server-side `STORAGE`/`INTERNAL` errors.
* definitely not applied: `NotLeader`, `InvalidRequest`, `Unavailable` (no node reachable,
  no leader, or the leader changed and the entry was overwritten). The client retries
  NotLeader and Unavailable itself, with backoff, until the deadline.

The client retries a write only when it knows the write was not applied, so an
acknowledged write is applied exactly once; reads are retried on any transient failure.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.message import Message as ProtoMessage

from dengine.client.native import Lost, NativeConnection, NotSent, Refused
from dengine.config import parse_address
from dengine.errors import (
    ERRORS_BY_CODE,
    CorruptionError,
    DengineError,
    InvalidRequest,
    NotLeader,
    StorageError,
    Timeout,
    Unavailable,
)
from dengine.keys import as_bytes
from dengine.proto.client_pb2 import (
    AddMemberRequest,
    Error,
    GetLeaderRequest,
    GetLeaderResponse,
    MemberChangeResponse,
    MemberListRequest,
    MemberListResponse,
    MemberStatus,
    PromoteMemberRequest,
    ReadConsistency,
    ReadRequest,
    ReadResponse,
    RemoveMemberRequest,
    StatusRequest,
    StatusResponse,
    WriteRequest,
    WriteResponse,
)
from dengine.proto.common_pb2 import WriteCommand
from dengine.proto.native import METHOD_CODES, STATUS_SHUTTING_DOWN

log = logging.getLogger("dengine.client")

TRANSPORTS = ("auto", "native", "grpc")
SERVICE = "/dengine.RaftClientService/"

CONSISTENCY_LEVELS = {
    "linearizable": ReadConsistency.READ_CONSISTENCY_LINEARIZABLE,
    "lease": ReadConsistency.READ_CONSISTENCY_LEASE,
    "eventual": ReadConsistency.READ_CONSISTENCY_EVENTUAL,
}

_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    # Reconnect quickly to a restarted node (gRPC's default first backoff is 1 s).
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
]
_BACKOFF_FIRST_S = 0.02
_DEADLINE_GRACE_S = 0.1
_BACKOFF_MAX_S = 0.2
# A read or status attempt on an unresponsive (e.g. paused) node gives up after this share
# of the remaining time, so that another node can still answer within the deadline.
_READ_ATTEMPT_SHARE = 0.34
_READ_ATTEMPT_MIN_S = 0.5


class ConnectionLost(Timeout):
    """The request was sent, then the connection broke: a write's outcome is unknown."""

    code = "CONNECTION_LOST"


@dataclass(frozen=True)
class WriteResult:
    """The outcome of one applied command."""

    index: int
    succeeded: bool
    value: bytes = b""


@dataclass(frozen=True)
class Leader:
    """The leader as a node knows it: id 0 means no leader known."""

    id: int
    address: str
    term: int


@dataclass(frozen=True)
class NodeStatus:
    """One node's view of itself and the cluster (the Status RPC)."""

    endpoint: str
    node_id: int
    cluster_id: str
    role: str
    term: int
    leader_id: int
    leader_address: str
    commit_index: int
    applied_index: int
    first_log_index: int
    last_log_index: int
    voters: dict[int, str] = field(default_factory=dict)
    learners: dict[int, str] = field(default_factory=dict)
    snapshot_index: int = 0  # the log starts after this index (0: never compacted)
    native_address: str = ""  # its native client listener ("" = none)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MemberInfo:
    """One cluster member as the leader sees it."""

    id: int
    address: str          # peer address (Raft traffic)
    client_address: str   # "" when the leader has not heard it yet
    role: str             # "voter" | "learner"
    match_index: int      # highest log index known replicated on it (0 = unknown)
    is_leader: bool

    @classmethod
    def from_wire(cls, m: MemberStatus) -> MemberInfo:
        return cls(m.id, m.address, m.client_address, m.role, m.match_index, m.is_leader)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Key = bytes | str




def insert(key: Key, value: Key) -> WriteCommand:
    """A put command for `Client.write`."""
    return WriteCommand(insert=WriteCommand.Insert(key=as_bytes(key), value=as_bytes(value,
                                                                                     "value")))


def delete(key: Key) -> WriteCommand:
    """A delete command for `Client.write`."""
    return WriteCommand(delete=WriteCommand.Delete(key=as_bytes(key)))


def parse_endpoints(endpoints: str | Iterable[str]) -> list[str]:
    """ "h1:p1,h2:p2" or a list of "host:port" -> validated, de-duplicated list."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    out: list[str] = []
    for item in items:
        addr = item.strip()
        if not addr:
            continue
        try:
            parse_address(addr)
        except DengineError as e:
            raise InvalidRequest(f"bad endpoint: {e.message}") from None
        if addr not in out:
            out.append(addr)
    if not out:
        raise InvalidRequest("no endpoints given (expected HOST:PORT[,HOST:PORT...])")
    return out


def error_from_wire(err: Error) -> DengineError:
    """The exception for an `Error` field of a response."""
    if err.code == NotLeader.code:
        return NotLeader(err.message, err.leader_id, err.leader_address)
    cls = ERRORS_BY_CODE.get(err.code, DengineError)
    if cls is CorruptionError:  # its constructor wants the path and offset
        cls = StorageError
    exc = cls(err.message or err.code)
    exc.code = err.code or DengineError.code
    return exc


class _Unsent(Exception):
    """Internal: the attempt failed before the request left (safe to retry a write)."""

    def __init__(self, error: DengineError) -> None:
        super().__init__(error.message)
        self.error = error


T = TypeVar("T")
P = TypeVar("P")


@dataclass
class _Item(Generic[P, T]):
    payload: P
    size: int
    deadline: float
    future: asyncio.Future[T]


class _Batcher(Generic[P, T]):
    """Coalesces concurrent submissions into batches, at most `max_inflight` at a time."""

    def __init__(
        self,
        send: Callable[[list[_Item[P, T]]], Awaitable[None]],
        max_items: int,
        max_bytes: int,
        max_inflight: int,
    ) -> None:
        self._send = send
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._max_inflight = max_inflight
        self._pending: deque[_Item[P, T]] = deque()
        self._inflight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, payload: P, size: int, deadline: float) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._pending.append(_Item(payload, size, deadline, fut))
        if not self._scheduled:
            # Everything submitted during this loop turn joins the same batch.
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        pending = self._pending
        while pending and self._inflight < self._max_inflight:
            batch: list[_Item[P, T]] = []
            size = 0
            while pending and len(batch) < self._max_items:
                item = pending[0]
                if item.future.done():  # its caller gave up before it was sent
                    pending.popleft()
                    continue
                if batch and size + item.size > self._max_bytes:
                    break
                batch.append(pending.popleft())
                size += item.size
            if not batch:
                break
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[_Item[P, T]]) -> None:
        try:
            await self._send(batch)
        except BaseException as exc:  # never leave a caller waiting
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(
                        exc if isinstance(exc, Exception) else Unavailable("client closed")
                    )
            if not isinstance(exc, Exception):
                raise
        finally:
            self._inflight -= 1
            if self._pending and not self._scheduled:
                self._flush()

    async def close(self) -> None:
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(Unavailable("client closed"))
        self._pending.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _give_up(fut: asyncio.Future[Any], message: str) -> None:
    if not fut.done():
        fut.set_exception(Timeout(message))


async def _each_alone(
    send: Callable[[list[_Item[P, T]]], Awaitable[None]], batch: list[_Item[P, T]]
) -> None:
    """Send every item of `batch` in its own RPC, concurrently; each gets its own outcome."""

    async def one(item: _Item[P, T]) -> None:
        try:
            await send([item])
        except Exception as e:
            if not item.future.done():
                item.future.set_exception(e)

    await asyncio.gather(*(one(item) for item in batch))


class Client:
    """Async client of a dengine cluster. Create it, use it, `await close()` (or `async with`).

    `endpoints`: client (gRPC) addresses "host:port" of some or all nodes (a list or a
    comma-separated string). `timeout`: default deadline of each call in seconds, retries
    included. `transport`: "auto" (native where the node offers it, else gRPC), "native"
    or "grpc" (see the module docstring).
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
    ) -> None:
        if timeout <= 0:
            raise InvalidRequest(f"timeout must be positive, got {timeout}")
        if transport not in TRANSPORTS:
            raise InvalidRequest(f"unknown transport {transport!r} (expected one of: "
                                 + ", ".join(TRANSPORTS) + ")")
        self._endpoints = parse_endpoints(endpoints)
        self._timeout = timeout
        self._transport = transport
        self._channels: dict[str, grpc.aio.Channel] = {}
        # gRPC address -> the task that learns its native address and connects; its result
        # is the connection, or None: that node is served over gRPC.
        self._native: dict[str, asyncio.Task[NativeConnection | None]] = {}
        self._leader: str | None = None
        self._next = 0  # round-robin position over endpoints when no leader is known
        self._closed = False
        self._writes: _Batcher[list[WriteCommand], list[WriteResult]] = _Batcher(
            self._send_writes, max_batch_commands, max_batch_bytes, max_inflight
        )
        self._reads: dict[int, _Batcher[list[bytes], list[bytes | None]]] = {
            level: _Batcher(
                functools.partial(self._send_reads, level=level),
                max_batch_commands, max_batch_bytes, max_inflight,
            )
            for level in CONSISTENCY_LEVELS.values()
        }

    @property
    def endpoints(self) -> list[str]:
        return list(self._endpoints)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Fail pending calls with Unavailable and close every connection."""
        if self._closed:
            return
        self._closed = True
        await self._writes.close()
        for batcher in self._reads.values():
            await batcher.close()
        natives, self._native = list(self._native.values()), {}
        for task in natives:
            if not task.done():
                task.cancel()
            elif not task.cancelled() and task.exception() is None:
                conn = task.result()
                if conn is not None:
                    conn.close()
        await asyncio.gather(*natives, return_exceptions=True)
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()

    # ---- key-value API ------------------------------------------------------------------

    async def put(self, key: Key, value: Key, *, timeout: float | None = None) -> None:
        await self.write([insert(key, value)], timeout=timeout)

    async def delete(self, key: Key, *, timeout: float | None = None) -> None:
        await self.write([delete(key)], timeout=timeout)

    async def write(
        self, commands: Sequence[WriteCommand], *, timeout: float | None = None
    ) -> list[WriteResult]:
        """Apply `commands` (see `insert`, `delete`) in order; one result per command."""
        if not commands:
            raise InvalidRequest("a write needs at least one command")
        size = sum(c.ByteSize() for c in commands)
        return await self._submit(self._writes, list(commands), size, timeout)

    async def get(
        self, key: Key, consistency: str = "linearizable", *, timeout: float | None = None
    ) -> bytes | None:
        return (await self.get_many([key], consistency, timeout=timeout))[0]

    async def get_many(
        self, keys: Sequence[Key], consistency: str = "linearizable", *,
        timeout: float | None = None,
    ) -> list[bytes | None]:
        """Values of `keys` in order (None = absent), all read at one consistency level."""
        level = consistency_level(consistency)
        raw = [as_bytes(k) for k in keys]
        if not raw:
            return []
        return await self._submit(self._reads[level], raw, sum(len(k) for k in raw), timeout)

    # ---- cluster information ------------------------------------------------------------

    async def status(
        self, endpoint: str | None = None, *, timeout: float | None = None
    ) -> NodeStatus:
        """The status of `endpoint` (or of the first node that answers)."""
        deadline = self._deadline(timeout)
        targets = parse_endpoints([endpoint]) if endpoint else None
        resp, addr = await self._call_any("Status", StatusRequest(), StatusResponse, deadline,
                                          targets)
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

        results = await asyncio.gather(*(one(a) for a in self._endpoints))
        return dict(zip(self._endpoints, results, strict=True))

    async def leader(self, *, timeout: float | None = None) -> Leader:
        """The current leader (waits, within the deadline, until some node knows one)."""
        deadline = self._deadline(timeout)
        backoff = _Backoff()
        while True:
            resp, addr = await self._call_any(
                "GetLeader", GetLeaderRequest(), GetLeaderResponse, deadline
            )
            if resp.leader_id:
                address = resp.leader_address
                if address:
                    self._remember_leader(address)
                return Leader(resp.leader_id, address, resp.term)
            self._rotate()
            await backoff.sleep(deadline, Unavailable(f"no leader known to {addr}"))

    # ---- membership ---------------------------------------------------------------------

    async def members(self, *, timeout: float | None = None) -> list[MemberInfo]:
        """The current configuration, voters and learners, as the leader sees it."""
        resp = await self._call_leader(
            "MemberList", MemberListRequest(leader_only=True), MemberListResponse,
            self._deadline(timeout), write=False,
        )
        return [MemberInfo.from_wire(m) for m in resp.members]

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
        request = AddMemberRequest(node_id=_node_id(node_id), address=address,
                                   promote_when_caught_up=promote)
        return await self._change("AddMember", request, timeout)

    async def promote_member(self, node_id: int, *, timeout: float | None = None
                             ) -> list[MemberInfo]:
        """Make the caught-up learner `node_id` a voter. Returns the new configuration."""
        return await self._change("PromoteMember", PromoteMemberRequest(node_id=_node_id(node_id)),
                                  timeout)

    async def remove_member(self, node_id: int, *, timeout: float | None = None
                            ) -> list[MemberInfo]:
        """Remove member `node_id` (the leader hands leadership over first if it is the one
        removed). Returns the new configuration."""
        return await self._change("RemoveMember", RemoveMemberRequest(node_id=_node_id(node_id)),
                                  timeout)

    async def _change(self, method: str, request: ProtoMessage, timeout: float | None
                      ) -> list[MemberInfo]:
        resp = await self._call_leader(method, request, MemberChangeResponse,
                                       self._deadline(timeout), write=True)
        return [MemberInfo.from_wire(m) for m in resp.members]

    # ---- internals ----------------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> float:
        if self._closed:
            raise Unavailable("client closed")
        t = self._timeout if timeout is None else timeout
        if t <= 0:
            raise InvalidRequest(f"timeout must be positive, got {t}")
        return time.monotonic() + t

    async def _submit(
        self, batcher: _Batcher[P, T], payload: P, size: int, timeout: float | None
    ) -> T:
        deadline = self._deadline(timeout)
        fut = batcher.submit(payload, size, deadline)
        # The batch's own deadline handling reports the more precise error (e.g. never
        # sent); this outer bound only catches what it cannot (a paused server). A timer
        # on the future rather than asyncio.wait_for, which wraps it in more futures and
        # callbacks on every call (~20 µs of a 1 ms round trip).
        loop = asyncio.get_running_loop()
        timer = loop.call_later(
            max(0.0, deadline - time.monotonic()) + _DEADLINE_GRACE_S, _give_up, fut,
            f"no answer within {timeout or self._timeout:g} s (a write may still be applied)",
        )
        try:
            return await fut
        finally:
            timer.cancel()

    async def _send_writes(
        self, batch: list[_Item[list[WriteCommand], list[WriteResult]]]
    ) -> None:
        commands = [c for item in batch for c in item.payload]
        deadline = max(item.deadline for item in batch)
        try:
            resp = await self._call_leader(
                "Write", WriteRequest(commands=commands), WriteResponse, deadline, write=True
            )
        except InvalidRequest:
            if len(batch) == 1:
                raise
            # One caller's bad command must not fail the others: send each alone.
            await _each_alone(self._send_writes, batch)
            return
        results = [WriteResult(r.index, r.succeeded, r.value) for r in resp.results]
        if len(results) != len(commands):
            raise DengineError(
                f"server answered {len(results)} results for {len(commands)} commands"
            )
        pos = 0
        for item in batch:
            n = len(item.payload)
            if not item.future.done():
                item.future.set_result(results[pos:pos + n])
            pos += n

    async def _send_reads(
        self, batch: list[_Item[list[bytes], list[bytes | None]]], *, level: int
    ) -> None:
        keys = [k for item in batch for k in item.payload]
        deadline = max(item.deadline for item in batch)
        try:
            resp = await self._call_leader(
                "Read", ReadRequest(keys=keys, consistency=level),  # type: ignore[arg-type]
                ReadResponse, deadline, write=False,
            )
        except InvalidRequest:
            if len(batch) == 1:
                raise
            await _each_alone(functools.partial(self._send_reads, level=level), batch)
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

    async def _call_leader(
        self, method: str, request: ProtoMessage, response_cls: type[Any], deadline: float,
        *, write: bool,
    ) -> Any:
        """Call the leader, following redirects and retrying what is safe until `deadline`."""
        backoff = _Backoff()
        payload = request.SerializeToString()
        while True:
            addr = self._leader or self._endpoints[self._next % len(self._endpoints)]
            attempt_deadline = deadline if write else _read_attempt_deadline(deadline)
            try:
                resp = await self._invoke(addr, method, payload, response_cls, attempt_deadline,
                                          write=write)
            except _Unsent as unsent:
                self._forget(addr)
                await backoff.sleep(deadline, unsent.error)
                continue
            except Timeout:  # ConnectionLost included
                if write or time.monotonic() >= deadline:
                    raise
                self._forget(addr)
                continue
            if not resp.HasField("error"):
                return resp
            err = error_from_wire(resp.error)
            if isinstance(err, NotLeader):
                if err.leader_address and err.leader_address != addr:
                    self._remember_leader(err.leader_address)
                    backoff.redirected()
                    if backoff.redirects <= 3:
                        continue
                else:
                    self._forget(addr)
                await backoff.sleep(deadline, err)
                continue
            if isinstance(err, Unavailable):  # not applied (see the module docstring)
                self._forget(addr)
                await backoff.sleep(deadline, err)
                continue
            raise err

    async def _call_any(
        self, method: str, request: ProtoMessage, response_cls: type[Any], deadline: float,
        targets: list[str] | None = None,
    ) -> tuple[Any, str]:
        """Call the first node of `targets` (default: all endpoints) that answers."""
        backoff = _Backoff()
        payload = request.SerializeToString()
        candidates = targets or self._endpoints
        turn = 0
        while True:
            addr = candidates[(self._next + turn) % len(candidates)]
            turn += 1
            try:
                resp = await self._invoke(addr, method, payload, response_cls,
                                          _read_attempt_deadline(deadline), write=False)
            except (_Unsent, Timeout) as e:
                error = e.error if isinstance(e, _Unsent) else e
                if time.monotonic() >= deadline:
                    raise error from None
                if turn % len(candidates) == 0:
                    await backoff.sleep(deadline, error)
                continue
            if resp.HasField("error"):
                raise error_from_wire(resp.error)
            return resp, addr

    async def _invoke(
        self, addr: str, method: str, payload: bytes, response_cls: type[Any],
        deadline: float, *, write: bool,
    ) -> Any:
        """One RPC. Raises _Unsent when the request surely did not reach the server."""
        if deadline - time.monotonic() <= 0:
            raise Timeout(f"deadline passed before {method} could be sent"
                          + (" (a write may still be applied)" if write else ""))
        if self._transport != "grpc":
            conn = await self._native_connection(addr, deadline)
            if conn is not None:
                body = await self._native_call(conn, addr, method, payload, deadline, write)
                return response_cls.FromString(body)
        return await self._grpc_call(addr, method, payload, response_cls, deadline, write=write)

    async def _grpc_call(
        self, addr: str, method: str, payload: bytes, response_cls: type[Any],
        deadline: float, *, write: bool,
    ) -> Any:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(f"deadline passed before {method} could be sent"
                          + (" (a write may still be applied)" if write else ""))
        call = self._channel(addr).unary_unary(
            SERVICE + method, request_serializer=None,
            response_deserializer=response_cls.FromString,
        )
        try:
            return await call(payload, timeout=remaining)
        except grpc.aio.AioRpcError as e:
            fallback = self._native.get(addr)
            if fallback is not None and fallback.done() and not fallback.cancelled() \
                    and fallback.exception() is None and fallback.result() is None:
                del self._native[addr]  # reconnecting: look for its native listener again
            raise _rpc_error(e, addr, method, write) from None

    async def _native_call(
        self, conn: NativeConnection, addr: str, method: str, payload: bytes,
        deadline: float, write: bool,
    ) -> bytes:
        """One request on a native connection, its failures mapped like gRPC's."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Unsent(Unavailable(f"deadline passed before {method} could be sent to "
                                      f"{addr}"))
        unknown = " (the write may still be applied)" if write else ""
        try:
            return await conn.call(METHOD_CODES[method], payload, remaining)
        except NotSent as e:
            raise _Unsent(Unavailable(f"{addr}: {e}")) from None
        except Lost as e:
            raise ConnectionLost(f"{addr}: {method}: {e}{unknown}") from None
        except TimeoutError:
            raise Timeout(f"{addr}: no answer to {method} before the deadline{unknown}"
                          ) from None
        except Refused as e:
            if e.status == STATUS_SHUTTING_DOWN:
                raise _Unsent(Unavailable(f"{addr}: {e}")) from None
            # Too large for the server, or a method it does not know: never processed.
            raise InvalidRequest(f"{addr}: {method} refused: {e}") from None

    async def _native_connection(self, addr: str, deadline: float) -> NativeConnection | None:
        """The live native connection to `addr`, or None when `addr` is served over gRPC.

        Raises _Unsent when the node cannot be asked (the request was not sent)."""
        task = self._native.get(addr)
        if task is not None and task.done():
            if not task.cancelled() and task.exception() is None:
                conn = task.result()
                if conn is None or not conn.closed:
                    return conn
            # Failed, or its connection dropped: ask again (a restarted node listens on a
            # new port when its native port is chosen at start).
            task = None
        if task is None:
            task = asyncio.get_running_loop().create_task(self._open_native(addr, deadline))
            task.add_done_callback(_retrieve)
            self._native[addr] = task
        try:
            return await asyncio.wait_for(asyncio.shield(task),
                                          max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise _Unsent(Unavailable(
                f"cannot connect to {addr} before the deadline (no answer to the Status call "
                "that finds its native listener)")) from None

    async def _open_native(self, addr: str, deadline: float) -> NativeConnection | None:
        """Ask `addr` for its native address (gRPC Status) and connect to it."""
        try:
            resp = await self._grpc_call(addr, "Status", b"", StatusResponse, deadline,
                                         write=False)
        except DengineError as e:  # nothing was sent yet of the request that needs this
            raise _Unsent(Unavailable(f"{addr}: {e.message}")) from None
        native = "" if resp.HasField("error") else resp.native_address
        if not native:
            if self._transport == "native":
                raise _Unsent(Unavailable(f"{addr} has no native client listener "
                                          "(transport='native')"))
            log.debug("%s has no native client listener; using gRPC", addr)
            return None
        native = _dialable(native, addr)
        try:
            conn = await NativeConnection.open(native, max(0.001, deadline - time.monotonic()))
        except (OSError, TimeoutError, DengineError) as e:
            if self._transport == "native":
                raise _Unsent(Unavailable(f"cannot connect to the native listener {native} "
                                          f"of {addr}: {e}")) from None
            log.debug("cannot connect to the native listener %s of %s (%s); using gRPC",
                      native, addr, e)
            return None
        return conn

    def _channel(self, addr: str) -> grpc.aio.Channel:
        channel = self._channels.get(addr)
        if channel is None:
            channel = grpc.aio.insecure_channel(addr, options=_CHANNEL_OPTIONS)
            self._channels[addr] = channel
        return channel

    def _remember_leader(self, addr: str) -> None:
        self._leader = addr
        if addr not in self._endpoints:
            self._endpoints.append(addr)

    def _forget(self, addr: str) -> None:
        """`addr` failed or is not the leader: try the next endpoint."""
        if self._leader == addr:
            self._leader = None
        self._rotate()

    def _rotate(self) -> None:
        self._next = (self._next + 1) % len(self._endpoints)


class _Backoff:
    """Exponential backoff with jitter that never sleeps past the deadline."""

    def __init__(self) -> None:
        self._delay = _BACKOFF_FIRST_S
        self.redirects = 0

    def redirected(self) -> None:
        self.redirects += 1

    async def sleep(self, deadline: float, error: DengineError) -> None:
        """Sleep before the next attempt, or raise `error` when no time is left for one."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise error
        await asyncio.sleep(min(remaining, self._delay * random.uniform(0.5, 1.0)))
        self._delay = min(self._delay * 2, _BACKOFF_MAX_S)
        self.redirects = 0
        if time.monotonic() >= deadline:
            raise error


def consistency_level(name: str) -> int:
    """ "linearizable" | "lease" | "eventual" -> the wire enum; InvalidRequest otherwise."""
    level = CONSISTENCY_LEVELS.get(str(getattr(name, "value", name)).lower())
    if level is None:
        raise InvalidRequest(
            f"unknown consistency level {name!r} (expected one of: "
            + ", ".join(CONSISTENCY_LEVELS) + ")"
        )
    return int(level)


def _node_id(node_id: int) -> int:
    if not isinstance(node_id, int) or isinstance(node_id, bool) or node_id <= 0:
        raise InvalidRequest(f"node id must be a positive integer, got {node_id!r}")
    return node_id


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a connect task's failure as seen (its waiters may all have given up)."""
    if not task.cancelled():
        task.exception()


def _dialable(native: str, grpc_addr: str) -> str:
    """`native` with a wildcard host (a listener on every interface) replaced by the host
    the client already reaches the node at."""
    host, port = parse_address(native)
    if host not in ("0.0.0.0", "::", ""):
        return native
    host = parse_address(grpc_addr)[0]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _read_attempt_deadline(deadline: float) -> float:
    now = time.monotonic()
    share = max(_READ_ATTEMPT_MIN_S, (deadline - now) * _READ_ATTEMPT_SHARE)
    return min(deadline, now + share)


def _rpc_error(e: grpc.aio.AioRpcError, addr: str, method: str, write: bool) -> Exception:
    """Map a gRPC status (a transport failure) to a dengine error (or _Unsent)."""
    code = e.code()
    details = e.details() or ""
    unknown = " (the write may still be applied)" if write else ""
    if code == grpc.StatusCode.UNAVAILABLE:
        if "failed to connect" in details.lower() or "connection refused" in details.lower():
            reason = details.rsplit(": ", 1)[-1]
            return _Unsent(Unavailable(f"cannot connect to {addr}: {reason}"))
        return ConnectionLost(f"{addr}: connection lost during {method}: {details}{unknown}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return Timeout(f"{addr}: no answer to {method} before the deadline{unknown}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return InvalidRequest(f"{addr}: request exceeds the server's max_request_size: {details}")
    if code == grpc.StatusCode.CANCELLED:
        return ConnectionLost(f"{addr}: {method} cancelled: {details}{unknown}")
    return DengineError(f"{addr}: {method} failed: {code.name}: {details}{unknown}")

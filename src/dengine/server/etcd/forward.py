"""A follower's writes go to the leader, as etcd's followers forward proposals, once.

KV writes (Put, DeleteRange, Txn, Compact) go over the leader's native client port
(`KvForwarder`): the etcd request as the client sent it, in a `ForwardWrite` that
carries every write forwarded during one loop turn (a Python gRPC call per write would
cost the follower and the leader more than the write itself). So do the lease service's
calls (`KvForwarder.lease`: the native Lease method; `KvForwarder.keepalive`: the
keep-alives of one loop turn in one native LeaseKeepAlive), unless the client sent an
auth token or auth is on: then they, and writes with a token, go over the leader's gRPC
client port (`Forwarder`, the same etcd method, the token sent on).

A client's write is never refused with a redirect (etcd's clients do not follow one) and
never retried once sent: a forwarded write whose answer does not come back has an unknown
outcome ("request timed out"). The leader's answer says the log index of the write (in
the ForwardWrite result; trailing metadata over gRPC), and the follower waits for its own
apply of that index before answering, so that a serializable read on this member after
the write sees it, as on etcd; the answer also tells it the commit, so that it applies at
once (`Engine.learn_commit`). A request forwarded once is not forwarded again (leader
changed meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, TypeVar

import grpc

from dengine.client.batcher import Batcher, Item
from dengine.client.routing import ConnectionLost, Router, error_from_wire
from dengine.errors import DengineError, KvError, Timeout
from dengine.kv.codec import join_write_request
from dengine.node.engine import Engine
from dengine.proto.client_pb2 import (
    LeaseKeepAliveBatchRequest,
    LeaseKeepAliveBatchResponse,
    LeaseRequest,
    LeaseResponse,
    WriteResponse,
)
from dengine.server.etcd.errors import LEADER_CHANGED, TIMED_OUT, TIMED_OUT_CONNECTION_LOST
from dengine.server.etcd.gate import FORWARDED_METADATA as FORWARDED
from dengine.server.etcd.gate import Metadata
from dengine.tls import ClientTls

log = logging.getLogger("dengine.server.etcd")
P = TypeVar("P")
R = TypeVar("R")

APPLIED_INDEX = "dengine-index"  # trailing metadata of the leader's answer: the log index
_MAX_CHANNELS = 8
# ForwardWrites in flight to one leader; the writes forwarded meanwhile wait and leave
# together in the next one.
_MAX_INFLIGHT = 4


def forwarded(context: Any) -> bool:
    """Whether this request came from a follower (never forwarded twice)."""
    return any(key == FORWARDED for key, _ in context.invocation_metadata() or ())


class Forwarder:
    """Channels to the leaders' client ports, by address; `call` sends one request."""

    def __init__(self, options: list[tuple[str, Any]],
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self._options = options
        self._credentials = credentials  # TLS to the leaders' client ports (None: plaintext)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._closing: set[asyncio.Future[None]] = set()

    async def call(
        self, address: str, method: str, request: bytes, timeout: float | None,
        identity: Metadata = (),
    ) -> tuple[bytes, int]:
        """The leader's answer to `request` at `method` (a full path such as
        "/etcdserverpb.KV/Put"), and the log index of the write (0: not said). An error
        of the leader is raised as it is (KvError); no answer: a timeout. `identity`:
        who the client is (`Gate.identity`: its token, or its certificate's user), sent
        on (the leader checks the request again)."""
        channel = self._channels.get(address)
        if channel is None:
            while len(self._channels) >= _MAX_CHANNELS:  # leaders of the past
                old = self._channels.pop(next(iter(self._channels)))
                self._closing.add(task := asyncio.ensure_future(old.close()))
                task.add_done_callback(self._closing.discard)
            channel = self._channels[address] = (
                grpc.aio.secure_channel(address, self._credentials, options=self._options)
                if self._credentials is not None
                else grpc.aio.insecure_channel(address, options=self._options))
        call = channel.unary_unary(method)
        try:
            invocation = call(request, timeout=timeout, metadata=((FORWARDED, "1"), *identity))
            response = await invocation
            trailing = await invocation.trailing_metadata()
        except grpc.aio.AioRpcError as e:
            raise _status_of(e) from None
        index = 0
        for key, value in trailing or ():
            if key == APPLIED_INDEX and isinstance(value, str) and value.isdigit():
                index = int(value)
        return bytes(response), index

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


def _status_of(e: grpc.aio.AioRpcError) -> KvError:
    code, details = e.code(), e.details() or ""
    if details.startswith("etcdserver: "):  # the leader's own answer
        return KvError(code.name, details)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return KvError("UNAVAILABLE", TIMED_OUT)
    if code == grpc.StatusCode.UNAVAILABLE:
        # Connection refused or lost: the write may or may not have reached the leader.
        log.debug("forwarding to the leader failed: %s", details)
        return KvError("UNAVAILABLE", TIMED_OUT_CONNECTION_LOST)
    if code == grpc.StatusCode.CANCELLED:
        return KvError("UNAVAILABLE", LEADER_CHANGED)
    return KvError(code.name, details)


class Forwarded(NamedTuple):
    """The leader's answer to one forwarded write: the etcd response message (encoded),
    its log index, and the leader's term when it answered (`Engine.learn_commit`)."""

    response: bytes
    log_index: int
    term: int


# (log index, the leader's term, timeout) -> a future done once this node applied the
# index (`Engine.learn_commit`, then `Engine.wait_applied`).
Applied = Callable[[int, int, float], "asyncio.Future[Any]"]


def applied_here(engine: Engine) -> Applied:
    """`KvForwarder`'s wait for the apply on `engine` of what the leader answered: its
    commit learnt at once (`Engine.learn_commit`), so that it applies without waiting
    for the leader's next append."""
    def applied(index: int, term: int, timeout: float) -> asyncio.Future[Any]:
        engine.learn_commit(index, term)
        return engine.wait_applied(index, timeout=timeout)
    return applied


# The etcd lease methods a follower forwards, by the field of the native LeaseRequest.
LEASE_FIELDS = {"LeaseGrant": "grant", "LeaseRevoke": "revoke",
                "LeaseTimeToLive": "time_to_live"}
_KEEPALIVE_BYTES = 11  # (an int64 in a packed repeated field: at most 10 bytes + 1)


class KvForwarder:
    """etcd KV writes and lease calls to the leader's native client port, batched per
    leader address (writes; keep-alives)."""

    def __init__(self, tls: ClientTls | None, max_batch_bytes: int,
                 applied: Applied | None = None) -> None:
        self._tls = tls  # TLS to the leaders' client ports (None: plaintext)
        self._max_batch_bytes = max_batch_bytes
        self._applied = applied
        self._router: Router | None = None
        self._batchers: dict[str, Batcher[bytes, Forwarded]] = {}
        self._keepalives: dict[str, Batcher[int, int]] = {}
        self._closing: set[asyncio.Future[None]] = set()

    def _router_for(self, address: str) -> Router:
        router = self._router
        if router is None:
            router = self._router = Router([address], "auto", tls=self._tls)
        return router

    async def lease(self, address: str, method: str, request: bytes, timeout: float
                    ) -> bytes:
        """The leader's answer (the encoded etcd response) to the etcd lease call `method`
        ("LeaseGrant", "LeaseRevoke", "LeaseTimeToLive"; `request` as the client sent
        it); the leader's error (KvError, NotLeader), or etcd's timeout."""
        payload = LeaseRequest(**{LEASE_FIELDS[method]: request})
        try:
            resp = await self._router_for(address).call_node(
                address, "Lease", payload, LeaseResponse, time.monotonic() + timeout,
                write=method != "LeaseTimeToLive")
        except DengineError as e:
            raise _unsent_or_lost(e) from None
        if resp.HasField("error"):
            raise error_from_wire(resp.error)
        return bytes(resp.response)

    async def keepalive(self, address: str, lease_id: int, timeout: float) -> int:
        """The leader's answer to a keep-alive of `lease_id`: the lease's TTL (0: unknown
        or expired); the keep-alives forwarded during one loop turn leave together."""
        return await self._submit(
            self._keepalives, address, self._send_keepalives, lease_id, _KEEPALIVE_BYTES,
            timeout)

    async def _send_keepalives(self, address: str, batch: list[Item[int, int]]) -> None:
        deadline = max(item.deadline for item in batch)
        try:
            resp = await self._router_for(address).call_node(
                address, "LeaseKeepAlive",
                LeaseKeepAliveBatchRequest(ids=[item.payload for item in batch]),
                LeaseKeepAliveBatchResponse, deadline)
        except DengineError as e:
            raise _unsent_or_lost(e) from None
        if resp.HasField("error"):
            raise error_from_wire(resp.error)
        if len(resp.ttls) != len(batch):
            raise KvError("UNKNOWN", f"dengine: the leader answered {len(resp.ttls)} TTLs "
                                     f"for {len(batch)} forwarded keep-alives")
        for item, ttl in zip(batch, resp.ttls, strict=True):
            if not item.future.done():
                item.future.set_result(int(ttl))

    def write(self, address: str, command: bytes, timeout: float) -> Awaitable[Forwarded]:
        """The leader's answer to `command` (a WriteCommand carrying an etcd request),
        given once this node applied it (with `applied`); the leader's error (KvError),
        or etcd's timeout when no answer came back. (`_submit`'s coroutine itself: one
        frame fewer to resume per write.)"""
        return self._submit(
            self._batchers, address, self._send, command, len(command), timeout)

    async def _submit(self, batchers: dict[str, Batcher[P, R]], address: str,
                      send: Callable[[str, list[Item[P, R]]], Awaitable[None]],
                      payload: P, size: int, timeout: float) -> R:
        """`payload`'s answer from the batch to `address` it leaves in (one batcher per
        leader address, the oldest closed past _MAX_CHANNELS), or etcd's timeout."""
        batcher = batchers.get(address)
        if batcher is None:
            while len(batchers) >= _MAX_CHANNELS:  # leaders of the past
                old = batchers.pop(next(iter(batchers)))
                self._closing.add(task := asyncio.ensure_future(old.close()))
                task.add_done_callback(self._closing.discard)
            batcher = batchers[address] = Batcher(
                lambda batch: send(address, batch), 1 << 16, self._max_batch_bytes,
                _MAX_INFLIGHT)
        item = batcher.submit(payload, size, time.monotonic() + timeout)
        timer = asyncio.get_running_loop().call_later(timeout, _expire, item.future)
        try:
            return await item.future
        except BaseException:
            batcher.abandon(item)
            raise
        finally:
            timer.cancel()

    async def _send(self, address: str, batch: list[Item[bytes, Forwarded]]) -> None:
        router = self._router_for(address)
        deadline = max(item.deadline for item in batch)
        payload = join_write_request([item.payload for item in batch])
        try:
            resp = await router.call_node(address, "ForwardWrite", payload, WriteResponse,
                                          deadline, write=True)
        except DengineError as e:
            raise _unsent_or_lost(e) from None
        if resp.HasField("error"):  # none of them was proposed, or none answered
            raise error_from_wire(resp.error)
        results = resp.results
        if len(results) != len(batch):
            raise KvError("UNKNOWN", f"dengine: the leader answered {len(results)} results "
                                     f"for {len(batch)} forwarded writes")
        term = resp.raft_term
        answers: list[tuple[asyncio.Future[Forwarded], Forwarded]] = []
        last = 0
        for item, result in zip(batch, results, strict=True):
            if item.future.done():
                continue
            if result.HasField("error"):
                item.future.set_exception(error_from_wire(result.error))
            else:
                answers.append((item.future, Forwarded(result.response, result.index, term)))
                last = max(last, result.index)
        if self._applied is None or not last:
            _answer(answers, None)
            return
        # One wait for the batch's last index rather than one per write.
        timeout = max(item.deadline for item in batch) - time.monotonic()
        try:
            done = self._applied(last, term, max(0.001, timeout))
        except Exception as e:  # stopped meanwhile
            done = asyncio.get_running_loop().create_future()
            done.set_exception(e)
        done.add_done_callback(lambda applied: _answer(answers, applied))

    async def close(self) -> None:
        batchers: list[Batcher[Any, Any]] = [*self._batchers.values(),
                                             *self._keepalives.values()]
        self._batchers, self._keepalives = {}, {}
        for batcher in batchers:
            await batcher.close()
        if self._router is not None:
            await self._router.close()


def _answer(answers: list[tuple[asyncio.Future[Forwarded], Forwarded]],
            applied: asyncio.Future[Any] | None) -> None:
    """Give each caller its answer, or the error of waiting for its apply here."""
    cancelled = applied is not None and applied.cancelled()
    error = applied.exception() if applied is not None and not cancelled else None
    for future, answer in answers:
        if future.done():
            continue
        if cancelled:
            future.cancel()
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(answer)


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(KvError("UNAVAILABLE", TIMED_OUT))


def _unsent_or_lost(e: DengineError) -> KvError:
    """etcd's error for a forwarded write that got no answer from the leader."""
    if isinstance(e, Timeout) and not isinstance(e, ConnectionLost):
        return KvError("UNAVAILABLE", TIMED_OUT)
    # Not sent, or the connection broke: as etcd says of a lost connection.
    log.debug("forwarding to the leader failed: %s", e.message)
    return KvError("UNAVAILABLE", TIMED_OUT_CONNECTION_LOST)

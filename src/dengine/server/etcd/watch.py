"""etcd's `etcdserverpb.Watch` service: one bidirectional stream, many watches, served
from this member's applied state (docs/etcd-model.md, "Watch").

etcd 3.4's behaviour, as clients see it (its v3rpc/watch.go):

- a create gets `created` (header.revision: the current revision) in request order; ids
  count from 0 per stream unless the client chose one (a duplicate is created+canceled,
  watch_id -1, as is an empty range: etcd's mvcc errors as cancel_reason);
- events in revision order, whole revisions per response (fragmented above
  max_request_bytes when the create asked for `fragment`), header.revision: the revision
  the watch is current to; prev_kv and the NOPUT/NODELETE filters;
- a start below the history: `created`, then `canceled` with `compact_revision`;
- a cancel of a watch of the stream: `canceled` (an unknown id: nothing);
- a progress request: watch_id -1, header.revision the revision every watch of the stream
  is current to; `progress_notify` watches get an empty response (their id) after
  `watch_progress_notify_interval_s` without one;
- `hasleader: true` metadata (etcdctl, clientv3's WithRequireLeader) and no leader: the
  stream ends with Unavailable "etcdserver: no leader" (at once, or once the member has
  had no leader for two checks an election timeout apart).

Each watch is a task that pulls from the node's WatchHub and writes through one queue
(one writer per stream, as grpc.aio needs); the queue is bounded, so a client that does
not read makes the watches wait (HTTP/2 flow control), never drop: a watch that falls
behind compaction is canceled with `compact_revision`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from dengine.config import NodeConfig
from dengine.errors import Compacted, KvError
from dengine.kv import watch as kvwatch
from dengine.node.engine import Engine
from dengine.proto.etcd import rpc_pb2
from dengine.server.etcd.errors import NO_LEADER, etcd_status
from dengine.server.etcd.kv import EtcdBase

log = logging.getLogger("dengine.server.etcd")

SERVICE = "etcdserverpb.Watch"
DUPLICATE_ID = "mvcc: duplicate watch ID provided on the WatchStream"
EMPTY_RANGE = "mvcc: watcher range is empty"
# etcd's cancel reason for a watch the user may not read (rpctypes.ErrGRPCPermissionDenied)
PERMISSION_DENIED = "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
_QUEUE = 64  # responses waiting for the stream's writer
_ENCODED_ENTRIES = 256  # batches whose events are kept encoded (watches sharing a batch)


class WatchService(EtcdBase):
    """Handlers of `etcdserverpb.Watch` over an Engine."""

    def __init__(self, engine: Engine, config: NodeConfig) -> None:
        super().__init__(engine, config)
        self.progress_interval = config.watch_progress_notify_interval_s
        self.streams = 0  # open streams (tests, operators)
        self._open: set[_Stream] = set()
        # (id of a batch's change list, prev_kv) -> (the list, its events encoded as
        # WatchResponse fields): the watches that share a hub batch encode it once.
        self._encoded: dict[tuple[int, bool], tuple[list[Any], bytes]] = {}

    def watches(self) -> int:
        """The watches of the open streams (the metrics')."""
        return sum(stream.watches() for stream in self._open)

    def encoded_events(self, changes: list[Any], prev_kv: bool) -> bytes:
        key = (id(changes), prev_kv)
        hit = self._encoded.get(key)
        if hit is not None and hit[0] is changes:
            return hit[1]
        resp = rpc_pb2.WatchResponse()
        kvwatch.add_events(resp.events, changes, prev_kv)
        data = resp.SerializeToString()
        if len(self._encoded) >= _ENCODED_ENTRIES:
            self._encoded.clear()
        self._encoded[key] = (changes, data)
        return data

    def generic_handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Watch": grpc.stream_stream_rpc_method_handler(
                self.watch, request_deserializer=None, response_serializer=None),
        })

    async def watch(self, requests: AsyncIterator[bytes], context: Any) -> None:
        require_leader = any(k == "hasleader" and v == "true"
                             for k, v in context.invocation_metadata() or ())
        if require_leader and not self._engine.leader_id:
            await context.abort(grpc.StatusCode.UNAVAILABLE, NO_LEADER)
        stream = _Stream(self, context)
        self.streams += 1
        self._open.add(stream)
        tasks = [asyncio.ensure_future(stream.read(requests))]
        if require_leader:
            tasks.append(asyncio.ensure_future(stream.monitor_leader()))
        try:
            await stream.write_loop()
        finally:
            self.streams -= 1
            self._open.discard(stream)
            stream.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


class _Watcher:
    __slots__ = ("cursor", "fragment", "id", "prev_kv", "progress_notify", "spec", "task")

    def __init__(self, watch_id: int, spec: kvwatch.WatchSpec, cursor: int,
                 req: rpc_pb2.WatchCreateRequest) -> None:
        self.id = watch_id
        self.spec = spec
        self.cursor = cursor
        self.prev_kv = req.prev_kv
        self.fragment = req.fragment
        self.progress_notify = req.progress_notify
        self.task: asyncio.Task[None] | None = None


class _Stream:
    """One Watch stream: its watches, its writer queue."""

    def __init__(self, service: WatchService, context: Any) -> None:
        self._service = service
        self._engine = service._engine
        self._context = context
        self._queue: asyncio.Queue[bytes | tuple[grpc.StatusCode, str]] = asyncio.Queue(_QUEUE)
        self._watchers: dict[int, _Watcher] = {}
        self._next_id = 0

    def watches(self) -> int:
        return len(self._watchers)

    def response(self, revision: int, **fields: Any) -> rpc_pb2.WatchResponse:
        resp = rpc_pb2.WatchResponse(**fields)
        self._service.stamp(resp.header, revision)
        return resp

    async def send(self, resp: rpc_pb2.WatchResponse, tail: bytes = b"") -> None:
        """Queue `resp` (and `tail`: more of its fields, encoded; protobuf merges
        concatenated messages)."""
        await self._queue.put(resp.SerializeToString() + tail)

    async def write_loop(self) -> None:
        context = self._context
        while True:
            item = await self._queue.get()
            if isinstance(item, tuple):
                await context.abort(*item)
            await context.write(item)

    def fail(self, code: grpc.StatusCode, message: str) -> None:
        """End the stream with an error (after what is queued)."""
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait((code, message))

    def stop(self) -> None:
        for watcher in self._watchers.values():
            if watcher.task is not None:
                watcher.task.cancel()
        self._watchers.clear()

    async def read(self, requests: AsyncIterator[bytes]) -> None:
        try:
            async for data in requests:
                try:
                    req = rpc_pb2.WatchRequest.FromString(data)
                except DecodeError as e:
                    self.fail(grpc.StatusCode.INVALID_ARGUMENT,
                              f"dengine: malformed WatchRequest: {e}")
                    return
                which = req.WhichOneof("request_union")
                if which == "create_request":
                    await self.create(req.create_request)
                elif which == "cancel_request":
                    await self.cancel(req.cancel_request.watch_id)
                elif which == "progress_request":
                    await self.progress()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the node stopped, ...
            code, message = self._status(exc)
            self.fail(code, message)
        # The client closed its side: etcd keeps sending events until the stream ends.

    def _status(self, exc: BaseException) -> tuple[grpc.StatusCode, str]:
        engine = self._engine
        return etcd_status(exc, leader_known=bool(engine.leader_id), running=engine.running)

    async def create(self, creq: rpc_pb2.WatchCreateRequest) -> None:
        hub = self._engine.watches
        current = hub.revision()
        rng = kvwatch.watch_range(creq.key, creq.range_end)
        watch_id = creq.watch_id
        error = ""
        try:
            await self._service.gate.range(self._context, creq.key, creq.range_end)
        except KvError:
            # etcd's isWatchPermitted: created and cancelled at once, etcd's reason
            await self.send(self.response(current, watch_id=creq.watch_id, created=True,
                                          canceled=True, cancel_reason=PERMISSION_DENIED))
            return
        if rng.empty:
            error = EMPTY_RANGE
        elif watch_id != 0 and watch_id in self._watchers:
            error = DUPLICATE_ID
        if error:
            await self.send(self.response(current, watch_id=-1, created=True, canceled=True,
                                          cancel_reason=error))
            return
        if watch_id == 0:  # etcd's AutoWatchID
            while self._next_id in self._watchers:
                self._next_id += 1
            watch_id = self._next_id
            self._next_id += 1
        filters = set(creq.filters)
        spec = kvwatch.WatchSpec(rng, creq.start_revision, creq.prev_kv,
                                 kvwatch.NOPUT in filters, kvwatch.NODELETE in filters,
                                 creq.progress_notify)
        cursor = creq.start_revision - 1 if creq.start_revision > 0 else current
        watcher = _Watcher(watch_id, spec, cursor, creq)
        self._watchers[watch_id] = watcher
        await self.send(self.response(current, watch_id=watch_id, created=True))
        watcher.task = asyncio.ensure_future(self.serve(watcher))

    async def cancel(self, watch_id: int) -> None:
        watcher = self._watchers.pop(watch_id, None)
        if watcher is None:
            return
        if watcher.task is not None:
            watcher.task.cancel()
        await self.send(self.response(self._engine.watches.revision(), watch_id=watch_id,
                                      canceled=True))

    async def progress(self) -> None:
        current = self._engine.watches.revision()
        revision = min((w.cursor for w in self._watchers.values()), default=current)
        await self.send(self.response(min(revision, current), watch_id=-1))

    async def serve(self, watcher: _Watcher) -> None:
        """One watch: pull, send, until canceled (see the module docstring)."""
        hub = self._engine.watches
        interval = self._service.progress_interval
        wait = interval if watcher.progress_notify and interval > 0 else 60.0
        try:
            while True:
                try:
                    batch = await hub.poll(watcher.cursor, watcher.spec, wait)
                except Compacted as e:
                    self._watchers.pop(watcher.id, None)
                    await self.send(self.response(
                        hub.revision(), watch_id=watcher.id, canceled=True,
                        compact_revision=e.compact_revision))
                    return
                watcher.cursor = batch.revision
                if batch.changes:
                    await self._send_events(watcher, batch)
                elif watcher.progress_notify and interval > 0:
                    await self.send(self.response(batch.revision, watch_id=watcher.id))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.fail(*self._status(exc))

    async def _send_events(self, watcher: _Watcher, batch: kvwatch.Batch) -> None:
        prev_kv = watcher.prev_kv
        limit = self._service._config.max_request_bytes
        changes = batch.changes
        if watcher.fragment and sum(kvwatch.event_size(c, prev_kv) for c in changes) > limit:
            # etcd's FragmentWatchResponse: as many events per response as fit (one at
            # least), `fragment` on all but the last.
            parts: list[list[Any]] = [[]]
            size = 0
            for change in changes:
                n = kvwatch.event_size(change, prev_kv)
                if parts[-1] and size + n > limit:
                    parts.append([])
                    size = 0
                parts[-1].append(change)
                size += n
            for i, part in enumerate(parts):
                resp = self.response(batch.revision, watch_id=watcher.id,
                                     fragment=i < len(parts) - 1)
                kvwatch.add_events(resp.events, part, prev_kv)
                await self.send(resp)
            return
        resp = self.response(batch.revision, watch_id=watcher.id)
        await self.send(resp, self._service.encoded_events(changes, prev_kv))

    async def monitor_leader(self) -> None:
        """etcd's monitorLeader: a stream that requires a leader ends when this member
        has had none for a while (two checks an election timeout apart)."""
        config = self._service._config
        period = max(0.1, config.election_timeout_ms / 1000.0)
        lost = 0
        while True:
            await asyncio.sleep(period)
            lost = lost + 1 if not self._engine.leader_id else 0
            if lost >= 2:
                self.fail(grpc.StatusCode.UNAVAILABLE, NO_LEADER)
                return

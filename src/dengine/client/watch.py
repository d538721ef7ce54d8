"""`Client.watch`: a watch that resumes by itself (docs/etcd-model.md, "Watch").

The watch is a cursor (the revision it is current to) and a loop of `WatchPoll` long
polls, each "the changes of my range above my cursor, waiting up to `POLL_WAIT_S`",
answered with whole revisions of events and the new cursor. The server keeps nothing
between polls, and every node holds the same history, so resuming after a lost
connection, a paused or killed node, or a node cut off from its leader (it answers
UNAVAILABLE: `require_leader`) is the next poll, with the same cursor, to another node:
no gap, no duplicate. Only `Compacted` (the history the cursor needs is gone), an
invalid request and etcd's auth errors (a range the user may not read) end the watch
with an error; everything else is retried, forever, with a
capped backoff (a cluster that is down holds the iterator until it is back).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque

from dengine.api import WatchEvent, WatchStream
from dengine.client.routing import Router, error_from_wire
from dengine.errors import Compacted, DengineError, InvalidRequest, KvError, Unavailable
from dengine.kv.watch import WatchSpec, event_from_pb
from dengine.proto.client_pb2 import WatchPollRequest, WatchPollResponse

log = logging.getLogger("dengine.client")

POLL_WAIT_S = 10.0  # a poll waits this long for a change, then answers with its cursor
_POLL_SLACK_S = 5.0  # ... and gets this much longer before the client gives up on it
_BACKOFF_FIRST_S = 0.05
_BACKOFF_MAX_S = 1.0


class RemoteWatch(WatchStream):
    """The async iterator `Client.watch` returns (see the module docstring)."""

    def __init__(self, router: Router, spec: WatchSpec, *, closed: asyncio.Event,
                 poll_wait: float = POLL_WAIT_S) -> None:
        self._router = router
        self._spec = spec
        self._client_closed = closed
        self._poll_wait = poll_wait
        self._after: int | None = spec.start_revision - 1 if spec.start_revision else None
        self.revision = max(0, spec.start_revision - 1)
        self._batch_revision = self.revision
        self._buffer: deque[WatchEvent] = deque()
        self._closed = False
        self._addr: str | None = None
        self._poll: asyncio.Task[WatchPollResponse] | None = None
        self.resumed = 0  # polls that moved to another node after a failure (tests)

    def __aiter__(self) -> RemoteWatch:
        return self

    async def __anext__(self) -> WatchEvent:
        while not self._buffer:
            if self._closed or self._client_closed.is_set():
                raise StopAsyncIteration
            self._poll = asyncio.ensure_future(self._next_batch())
            try:
                resp = await self._poll
            except asyncio.CancelledError:
                if self._closed:  # close() while waiting
                    raise StopAsyncIteration from None
                raise
            except Unavailable:
                if self._client_closed.is_set():  # the client closed while waiting
                    raise StopAsyncIteration from None
                raise
            finally:
                self._poll = None
            self._after = self._batch_revision = resp.revision
            self._buffer.extend(event_from_pb(e) for e in resp.events)
            if not self._buffer:
                self.revision = resp.revision
        event = self._buffer.popleft()
        buffer = self._buffer
        if not buffer:
            self.revision = self._batch_revision
        else:
            self.revision = event.revision - (buffer[0].revision == event.revision)
        return event

    async def close(self) -> None:
        self._closed = True
        self._buffer.clear()
        if self._poll is not None:
            self._poll.cancel()

    async def _next_batch(self) -> WatchPollResponse:
        spec = self._spec
        rng = spec.range
        router = self._router
        delay = _BACKOFF_FIRST_S
        while True:
            if self._client_closed.is_set():
                raise Unavailable("client closed")
            addr = self._addr or router.pick()
            request = WatchPollRequest(
                key=rng.key, range_end=rng.range_end,
                after_revision=-1 if self._after is None else self._after,
                prev_kv=spec.prev_kv, noput=spec.noput, nodelete=spec.nodelete,
                wait_ms=int(self._poll_wait * 1000), require_leader=True)
            deadline = time.monotonic() + self._poll_wait + _POLL_SLACK_S
            error: DengineError
            try:
                resp = await router.call_node(addr, "WatchPoll", request, WatchPollResponse,
                                              deadline)
            except DengineError as e:
                error = e
            else:
                if not resp.HasField("error"):
                    self._addr = addr
                    return resp
                error = error_from_wire(resp.error)
                if isinstance(error, Compacted):
                    error.compact_revision = resp.compact_revision
                    raise error
                if isinstance(error, InvalidRequest):
                    raise error
            if isinstance(error, KvError) and error.grpc_code != "UNAVAILABLE":
                raise error  # etcd's auth errors: permission denied, authentication failed
            # Lost, paused, cut off, stopping: the next poll goes to another node.
            log.debug("watch poll on %s failed (%s); resuming from revision %s elsewhere",
                      addr, error.message, self._after)
            self._addr = router.next_endpoint(addr)
            self.resumed += 1
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(2 * delay, _BACKOFF_MAX_S)

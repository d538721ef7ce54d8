"""Watches served from a node's applied state (docs/etcd-model.md, "Watch").

The node calls `WatchHub.applied()` after every applied chunk and installed snapshot
(on the loop). A watch never receives pushed events: it holds a cursor (the revision it
is current to) and *pulls* the changes above it from the store's changelog
(`kv.watch.collect`, under the state machine's lock, in bounded batches of whole
revisions); with nothing new it waits for the next `applied()`. So a slow consumer only
falls behind (its cursor stays where it is, nothing is queued for it), never loses an
event, and is cancelled with `Compacted` only if compaction passes its cursor. The pull
and the registration of its wake-up run in one step of the loop, so an apply between
them cannot be missed.

`LocalWatch` is the embedded `Engine.watch`: an async iterator over the hub of its node.
The servers (etcd's Watch stream, the native WatchPoll) use `poll`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any

from dengine.api import WatchEvent, WatchStream
from dengine.kv.watch import MAX_EVENTS, Batch, WatchSpec, collect, watch_event

# A local watch with nothing to deliver re-checks the node this often (a stopped node
# wakes it at once; this only bounds the wait of one poll).
_IDLE_POLL_S = 60.0
# Batches kept between two applies for watches at the same cursor with the same range
# and filters (1,000 watchers of one prefix pull once per apply, not 1,000 times).
_CACHE_ENTRIES = 1024


class WatchHub:
    """The wake-ups of one node's watches: see the module docstring."""

    def __init__(self, read: Callable[[Callable[[Any], Any]], Any]) -> None:
        self._read = read  # fn(store) on the applied state, under the state machine's lock
        self._waiters: list[asyncio.Future[None]] = []
        self._closed: BaseException | None = None
        # (after, range, noput, nodelete, max_events) -> its batch, until the next apply.
        # A batch computed before an apply that ran on the apply thread (its applied()
        # still to come) is a true prefix of the history: still right to hand out.
        self._cache: dict[tuple[Any, ...], Batch] = {}
        self.pulls = 0  # batches read from the store (tests, benchmarks)

    def applied(self) -> None:
        """Loop: the store changed (an applied chunk, an installed snapshot)."""
        if self._cache:
            self._cache.clear()
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def close(self, error: BaseException) -> None:
        """The node stopped serving: every waiting watch gets `error`."""
        self._closed = error
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_exception(error)
                fut.exception()  # (seen: a watch that went away meanwhile is fine)

    def revision(self) -> int:
        """The store's revision on this node now."""
        return int(self._read(_revision))

    def pull(self, after: int, spec: WatchSpec, max_events: int = MAX_EVENTS) -> Batch:
        """The next batch above `after` (`kv.watch.collect`); Compacted, Unavailable."""
        rng, noput, nodelete = spec.range, spec.noput, spec.nodelete
        key = (after, rng, noput, nodelete, max_events)
        batch = self._cache.get(key)
        if batch is None:
            self.pulls += 1
            batch = self._read(lambda store: collect(store, after, rng, noput=noput,
                                                     nodelete=nodelete,
                                                     max_events=max_events))
            if len(self._cache) >= _CACHE_ENTRIES:
                self._cache.clear()
            self._cache[key] = batch
        return batch

    def changed(self) -> asyncio.Future[None]:
        """A future done at the next `applied()` (failed when the node stops)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._closed is not None:
            fut.set_exception(self._closed)
        else:
            self._waiters.append(fut)
        return fut

    def forget(self, fut: asyncio.Future[None]) -> None:
        """A waiter given up before its wake-up."""
        if not fut.done():
            fut.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)

    async def poll(self, after: int, spec: WatchSpec, timeout: float, *,
                   max_events: int = MAX_EVENTS,
                   wake: asyncio.Future[Any] | None = None) -> Batch:
        """The next batch with events above `after`, waiting up to `timeout` s for one
        (then an empty batch: its revision is how far the watch is current). `wake`:
        return early (empty) once it is done."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            batch = self.pull(after, spec, max_events)
            if batch.changes:
                return batch
            after = batch.revision
            remaining = deadline - loop.time()
            if remaining <= 0 or (wake is not None and wake.done()):
                return batch
            fut = self.changed()  # (same loop step as the pull: no apply missed)
            waits: list[asyncio.Future[Any]] = [fut] if wake is None else [fut, wake]
            try:
                await asyncio.wait(waits, timeout=remaining,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                self.forget(fut)
            if fut.done() and not fut.cancelled() and fut.exception() is not None:
                raise fut.exception()  # type: ignore[misc]


def _revision(store: Any) -> int:
    return int(store.revision)


class LocalWatch(WatchStream):
    """`Engine.watch`: the events of this node's applied state (see the module docstring).
    Raises Compacted (a start below the history, or a consumer that fell behind
    compaction) and Unavailable (the node stopped)."""

    def __init__(self, hub: WatchHub, spec: WatchSpec) -> None:
        self._hub = hub
        self._spec = spec
        self._after: int | None = spec.start_revision - 1 if spec.start_revision else None
        self.revision = max(0, spec.start_revision - 1)
        self._batch_revision = self.revision
        self._buffer: deque[WatchEvent] = deque()
        self._closed = False
        self._wake: asyncio.Future[None] | None = None

    def __aiter__(self) -> LocalWatch:
        return self

    async def __anext__(self) -> WatchEvent:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            hub = self._hub
            if self._after is None:
                self._after = self.revision = self._batch_revision = hub.revision()
            if self._wake is None:
                self._wake = asyncio.get_running_loop().create_future()
            batch = await hub.poll(self._after, self._spec, _IDLE_POLL_S, wake=self._wake)
            self._after = self._batch_revision = batch.revision
            prev_kv = self._spec.prev_kv
            self._buffer.extend(watch_event(c, prev_kv) for c in batch.changes)
            if not self._buffer:
                self.revision = batch.revision
        event = self._buffer.popleft()
        buffer = self._buffer
        if not buffer:
            self.revision = self._batch_revision
        else:  # (the rest of this revision's events still to come: not current to it)
            self.revision = event.revision - (buffer[0].revision == event.revision)
        return event

    async def close(self) -> None:
        self._closed = True
        self._buffer.clear()
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)


__all__ = ["LocalWatch", "WatchHub"]

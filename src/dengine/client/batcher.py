"""The client's request batcher: concurrent calls become one request, a few at a time.

Everything submitted during one loop turn joins the same batch; at most `max_inflight`
batches are outstanding, and while they are, new submissions wait and then leave together
(bounded by `max_items` and `max_bytes`). A submission whose caller gave up before its
batch left is dropped; a batch whose callers have all given up (`abandon`) is cancelled,
which frees its slot at once instead of at its deadline (a write it carried may still be
applied: its callers were told nothing else).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from dengine.errors import Unavailable

T = TypeVar("T")
P = TypeVar("P")


class _Batch:
    """A batch in flight: its task, and how many of its callers still wait for it."""

    __slots__ = ("task", "waiting")

    def __init__(self, waiting: int) -> None:
        self.waiting = waiting
        self.task: asyncio.Task[None] | None = None


@dataclass
class Item(Generic[P, T]):
    payload: P
    size: int
    deadline: float
    future: asyncio.Future[T]
    batch: _Batch | None = None  # set when it leaves


class Batcher(Generic[P, T]):
    """Coalesces concurrent submissions into batches, at most `max_inflight` at a time."""

    def __init__(
        self,
        send: Callable[[list[Item[P, T]]], Awaitable[None]],
        max_items: int,
        max_bytes: int,
        max_inflight: int,
    ) -> None:
        self._send = send
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._max_inflight = max_inflight
        self._pending: deque[Item[P, T]] = deque()
        self._inflight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, payload: P, size: int, deadline: float) -> Item[P, T]:
        """Queue `payload`; its outcome arrives on the item's `future`."""
        loop = asyncio.get_running_loop()
        item = Item(payload, size, deadline, loop.create_future())
        self._pending.append(item)
        if not self._scheduled:
            # Everything submitted during this loop turn joins the same batch.
            self._scheduled = True
            loop.call_soon(self._flush)
        return item

    def abandon(self, item: Item[P, T]) -> None:
        """`item`'s caller gave up (cancelled, or its own deadline). Not sent yet: it never
        will be (its future is done). In flight: the batch is cancelled once none of its
        callers waits any more."""
        batch, item.batch = item.batch, None
        if batch is None:
            return
        batch.waiting -= 1
        if batch.waiting == 0 and batch.task is not None:
            batch.task.cancel()

    def _flush(self) -> None:
        self._scheduled = False
        pending = self._pending
        while pending and self._inflight < self._max_inflight:
            batch: list[Item[P, T]] = []
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
            sent = _Batch(len(batch))
            for item in batch:
                item.batch = sent
            task = asyncio.get_running_loop().create_task(self._run(batch))
            sent.task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[Item[P, T]]) -> None:
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


async def each_alone(
    send: Callable[[list[Item[P, T]]], Awaitable[None]], batch: list[Item[P, T]]
) -> None:
    """Send every item of `batch` in its own RPC, concurrently; each gets its own outcome."""

    async def one(item: Item[P, T]) -> None:
        try:
            await send([item])
        except Exception as e:
            if not item.future.done():
                item.future.set_exception(e)

    await asyncio.gather(*(one(item) for item in batch))


"""A deterministic asyncio event loop on a virtual clock, stepped one callback at a time.

Each simulated node runs on its own `SimLoop`. The world (`dengine.sim.nodesim.world`)
owns the one virtual clock (`Clock`, seconds) and decides which loop runs next and when
time moves, so that a run is a function of its seed: no selector, no real time, no
threads.

* `time()` is the virtual clock; `call_later`/`asyncio.sleep`/timeouts use it.
* The world runs one ready callback at a time (`run_one`) and moves due timers to the
  ready queue (`release_due`); a loop that is never stepped again (its node was killed or
  lost power) simply stops, with nothing left running anywhere.
* `run_in_executor` models worker threads: each executor (the node's log, apply and
  snapshot threads, and `asyncio.to_thread`'s default one) is a FIFO "virtual thread"
  whose jobs run one after the other, each `latency()` seconds after it could start,
  inline on this loop at that virtual instant. The loop keeps running other callbacks
  meanwhile, as the real loop does while a thread writes.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any


class Clock:
    """The world's virtual time, in seconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now


class _NoSelector:
    """Stands where BaseEventLoop expects a selector; never used by the stepping."""

    def select(self, timeout: float | None = None) -> list[Any]:
        return []

    def close(self) -> None:
        pass


class _VirtualThread:
    __slots__ = ("busy", "jobs")

    def __init__(self) -> None:
        self.jobs: deque[tuple[asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]]] = (
            deque()
        )
        self.busy = False


class SimLoop(asyncio.BaseEventLoop):
    """An event loop whose time is `clock` and whose threads are virtual (module doc)."""

    def __init__(self, clock: Clock, latency: Callable[[], float]) -> None:
        super().__init__()
        self._clock = clock
        self._latency = latency
        self._selector = _NoSelector()
        self._threads: dict[int, _VirtualThread] = {}
        self.jobs_run = 0

    # -- what BaseEventLoop needs of a concrete loop ------------------------------------

    def time(self) -> float:
        return self._clock.now

    def _process_events(self, event_list: Any) -> None:
        pass

    def _write_to_self(self) -> None:
        pass

    def close(self) -> None:
        self._ready.clear()  # type: ignore[attr-defined]
        self._scheduled.clear()  # type: ignore[attr-defined]
        super().close()

    # -- stepping (called by the world) --------------------------------------------------

    def has_ready(self) -> bool:
        return bool(self._ready)  # type: ignore[attr-defined]

    def next_timer(self) -> float | None:
        """When the earliest live timer fires (None: no timer)."""
        scheduled = self._scheduled  # type: ignore[attr-defined]
        while scheduled and scheduled[0]._cancelled:
            handle = heapq.heappop(scheduled)
            handle._scheduled = False
            self._timer_cancelled_count -= 1  # type: ignore[attr-defined]
        return scheduled[0]._when if scheduled else None

    def release_due(self) -> None:
        """Move the timers due at the current virtual time to the ready queue."""
        scheduled = self._scheduled  # type: ignore[attr-defined]
        now = self._clock.now
        while scheduled and scheduled[0]._when <= now:
            handle = heapq.heappop(scheduled)
            if handle._cancelled:
                self._timer_cancelled_count -= 1  # type: ignore[attr-defined]
            handle._scheduled = False
            if not handle._cancelled:
                self._ready.append(handle)  # type: ignore[attr-defined]

    def run_one(self) -> None:
        """Run the oldest ready callback, as this thread's running loop."""
        handle = self._ready.popleft()  # type: ignore[attr-defined]
        if handle._cancelled:
            return
        asyncio.events._set_running_loop(self)
        try:
            handle._run()
        finally:
            asyncio.events._set_running_loop(None)

    # -- virtual threads -----------------------------------------------------------------

    def run_in_executor(  # type: ignore[override]
        self, executor: Executor | None, func: Callable[..., Any], *args: Any
    ) -> asyncio.Future[Any]:
        self._check_closed()  # type: ignore[attr-defined]
        future: asyncio.Future[Any] = self.create_future()
        thread = self._threads.setdefault(id(executor), _VirtualThread())
        thread.jobs.append((future, func, args))
        if not thread.busy:
            thread.busy = True
            self.call_later(self._latency(), self._run_job, thread)
        return future

    def _run_job(self, thread: _VirtualThread) -> None:
        future, func, args = thread.jobs.popleft()
        self.jobs_run += 1
        try:
            result = func(*args)
        except BaseException as e:
            if not future.cancelled():
                future.set_exception(e)
        else:
            if not future.cancelled():
                future.set_result(result)
        if thread.jobs:
            self.call_later(self._latency(), self._run_job, thread)
        else:
            thread.busy = False

    def set_default_executor(self, executor: Any) -> None:
        pass

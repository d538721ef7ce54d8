"""Client requests the node holds until they complete, and their deadlines.

A `Write` is a batch of commands proposed together; it resolves once every one is
applied (`Pending.resolve`). A `Read` waits in the read path (`dengine.node.reads`).
Deadlines are counted in loop ticks (`Pending.due`) and checked every
`EXPIRY_SCAN_TICKS` ticks by a scan of what is still pending: a timer wheel would keep
every finished request alive until its deadline (~timeout x throughput futures for the
garbage collector to walk).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from dengine.errors import Timeout, Unavailable
from dengine.proto import Entry
from dengine.storage import ApplyResult

EXPIRY_SCAN_TICKS = 5
# A deposed leader's uncommitted write waits this share of its timeout (at least an
# election timeout) for a leader to settle it before it fails with LeadershipLost.
LOST_GRACE_SHARE = 0.25


def _first(item: tuple[int, int, Write]) -> int:
    return item[0]


class Write:
    """A batch of commands proposed together; resolves once every one is applied."""

    __slots__ = ("due", "future", "remaining", "results", "timeout")

    def __init__(
        self, future: asyncio.Future[list[ApplyResult]], size: int, timeout: float, due: int
    ) -> None:
        self.future = future
        self.results: list[Any] = [None] * size
        self.remaining = size
        self.timeout = timeout
        self.due = due  # the tick after which it fails with Timeout


class Read:
    """A read answered once the state machine reaches its read index: the values of
    `keys`, or (with a `query`) what `query(store)` returns (`StateMachine.read`)."""

    __slots__ = ("due", "future", "keys", "query", "timeout")

    def __init__(
        self,
        keys: Sequence[bytes],
        future: asyncio.Future[Any],
        timeout: float,
        due: int,
        query: Callable[[Any], Any] | None = None,
    ) -> None:
        self.keys = keys
        self.future = future
        self.timeout = timeout
        self.due = due
        self.query = query


def expire_write(write: Write, now: int) -> bool:
    """Fail `write` if its deadline passed; whether it did now."""
    if write.due <= now and not write.future.done():
        write.future.set_exception(Timeout(
            f"write did not complete within {write.timeout}s; it may still be applied"
        ))
        return True
    return False


def expire_read(r: Read, now: int) -> None:
    if r.due <= now and not r.future.done():
        r.future.set_exception(Timeout(f"read did not complete within {r.timeout}s"))


class Pending:
    """The tick clock of deadlines, and the proposed writes waiting for their apply.

    `waiters` maps a log index to (term proposed at, write, slot in the write): when the
    entry at that index is applied, the write's slot gets its result if the entry is the
    one proposed (same term), else the write fails with Unavailable (a definite failure:
    another leader's entry took the index).
    """

    def __init__(self, tick_s: float) -> None:
        self.ticks = 0  # loop ticks since start
        self.waiters: dict[int, tuple[int, Write, int]] = {}
        self._tick_s = tick_s
        self._timeout_ticks: dict[float, int] = {}
        self._next_scan = 0
        # a lost leadership's uncommitted writes: (tick their grace ends, index, write)
        self.lost: list[tuple[int, int, Write]] = []
        self._lost_error: Exception = Exception()
        self.failed = 0  # proposed writes that failed (the metrics')

    def due(self, timeout: float) -> int:
        """The tick after which a request made now with `timeout` fails (no timer per call)."""
        ticks = self._timeout_ticks.get(timeout)
        if ticks is None:
            if len(self._timeout_ticks) > 64:
                self._timeout_ticks.clear()
            ticks = self._timeout_ticks[timeout] = max(1, math.ceil(timeout / self._tick_s))
        return self.ticks + ticks

    def register(
        self, proposals: list[tuple[list[bytes], Write]], term: int, index: int
    ) -> None:
        """`proposals` were appended from `index` on, in order, at `term`."""
        waiters = self.waiters
        for cmds, write in proposals:
            if len(cmds) == 1:  # a single put or delete: most writes
                waiters[index] = (term, write, 0)
                index += 1
                continue
            for slot in range(len(cmds)):
                waiters[index] = (term, write, slot)
                index += 1

    def resolve(self, entries: list[Entry], results: Sequence[ApplyResult]) -> None:
        """An applied chunk: fill the results of the writes it holds."""
        waiters = self.waiters
        if not waiters:
            return
        terms = {e.index: e.term for e in entries} if len(entries) != len(results) else None
        for i, result in enumerate(results):
            waiter = waiters.pop(result.index, None)
            if waiter is None:
                continue
            term, write, slot = waiter
            entry_term = entries[i].term if terms is None else terms[result.index]
            if write.future.done():
                continue
            if entry_term != term:
                write.future.set_exception(Unavailable("leadership changed; write not applied"))
                self.failed += 1
                continue
            write.results[slot] = result
            write.remaining -= 1
            if write.remaining == 0:
                write.future.set_result(write.results)

    def scan_due(self) -> bool:
        """Whether an expiry scan is due at this tick (one every EXPIRY_SCAN_TICKS)."""
        if self.ticks < self._next_scan:
            return False
        self._next_scan = self.ticks + EXPIRY_SCAN_TICKS
        return True

    def expire(
        self, queued: Iterable[tuple[list[bytes], Write]], reads: Iterable[list[Read]]
    ) -> None:
        """Fail the writes (waiting for apply, or `queued`) and the `reads` not started
        yet whose deadline has passed."""
        now = self.ticks
        for _, write in queued:
            expire_write(write, now)
        for _, write, _ in self.waiters.values():
            self.failed += expire_write(write, now)
        for batch in reads:
            for r in batch:
                expire_read(r, now)

    def fail_all(
        self, queued: Iterable[tuple[list[bytes], Write]], reads: Iterable[list[Read]],
        why: str,
    ) -> None:
        """Fail `queued` writes and `reads` (never proposed or asked: Unavailable(why)) and
        the writes waiting for their apply (Timeout: their outcome is unknown)."""
        for _, write in queued:
            if not write.future.done():
                write.future.set_exception(Unavailable(why))
        for batch in reads:
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(Unavailable(why))
        self.fail(Timeout(f"{why} before the write's outcome was known"))

    def leadership_lost(self, commit: int, error: Exception, min_grace_ticks: int) -> None:
        """This node stopped leading: its writes past `commit` fail with `error` unless a
        leader settles them first -- its commit reaching this node gives them their
        result, its overwrite a definite Unavailable (`resolve`) -- within a grace of
        LOST_GRACE_SHARE of each write's timeout, at least `min_grace_ticks`. A caller
        that gave a long timeout would rather wait for a definite outcome (e.g. after a
        spurious check-quorum step-down this node is often elected again); a short one
        would rather learn of the unknown outcome early."""
        now, tick_s = self.ticks, self._tick_s
        lost = []
        for index, (_, write, _) in self.waiters.items():
            if index > commit:
                grace = max(min_grace_ticks, math.ceil(write.timeout * LOST_GRACE_SHARE / tick_s))
                lost.append((now + grace, index, write))
        lost.sort(key=_first)
        self.lost = lost
        self._lost_error = error

    def leading(self) -> None:
        """Leading again: our old entries commit with the new term's first one."""
        self.lost = []

    def check_lost(self, commit: int) -> None:
        """Fail the unsettled writes of a lost leadership whose grace has run out."""
        lost, now, waiters = self.lost, self.ticks, self.waiters
        n = 0
        while n < len(lost) and lost[n][0] <= now:
            _, index, write = lost[n]
            n += 1
            if index > commit and not write.future.done():
                write.future.set_exception(self._lost_error)
                self.failed += 1
            waiter = waiters.get(index)
            if waiter is not None and waiter[1] is write and write.future.done():
                del waiters[index]
        del lost[:n]

    def fail(self, error: Exception) -> None:
        """Fail every write waiting for its apply (its outcome is unknown)."""
        for _, write, _ in self.waiters.values():
            if not write.future.done():
                write.future.set_exception(error)
                self.failed += 1
        self.waiters.clear()

"""The apply pipeline: committed entries into the state machine, in commit order.

A chunk of committed entries is applied on the loop itself when the apply thread is
idle and the chunk small (`INLINE_MAX_ENTRIES`, `INLINE_MAX_BYTES`), else queued on the
apply thread (one thread, FIFO), which runs it beside the next turns' persists. Either
way its completion, on the loop, calls `on_applied(entries, results)`; a failed apply
calls `on_error`. The loop waits for the oldest queued chunk once more than
`MAX_APPLIES_QUEUED` wait (`queued`), so the apply never falls unboundedly behind.

The apply thread also runs whatever must not race an apply: a snapshot's capture and
install, the state machine's periodic sync (`run`).
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dengine.node.logthread import PERSIST_INLINE_MAX_BYTES, commands_in
from dengine.proto import Entry
from dengine.storage import ApplyResult
from dengine.storage.state_machine import StateMachine

# Applies queued on the apply thread before the loop waits for the oldest one: the apply
# runs beside the next turns' persists, but never falls unboundedly behind the log.
MAX_APPLIES_QUEUED = 4
# A committed chunk up to this size is applied on the loop itself (a Ready is persisted
# there up to logthread.PERSIST_INLINE_MAX_BYTES). A round trip through a worker thread
# (wake it, hand the GIL over and back, wake the loop) costs 100-300 us here, more than
# one fdatasync or a small apply, and under load the worker waits for the GIL the busy
# loop holds; the loop blocks for at most a few ms. Measured: put p50 at 1 in flight
# 1.56 -> 0.8 ms, embedded puts at 256 in flight ~1.2x (docs/performance.md). Bigger ones
# (large values) go to the log thread and the apply thread, so that the loop keeps
# receiving while they work.
INLINE_MAX_ENTRIES = 1024
INLINE_MAX_BYTES = 1024 * 1024
# Bytes an entry adds to its command in a log record (index, term, tags, lengths).
ENTRY_OVERHEAD = 16


def _nothing() -> None:
    """A no-op job: waits for the jobs queued before it on a single-thread executor."""


def measure(entries: Sequence[Entry]) -> int:
    """The bytes of `entries`' commands, measured (~0.4 µs per entry)."""
    return sum(len(e.payload.command) for e in entries) + ENTRY_OVERHEAD * len(entries)


class EntrySizes:
    """Upper bounds of the size of persisted, not yet applied entries, by index run.

    The node decides per batch whether to persist and apply on the loop or on a thread
    (see INLINE_MAX_ENTRIES); measuring each entry for that cost ~0.4 µs per entry and
    step, ~5% of a leader's time at 256 writes in flight. The sizes are known as the
    entries come in (proposed commands, the append message), so they are kept here.
    """

    def __init__(self) -> None:
        self._runs: deque[tuple[int, int, int]] = deque()  # (first, last, bytes), ascending

    def add(self, first: int, last: int, size: int) -> None:
        """Entries first..last were persisted; they replace any from `first` on."""
        runs = self._runs
        while runs and runs[-1][1] >= first:
            run_first, _, run_size = runs.pop()
            if run_first < first:  # partly replaced: its size still bounds the rest
                runs.append((run_first, first - 1, run_size))
                break
        runs.append((first, last, size))

    def size(self, first: int, last: int) -> int | None:
        """An upper bound of the bytes of entries first..last; None if not all are known."""
        total = 0
        covered = first
        for run_first, run_last, run_size in self._runs:
            if run_last < first:
                continue
            if run_first > covered:
                return None
            total += run_size
            covered = run_last + 1
            if covered > last:
                return total
        return None

    def forget_to(self, index: int) -> None:
        """Entries up to `index` are applied."""
        runs = self._runs
        while runs and runs[0][1] <= index:
            runs.popleft()


class ApplyPipeline:
    """Owns the apply thread and the order of applies; see the module docstring."""

    def __init__(
        self,
        node_id: int,
        loop: asyncio.AbstractEventLoop,
        sm: StateMachine,
        on_applied: Callable[[list[Entry], Sequence[ApplyResult]], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        self._loop = loop
        self._sm = sm
        self._on_applied = on_applied
        self._on_error = on_error
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"dengine-apply-{node_id}"
        )
        # chunks queued on the apply thread, oldest first (the loop waits for queued[0]
        # while more than MAX_APPLIES_QUEUED wait)
        self.queued: deque[asyncio.Future[Sequence[ApplyResult]]] = deque()
        self._jobs = 0  # queued or running on the apply thread
        self.sizes = EntrySizes()

    def note_sizes(self, entries: list[Entry], incoming_bytes: int) -> bool:
        """Record the size of a Ready's entries; whether they are small (see INLINE_MAX_ENTRIES).

        `incoming_bytes` counted as they came in is exact for a leader's proposals and an
        upper bound for a follower's appends; entries the count missed (a new leader's
        no-op, a membership entry) are tiny, and a batch of them falls back to measuring.
        """
        size = incoming_bytes or measure(entries)
        self.sizes.add(entries[0].index, entries[-1].index, size)
        return len(entries) <= INLINE_MAX_ENTRIES and size <= PERSIST_INLINE_MAX_BYTES

    def run(self, fn: Any, *args: Any) -> asyncio.Future[Any]:
        """Run `fn` on the apply thread (after every job queued before it)."""
        self._jobs += 1
        job = self._loop.run_in_executor(self._executor, fn, *args)
        job.add_done_callback(self._job_done)
        return job

    def _job_done(self, job: asyncio.Future[Any]) -> None:
        self._jobs -= 1

    def start(self, entries: list[Entry]) -> None:
        """Apply `entries` after every chunk queued before them: on the loop when the apply
        thread is idle and the chunk small, else queued on the apply thread."""
        first, last = entries[0].index, entries[-1].index
        sizes = self.sizes
        size = sizes.size(first, last)
        sizes.forget_to(last)
        if (
            not self._jobs
            and commands_in(entries) <= INLINE_MAX_ENTRIES
            and (size if size is not None else measure(entries)) <= INLINE_MAX_BYTES
            and self._sm.checkpoint_headroom() > 2 * INLINE_MAX_BYTES
        ):
            self._on_applied(entries, self._apply(entries))
            return
        job = self.run(self._apply, entries)
        self.queued.append(job)
        job.add_done_callback(functools.partial(self._done, entries))

    def _apply(self, entries: list[Entry]) -> Sequence[ApplyResult]:
        return self._sm.apply_chunk(entries)

    def _done(self, entries: list[Entry], job: asyncio.Future[Sequence[ApplyResult]]) -> None:
        """Loop: a chunk is applied (completions come in queue order)."""
        if self.queued and self.queued[0] is job:
            self.queued.popleft()
        if job.cancelled():
            return
        error = job.exception()
        if error is not None:
            self._on_error(error)
            return
        self._on_applied(entries, job.result())

    def sync(self, applied: int) -> None:
        """fdatasync the state machine's WAL on the apply thread, off the reply path."""
        sm = self._sm
        if sm.durable_index() >= applied:
            return
        job = self.run(sm.sync)
        # A failed sync marks the state machine failed: the next apply stops the node.
        job.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def close(self) -> None:
        """Let a running apply finish; stop the thread."""
        try:
            await self._loop.run_in_executor(self._executor, _nothing)
        finally:
            self._executor.shutdown(wait=True)

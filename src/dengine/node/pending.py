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
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal, overload

from dengine.errors import Timeout, Unavailable
from dengine.kv.codec import batchable, encode_batch
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


Slots = list[tuple["Write", int]]  # the (write, slot) of each command of a batch entry


def batch_entries(
    proposals: list[tuple[list[bytes], Write]], commands: list[bytes], max_bytes: int
) -> tuple[list[bytes], list[Slots] | None]:
    """The entries one turn proposes for `proposals` (whose `commands` these are), in
    order, and each entry's (write, slot)s: each run of consecutive key-value writes
    (`kv.codec.batchable`) one batch entry (`encode_batch`) of at most BATCH_MAX_COMMANDS
    commands and `max_bytes` (within the peer message bound: it always fits an append),
    any other command an entry of its own (a run of one too). One entry's per-entry
    work (core, log, transport, apply dispatch) instead of one per write. A single
    command is its own entry (slots None: `register`)."""
    if len(commands) == 1:
        return commands, None
    entries: list[bytes] = []
    slots: list[Slots] = []
    run: list[bytes] = []
    run_slots: Slots = []
    size = 0
    for cmds, write in proposals:
        for slot, cmd in enumerate(cmds):
            if not batchable(cmd):
                if run:
                    entries.append(run[0] if len(run) == 1 else encode_batch(run))
                    slots.append(run_slots)
                    run, run_slots, size = [], [], 0
                entries.append(cmd)
                slots.append([(write, slot)])
                continue
            if run and (size + len(cmd) + _BATCH_ITEM_OVERHEAD > max_bytes
                        or len(run) == BATCH_MAX_COMMANDS):
                entries.append(run[0] if len(run) == 1 else encode_batch(run))
                slots.append(run_slots)
                run, run_slots, size = [], [], 0
            run.append(cmd)
            run_slots.append((write, slot))
            size += len(cmd) + _BATCH_ITEM_OVERHEAD
    if run:
        entries.append(run[0] if len(run) == 1 else encode_batch(run))
        slots.append(run_slots)
    return entries, slots


# Commands per batch entry at most (a follower's apply of one entry stays short).
BATCH_MAX_COMMANDS = 128
# A batch's bytes per command besides the command (tag and length), and of the batch
# entry besides its commands (WriteCommand.batch's tag and length, the Entry's fields).
_BATCH_ITEM_OVERHEAD = 6
BATCH_ENTRY_OVERHEAD = 64


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
    another leader's entry took the index). `batches` does the same for a batch entry:
    index -> (term, the (write, slot) of each of its commands, in order), whose results
    come as that many consecutive results with the entry's index.
    """

    def __init__(self, tick_s: float, max_bytes_per_msg: int = 4 * 1024 * 1024) -> None:
        self.ticks = 0  # loop ticks since start
        self.waiters: dict[int, tuple[int, Write, int]] = {}
        self.batches: dict[int, tuple[int, Slots]] = {}
        self._batch_bytes = max_bytes_per_msg - BATCH_ENTRY_OVERHEAD
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

    def entries_for(self, proposals: list[tuple[list[bytes], Write]], commands: list[bytes],
                    batch: bool = True) -> tuple[list[bytes], list[Slots] | None]:
        """`batch_entries` within the peer message bound (`batch` False: one entry per
        command; `Members.batch_ok`)."""
        if not batch:
            return commands, None
        return batch_entries(proposals, commands, self._batch_bytes)

    def register_entries(self, proposals: list[tuple[list[bytes], Write]],
                         slots: list[Slots] | None, term: int, index: int) -> None:
        """`batch_entries(proposals, ...)` were appended from `index` on at `term`."""
        if slots is None:
            self.register(proposals, term, index)
            return
        waiters, batches = self.waiters, self.batches
        for entry_slots in slots:
            if len(entry_slots) == 1:
                write, slot = entry_slots[0]
                waiters[index] = (term, write, slot)
            else:
                batches[index] = (term, entry_slots)
            index += 1

    def waiting(self) -> int:
        """Proposed entries waiting for their apply."""
        return len(self.waiters) + len(self.batches)

    def resolve(self, entries: list[Entry], results: Sequence[ApplyResult]) -> None:
        """An applied chunk: fill the results of the writes it holds."""
        waiters = self.waiters
        if self.batches:
            self._resolve_batches(entries, results)
            return
        if not waiters:
            return
        terms = {e.index: e.term for e in entries} if len(entries) != len(results) else None
        for i, result in enumerate(results):
            waiter = waiters.pop(result.index, None)
            if waiter is None:
                continue
            term, write, slot = waiter
            entry_term = entries[i].term if terms is None else terms[result.index]
            self._fill(write, slot, result, entry_term == term)

    def _resolve_batches(self, entries: list[Entry], results: Sequence[ApplyResult]) -> None:
        """`resolve` of a chunk while batch entries wait: the results of a batch entry are
        consecutive, one per command."""
        terms = {e.index: e.term for e in entries}
        waiters, batches = self.waiters, self.batches
        i, n = 0, len(results)
        while i < n:
            index = results[i].index
            waiter = waiters.pop(index, None)
            if waiter is not None:
                term, write, slot = waiter
                self._fill(write, slot, results[i], terms[index] == term)
                i += 1
                continue
            j = i + 1
            while j < n and results[j].index == index:
                j += 1
            batch = batches.pop(index, None)
            if batch is not None:
                term, slots = batch
                ours = terms[index] == term
                if ours and j - i != len(slots):  # not the batch proposed: never ours
                    ours = False
                for k, (write, slot) in enumerate(slots):
                    self._fill(write, slot, results[i + k] if ours else results[i], ours)
            i = j

    def _fill(self, write: Write, slot: int, result: ApplyResult, ours: bool) -> None:
        """One command's result for `write` (ours: the entry applied is the one proposed;
        else the write fails with Unavailable)."""
        if write.future.done():
            return
        if not ours:
            write.future.set_exception(Unavailable("leadership changed; write not applied"))
            self.failed += 1
            return
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
        for write in self._waiting_writes():
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
        for index, write in self._waiting_writes(True):
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
            batch = self.batches.get(index)
            if batch is not None and all(w.future.done() for w, _ in batch[1]):
                del self.batches[index]
        del lost[:n]

    def fail(self, error: Exception) -> None:
        """Fail every write waiting for its apply (its outcome is unknown)."""
        for write in self._waiting_writes():
            if not write.future.done():
                write.future.set_exception(error)
                self.failed += 1
        self.waiters.clear()
        self.batches.clear()

    @overload
    def _waiting_writes(self) -> Iterator[Write]: ...
    @overload
    def _waiting_writes(self, with_index: Literal[True]) -> Iterator[tuple[int, Write]]: ...

    def _waiting_writes(self, with_index: bool = False) -> Iterator[Any]:
        """Every write waiting for an entry's apply (a write with commands in several
        batches comes once per entry), with the entry's index if `with_index`."""
        for index, (_, write, _) in self.waiters.items():
            yield (index, write) if with_index else write
        for index, (_, slots) in self.batches.items():
            seen = None
            for write, _ in slots:
                if write is not seen:
                    seen = write
                    yield (index, write) if with_index else write

"""The node's Raft log and the one thread that writes it.

Storage is opened and recovered on this thread at start (`dengine.node.recovery`), each
Ready's snapshot, entries and hard state are made durable by `persist` (on the loop when
the Ready is small, else on the thread), compaction runs on it, and at stop the latest
commit index is saved and the log and state machine are closed on it. The apply pipeline
and the snapshotter have threads of their own: an append of new entries and the apply of
older, durable ones fsync in parallel.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dengine.config import NodeConfig
from dengine.kv.codec import command_count
from dengine.node.datadir import DataDir
from dengine.node.ports import NodeLog, SnapshotFiles
from dengine.node.recovery import open_storage
from dengine.node.timing import DurationHistogram
from dengine.proto import Entry, HardState
from dengine.raft import Ready
from dengine.storage.fileio import FileIO
from dengine.storage.state_machine import StateMachine

# A Ready whose entries hold up to this many bytes is persisted (written and fsynced) on
# the loop itself (see apply.INLINE_MAX_BYTES for why), bigger ones on this thread: an
# fsync of a 1 MiB write took 50-120 ms on the loop under a burst of 64 KiB writes, long
# enough, with the loop's other work, for the followers' election timeout to pass.
PERSIST_INLINE_MAX_BYTES = 256 * 1024
# Under concurrent load a small Ready is persisted on this thread too: with at least this
# many writes waiting for their commit on the node, or this many entries in the Ready.
# An fsync on the loop stops it for the fsync's duration (36% of a leader's wall time
# under etcdctl's `check perf --load l`, load average 12): on the thread the loop serves
# requests and peers meanwhile, and the next Ready carries all that arrived (a larger
# group commit: 2 -> 7 entries per fsync, 1.6x the writes/s, docs/performance.md). With
# one write in flight the loop has nothing else to do: inline saves the hand-off.
PERSIST_OFF_LOOP_WAITING = 16
PERSIST_OFF_LOOP_ENTRIES = 4
BATCH_TAG = b"\xa2"  # the first byte of a batch entry's command (WriteCommand.batch)
# A Ready of this many entries or more is persisted on the loop again (up to
# PERSIST_INLINE_MAX_BYTES): its group commit is large already, and the hand-off costs a
# scheduling round trip (the log thread woken, then the loop by call_soon_threadsafe),
# long on a busy machine, on the commit path of every write in it. The embedded put at
# 256 in flight (~120 entries per Ready, nothing else for the loop to do meanwhile) went
# from 0.79-0.91 to 0.91-1.00 of its rate before issue 16; `check perf --load l` makes
# 19-29 entries per Ready (docs/performance.md, session 18). Counted in commands: a batch
# entry (WriteCommand.batch) as the commands it holds.
PERSIST_OFF_LOOP_MAX_ENTRIES = 64


def persist_off_loop(entries: list[Entry], waiting: int) -> bool:
    """Whether a small Ready of `entries`, with `waiting` entries waiting for their
    commit, is persisted on the log thread (see PERSIST_OFF_LOOP_WAITING and
    PERSIST_OFF_LOOP_MAX_ENTRIES)."""
    n = commands_in(entries)
    return n < PERSIST_OFF_LOOP_MAX_ENTRIES and (
        n >= PERSIST_OFF_LOOP_ENTRIES or waiting >= PERSIST_OFF_LOOP_WAITING)


def commands_in(entries: list[Entry]) -> int:
    """The commands `entries` hold (a batch entry's own count)."""
    n = len(entries)
    for e in entries:
        command = e.payload.command
        if command[:1] == BATCH_TAG:
            n += command_count(command) - 1
    return n


def run_soon(
    loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor,
    fn: Callable[..., None], *args: Any,
) -> asyncio.Future[None]:
    """`loop.run_in_executor(executor, fn, *args)` for a `fn` that returns None, answered
    by one `call_soon_threadsafe` instead of chaining a concurrent future to an asyncio
    one (`wrap_future`): 47-49 -> 28-33 us of CPU per round trip here (a persist handed
    to the log thread, once per Ready under load, on every node). Cancelling the future
    cancels the call if it has not started, as run_in_executor's does."""
    done: asyncio.Future[None] = loop.create_future()

    def call() -> None:
        try:
            fn(*args)
        except BaseException as e:
            loop.call_soon_threadsafe(_settle, done, e)
        else:
            loop.call_soon_threadsafe(_settle, done, None)

    work = executor.submit(call)
    done.add_done_callback(lambda future: future.cancelled() and work.cancel())
    return done


def run_in_executor(
    loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor,
    fn: Callable[..., None], *args: Any,
) -> asyncio.Future[None]:
    """`run_soon` through the loop's own `run_in_executor`: for the simulator, whose loop
    models the threads there."""
    return loop.run_in_executor(executor, fn, *args)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():  # cancelled meanwhile
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class LogThread:
    """The Raft log (once opened) and its thread (`executor`)."""

    def __init__(
        self, node_id: int, fileio: FileIO | None = None, background_checkpoints: bool = True
    ) -> None:
        self._fileio = fileio
        self._background = background_checkpoints
        self.executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"dengine-log-{node_id}"
        )
        self.log: NodeLog | None = None
        self.persist_seconds = DurationHistogram()  # each durable write (the metrics')

    async def open(
        self, config: NodeConfig, data_dir: DataDir, store: SnapshotFiles
    ) -> tuple[NodeLog, StateMachine, int]:
        """Open and recover the log and the state machine: (log, state machine, applied)."""
        loop = asyncio.get_running_loop()
        try:
            raft_log, sm, applied = await loop.run_in_executor(
                self.executor, open_storage, config, data_dir, store, self._fileio,
                self._background,
            )
        except BaseException:
            self.executor.shutdown(wait=False)
            raise
        self.log = raft_log
        return raft_log, sm, applied

    def persist(self, rd: Ready, save_hard_state: bool) -> None:
        """Log thread (or the loop, when small): make the Ready's snapshot, entries and hard
        state durable."""
        raft_log = self.log
        assert raft_log is not None
        started = time.perf_counter()
        if rd.snapshot is not None:
            raft_log.install_snapshot(rd.snapshot)
        if rd.entries:
            first = rd.entries[0].index
            if first <= raft_log.last_index():
                raft_log.truncate_suffix(first)
            raft_log.append(rd.entries)
        hard_state = rd.hard_state if save_hard_state else None
        if hard_state is not None:
            raft_log.set_hard_state(hard_state)
        if rd.snapshot is not None or rd.entries or hard_state is not None:
            self.persist_seconds.observe(time.perf_counter() - started)

    async def close(
        self,
        sm: StateMachine | None,
        latest: HardState | None,
        compact: Callable[[], None] | None,
    ) -> None:
        """On the thread: save the `latest` hard state's commit if the log's is behind,
        run `compact`, close the state machine and the log; then end the thread."""
        try:
            await asyncio.get_running_loop().run_in_executor(
                self.executor, self._flush_and_close, sm, latest, compact
            )
        finally:
            self.executor.shutdown(wait=True)

    def _flush_and_close(
        self,
        sm: StateMachine | None,
        latest: HardState | None,
        compact: Callable[[], None] | None,
    ) -> None:
        raft_log = self.log
        if raft_log is not None and latest is not None:
            if raft_log.hard_state().commit < latest.commit:
                raft_log.set_hard_state(latest)
            if compact is not None:
                compact()
        for closable in (sm, raft_log):
            if closable is not None:
                closable.close()

"""Snapshots and compaction: when a snapshot is taken, the log compacted behind it, and
snapshots streamed to and installed from peers.

Taking one (`snapshot_threshold_entries` applied since the last, or every
`snapshot_interval_s`): the state is captured on the apply thread between two chunks
(state and index from one point), written by the snapshot thread (never the loop, the
log or the apply thread), and the log is compacted behind it on the log thread at the
start of a later turn (`take_compaction`, no Ready in progress), keeping a tail so that
a follower a little behind catches up from the log.

Sending one: a MSG_SNAPSHOT the core sends is not put on the wire; the transport streams
the snapshot file beside the Raft traffic (`send`). Receiving one: chunks are stored and
verified by the `SnapshotReceiver` (`on_chunk`); once the file is whole, the MSG_SNAPSHOT
it stands for is stepped into the core, which asks for the install in a Ready (`install`,
on the apply thread; the log follows in the node's persist).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from dengine.config import NodeConfig
from dengine.node.apply import ApplyPipeline
from dengine.node.ports import NodeLog, PeerTransport, SnapshotFiles
from dengine.node.snapshots import SnapshotReceiver
from dengine.proto import LogId, Membership, Message, MessageType, SnapshotChunk, SnapshotMetadata
from dengine.raft import RaftCore
from dengine.raft.progress import ProgressState
from dengine.storage.kvfile import StoreImage
from dengine.storage.state_machine import StateMachine

log = logging.getLogger(__name__)

MSG_SNAPSHOT = MessageType.MSG_SNAPSHOT
# Entries kept below a new snapshot, as a fraction of the snapshot threshold: a follower a
# little behind at compaction time then catches up from the log, not with a snapshot.
_COMPACTION_TAIL_DIVISOR = 10
_SNAPSHOT_RETRY_S = 5.0  # after a failed snapshot, wait this long before the next try


def _nothing() -> None:
    """A no-op job: waits for the jobs queued before it on a single-thread executor."""


class Snapshotter:
    """Owns the snapshot thread, the snapshot in progress and the compaction it leads to."""

    def __init__(
        self,
        config: NodeConfig,
        loop: asyncio.AbstractEventLoop,
        store: SnapshotFiles,
        receiver: SnapshotReceiver,
        raft_log: NodeLog,
        sm: StateMachine,
        core: RaftCore,
        apply: ApplyPipeline,
        *,
        applied: Callable[[], int],
        running: Callable[[], bool],
        wake: Callable[[], None],
        deliver: Callable[[int, Sequence[Message]], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_id = config.node_id
        self._config = config
        self._loop = loop
        self._store = store
        self._receiver = receiver
        self._log = raft_log
        self._sm = sm
        self._core = core
        self._apply = apply
        self._applied = applied
        self._running = running
        self._wake = wake
        self._deliver = deliver
        self._clock = clock
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"dengine-snap-{self.node_id}"
        )
        self.transport: PeerTransport | None = None  # set once the transport is started
        self.task: asyncio.Task[None] | None = None  # the snapshot being taken
        self.compact_to: SnapshotMetadata | None = None  # written, the log not compacted yet
        snap = raft_log.snapshot_metadata()
        self.index = snap.last_included.index if snap is not None else 0  # the log's snapshot
        self.taken = 0
        self.installed = 0
        self._next_at = 0.0  # monotonic time of the next interval/retry snapshot

    # -- taking snapshots ---------------------------------------------------------------

    def start_clock(self, now: float) -> None:
        if self._config.snapshot_interval_s:
            self._next_at = now + self._config.snapshot_interval_s

    def on_tick(self, now: float) -> None:
        if self._next_at and now >= self._next_at:
            self.maybe(force=True)
        elif self.task is None:
            self.maybe()  # the threshold may have passed during the last one

    def maybe(self, force: bool = False, repair: bool = False) -> None:
        """Start a snapshot when the threshold (or `force`: the interval) calls for it;
        `repair` rewrites the current one too (its file was found missing or damaged)."""
        if self.task is not None or not self._running():
            return
        behind = self._applied() - self.index
        threshold = self._config.snapshot_threshold_entries
        if behind < 0 or (behind == 0 and not repair):
            return
        if not (force or (threshold and behind >= threshold)):
            return
        if self._clock() < self._next_at and not self._config.snapshot_interval_s:
            return  # backing off after a failure
        self.task = self._loop.create_task(
            self._take(), name=f"dengine-snapshot-{self.node_id}"
        )

    async def _take(self) -> None:
        started = self._clock()
        try:
            # On the apply thread, between two chunks: state and index from one point.
            state, last, membership = await self._apply.run(self._capture)
            if not self._running():
                return  # stopping: do not start a write that stop() would wait for
            if membership is None:
                membership = self._core.membership_at(last.index)
            if last.index < self.index or not membership or not membership.voters:
                return
            metadata = await self._loop.run_in_executor(
                self._executor, self._store.write, state, last, membership
            )
            del state
            self.taken += 1
            self.compact_to = metadata
            self._wake()
            log.info("node %d: snapshot at index %d written in %.2fs (term %d)", self.node_id,
                     last.index, self._clock() - started, self._core.term)
            interval = self._config.snapshot_interval_s
            self._next_at = self._clock() + interval if interval else 0.0
        except asyncio.CancelledError:
            raise
        except Exception as e:
            # The log is simply not compacted yet; nothing is lost. Retry later.
            log.error("node %d: snapshot failed: %s", self.node_id, e, exc_info=True)
            self._next_at = self._clock() + _SNAPSHOT_RETRY_S
        finally:
            self.task = None

    def _capture(self) -> tuple[StoreImage, LogId, Membership | None]:
        sm = self._sm
        sm.sync()  # the log is compacted behind this point: the state must be on disk
        return sm.image(), sm.last_applied(), sm.membership()

    # -- compaction (log thread) ---------------------------------------------------------

    def take_compaction(self) -> SnapshotMetadata | None:
        """Loop: the snapshot written since the last turn, to compact the log to (once)."""
        metadata, self.compact_to = self.compact_to, None
        return metadata

    def compact(self, metadata: SnapshotMetadata) -> None:
        """Log thread, between turns: the log now starts from `metadata`; prune old files."""
        raft_log = self._log
        index = metadata.last_included.index
        current = raft_log.snapshot_metadata()
        if current is not None and current.last_included.index >= index:
            return  # a snapshot installed meanwhile is newer
        tail = self._config.snapshot_threshold_entries // _COMPACTION_TAIL_DIVISOR
        point = min(max(index - tail, raft_log.first_index()), raft_log.last_index())
        # Restart re-applies the log above the state machine's durable point: keep it.
        point = min(point, self._sm.durable_index())
        if point < raft_log.first_index():
            return
        raft_log.compact_prefix(point, metadata)
        self._store.prune(metadata)
        self.index = index

    def compact_at_stop(self) -> None:
        """Log thread, at stop: a snapshot finished after the last turn is compacted to now
        (the state machine synced first, as at a capture), not at some later run."""
        metadata = self.take_compaction()
        if metadata is None:
            return
        try:
            self._sm.sync()
            self.compact(metadata)
        except Exception as e:
            log.warning("node %d: compaction at stop failed (the log is simply kept): %s",
                        self.node_id, e)

    # -- installing a leader's snapshot ---------------------------------------------------

    def install(self, metadata: SnapshotMetadata) -> None:
        """Apply thread: replace the state machine by a received, verified snapshot."""
        directory = self._store.directory(metadata)
        self._sm.apply_snapshot_from_file(metadata, str(directory))
        log.info("node %d: installed the snapshot at index %d (term %d)", self.node_id,
                 metadata.last_included.index, metadata.last_included.term)

    def on_installed(self, index: int) -> None:
        """Loop: the log holds the installed snapshot at `index` too."""
        self.index = max(self.index, index)
        self.installed += 1

    async def on_chunk(self, from_id: int, chunk: SnapshotChunk) -> None:
        """Store a chunk (worker thread); once the file is whole and verified, hand Raft
        the MSG_SNAPSHOT it stands for. Raft then asks for the install in a Ready."""
        if not self._running():
            return
        try:
            ack = await asyncio.to_thread(self._receiver.receive, chunk)
        except Exception as e:
            # The old state is untouched; the leader resends from what we acknowledged.
            log.error("node %d: cannot store a snapshot chunk from node %d: %s",
                      self.node_id, from_id, e)
            return
        if ack.done and self._running():
            self._deliver(from_id, [Message(
                type=MSG_SNAPSHOT, from_id=from_id, to_id=self.node_id, term=chunk.term,
                snapshot=chunk.metadata,
            )])
        if self.transport is not None:
            self.transport.send_snapshot_ack(from_id, ack)

    # -- sending snapshots to followers ---------------------------------------------------

    def send(self, transport: PeerTransport, msg: Message) -> None:
        """The core wants `msg.to_id` to get a snapshot: stream the file beside the log."""
        path = self._store.file(msg.snapshot)
        log.debug("node %d: sending the snapshot at index %d to node %d", self.node_id,
                  msg.snapshot.last_included.index, msg.to_id)
        there = self._store.has(msg.snapshot)
        if there and transport.send_snapshot(msg.to_id, msg.snapshot, msg.term, path):
            return
        if not there:
            log.error("node %d: snapshot file %s is missing; taking a new snapshot",
                      self.node_id, path)
            self.maybe(force=True, repair=True)
        self._core.report_snapshot(msg.to_id, False)

    def on_sent(self, peer: int, metadata: SnapshotMetadata, ok: bool, error: str) -> None:
        """The transport's verdict on a snapshot streamed to `peer`."""
        if not self._running():
            return
        if ok:
            log.info("node %d: node %d received the snapshot at index %d (term %d)",
                     self.node_id, peer, metadata.last_included.index, self._core.term)
        else:
            log.warning("node %d: node %d refused the snapshot at index %d: %s",
                        self.node_id, peer, metadata.last_included.index, error)
            self._loop.create_task(self._check_own(metadata))
        self._core.report_snapshot(peer, ok)
        self._wake()

    async def _check_own(self, metadata: SnapshotMetadata) -> None:
        """A follower refused our snapshot: if our file is damaged, take a new snapshot."""
        store = self._store
        try:
            digest = await asyncio.to_thread(store.sha256, metadata)
        except OSError:
            digest = b""
        if digest == metadata.checksum:
            return
        log.error("node %d: snapshot file %s is damaged (SHA-256 mismatch); taking a new one",
                  self.node_id, store.file(metadata))
        with contextlib.suppress(OSError):
            await asyncio.to_thread(store.remove, metadata)
        self.maybe(force=True, repair=True)

    def drop_unneeded_transfers(self) -> None:
        """Stop streaming snapshots to peers that replicate from the log again, and all of
        them once we no longer lead."""
        transport = self.transport
        if transport is None:
            return
        core = self._core
        for peer in transport.snapshot_transfers():
            pr = core.prs.get(peer) if core.is_leader() else None
            if pr is None or pr.state is ProgressState.REPLICATE:
                transport.cancel_snapshot(peer)

    # -- stop -----------------------------------------------------------------------------

    async def finish(self) -> None:
        """At stop: a snapshot being written is finished (its thread would write it to the
        end anyway): the log is then compacted to it at close, instead of a restart holding
        and reading what it covers."""
        task = self.task
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.task = None

    async def close(self) -> None:
        try:
            await self._loop.run_in_executor(self._executor, _nothing)
        finally:
            self._executor.shutdown(wait=True)

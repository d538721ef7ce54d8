"""The node runtime: one asyncio task drives the Raft core with real storage and peers."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import random
import shutil
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from dengine.config import NodeConfig
from dengine.errors import (
    DengineError,
    InvalidRequest,
    NotLeader,
    StorageError,
    Timeout,
    Unavailable,
)
from dengine.node.datadir import DataDir
from dengine.node.snapshots import SnapshotReceiver, SnapshotStore, file_sha256
from dengine.node.transport import Transport
from dengine.proto import (
    Entry,
    HardState,
    LogId,
    Member,
    Membership,
    Message,
    MessageType,
    SnapshotChunk,
    SnapshotMetadata,
)
from dengine.raft import RaftConfig, RaftCore, Ready, Role
from dengine.raft.progress import ProgressState
from dengine.storage import ApplyResult, FileStateMachine, RaftLog

log = logging.getLogger(__name__)

_APPLY_CHUNK = 4096  # entries per apply_chunk call during restart recovery
_FRAME_MARGIN = 64 * 1024
MSG_SNAPSHOT = MessageType.MSG_SNAPSHOT
MSG_APPEND = MessageType.MSG_APPEND
# Entries kept below a new snapshot, as a fraction of the snapshot threshold: a follower a
# little behind at compaction time then catches up from the log, not with a snapshot.
_COMPACTION_TAIL_DIVISOR = 10
_SNAPSHOT_RETRY_S = 5.0  # after a failed snapshot, wait this long before the next try
# The state machine's WAL is not fsynced per apply (the Raft log is the durable record of
# what it has not synced); syncing it this often bounds what a restart re-applies.
_SM_SYNC_INTERVAL_S = 1.0
# Deadlines are checked every this many ticks, by a scan of what is still pending (a
# timer wheel would keep every finished request alive until its deadline: ~timeout x
# throughput futures for the garbage collector to walk).
_EXPIRY_SCAN_TICKS = 5
# Applies queued on the apply thread before the loop waits for the oldest one: the apply
# runs beside the next turns' persists, but never falls unboundedly behind the log.
_MAX_APPLIES_QUEUED = 4
# A Ready up to this size is persisted, and a committed chunk up to this size applied, on
# the loop itself. A round trip through a worker thread (wake it, hand the GIL over and
# back, wake the loop) costs 100-300 us here, more than one fdatasync or a small apply,
# and under load the worker waits for the GIL the busy loop holds; the loop blocks for at
# most a few ms. Measured: put p50 at 1 in flight 1.56 -> 0.8 ms, embedded puts at 256 in
# flight ~1.2x (docs/performance.md). Bigger ones (large values) go to the log thread and
# the apply thread, so that the loop keeps receiving while they work.
_INLINE_MAX_ENTRIES = 1024
_INLINE_MAX_BYTES = 1024 * 1024
# Bytes an entry adds to its command in a log record (index, term, tags, lengths).
_ENTRY_OVERHEAD = 16


def _nothing() -> None:
    """A no-op job: waits for the jobs queued before it on a single-thread executor."""


@dataclass(frozen=True)
class NodeStatus:
    """A point-in-time view of one node, for `Engine.status()` and the Status RPC."""

    node_id: int
    cluster_id: str
    role: str
    term: int
    leader_id: int
    commit_index: int
    applied_index: int
    first_log_index: int
    last_log_index: int
    voters: list[int]
    learners: list[int]
    snapshot_index: int = 0  # last_included index of the snapshot the log starts from

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MemberInfo:
    """One member of the latest configuration this node has appended."""

    id: int
    address: str  # peer address
    client_address: str  # "" if unknown
    role: str  # "voter" | "learner"
    match_index: int  # leader's view; 0 if unknown (or this node does not lead)
    is_leader: bool


class _Write:
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


class _Read:
    __slots__ = ("due", "future", "keys", "timeout")

    def __init__(
        self,
        keys: Sequence[bytes],
        future: asyncio.Future[list[bytes | None]],
        timeout: float,
        due: int,
    ) -> None:
        self.keys = keys
        self.future = future
        self.timeout = timeout
        self.due = due


class _ReadRound:
    """Reads sharing one ReadIndex request (all reads of one mode in one loop turn)."""

    __slots__ = ("index", "issued_tick", "lease", "reads")

    def __init__(self, reads: list[_Read], lease: bool, issued_tick: int) -> None:
        self.reads = reads
        self.lease = lease
        self.issued_tick = issued_tick
        self.index = 0


class Node:
    """Drives one `RaftCore` with a `RaftLog`, a `StateMachine` and the peer `Transport`.

    The loop (one asyncio task, `_run`) repeats a turn:

    1. drain the inbox: ticks owed by the monotonic clock (one per `tick_ms`), peer
       messages (`core.step`), every proposal queued since the last turn (one
       `core.propose` call: group commit), and the reads queued (one `read_index` round
       per consistency level for all of them; eventual reads are answered right away);
    2. `rd = core.ready()`;
    3. a snapshot received from the leader is installed (state machine on the apply
       thread, then the log); in the single storage thread: append/truncate the log and save
       the hard state with one fsync-ed batch, then hand `rd.messages` to the transport
       (they leave only after the data they depend on is durable), then queue the
       committed entries for one `apply_chunk` on the apply thread;
    4. back on the loop: record ReadStates and answer reads whose index is applied;
    5. `core.advance(rd)`.

    The apply is not awaited by the turn: the apply thread runs the queued chunks in
    commit order (one thread, FIFO) while the next turns persist, and each chunk's
    completion, back on the loop, moves `applied_index`, resolves the writes it applied
    (with their `ApplyResult`, or `Unavailable` if another term's entry took their index:
    a definite failure) and answers the reads now applied. At most `_MAX_APPLIES_QUEUED`
    chunks wait; beyond that the loop waits for the oldest.

    While the storage thread works, the loop keeps accepting input (the transport's
    reader tasks, new proposals), which the next turn takes as one batch. The loop never
    awaits a peer, and every internal queue is an unbounded list drained per turn, so
    nothing blocks on a full queue; the transport's per-peer queues bound memory.

    Snapshots (`snapshot_threshold_entries`, `snapshot_interval_s`): the state is captured
    on the apply thread between two chunks, written by a third thread, and the log is
    compacted behind it at the start of a later turn (no Ready in progress). A MSG_SNAPSHOT
    the core sends is not put on the wire: the transport streams the snapshot file beside
    the Raft traffic, and the receiver steps the MSG_SNAPSHOT into its core once the file
    is whole and verified (see `dengine.node.snapshots`).
    """

    def __init__(self, config: NodeConfig) -> None:
        self.config = config.validate()
        self.node_id = config.node_id
        self.data_dir = DataDir(config.data_dir)
        # One thread owns the Raft log, one the state machine: an append of new entries
        # and the apply of older, already durable ones fsync in parallel.
        self._io = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"dengine-log-{self.node_id}"
        )
        self._apply_io = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"dengine-apply-{self.node_id}"
        )
        # Snapshot files are written here, never on the loop, the log or the apply thread.
        self._snap_io = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"dengine-snap-{self.node_id}"
        )
        self._log: RaftLog | None = None
        self._sm: FileStateMachine | None = None
        self._core: RaftCore | None = None
        self._transport: Transport | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._ticker_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._running = False
        self._failure: BaseException | None = None
        # inbox, drained once per turn
        self._in_messages: list[Message] = []
        self._in_proposals: list[tuple[list[bytes], _Write]] = []
        self._in_reads: dict[str, list[_Read]] = {"linearizable": [], "lease": [], "eventual": []}
        # bytes of the entries that this turn's proposals and appends bring (see _EntrySizes)
        self._incoming_bytes = 0
        self._entry_sizes = _EntrySizes()
        # waiting for apply / read states
        self._waiters: dict[int, tuple[int, _Write, int]] = {}
        self._applies: deque[asyncio.Future[list[ApplyResult]]] = deque()
        self._apply_thread_jobs = 0  # queued or running on the apply thread
        self._held: dict[int, Message] = {}  # see _hold_commit_updates
        self._held_since = 0  # the tick of the oldest held message
        self._rounds: dict[bytes, _ReadRound] = {}
        self._ready_reads: list[tuple[int, _Read]] = []
        self._next_ctx = 0
        # state mirrored for status() and the engine
        self.applied_index = 0
        self.role = Role.FOLLOWER
        self.leader_id = 0
        self._ticks = 0
        self._next_expiry_scan = 0
        self._timeout_ticks: dict[float, int] = {}
        self._loop: asyncio.AbstractEventLoop  # set by start(), before any input is accepted
        self._tick_s = config.tick_ms / 1000.0
        self._last_tick = 0.0
        self._saved_vote = (0, 0)  # (term, voted_for) durable in the log's hard state
        self._latest_hs = HardState()  # the core's latest, commit included; saved at stop
        self._membership_seen: Membership | None = None
        self._store = SnapshotStore(self.data_dir.snapshots, config.snapshots_to_keep)
        self._receiver = SnapshotReceiver(self._store)
        self._snapshot_task: asyncio.Task[None] | None = None
        self._compact_to: SnapshotMetadata | None = None
        self._next_snapshot_at = 0.0  # monotonic time of the next interval/retry snapshot
        self._next_sm_sync = 0.0  # monotonic time of the next background state machine sync
        self.snapshot_index = 0
        self.snapshots_taken = 0
        self.snapshots_installed = 0

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open storage, recover, start the transport and the loop."""
        loop = self._loop = asyncio.get_running_loop()
        self.data_dir.claim(self.config.node_id, self.config.cluster_id)
        try:
            await loop.run_in_executor(self._io, self._open_storage)
        except BaseException:
            for executor in (self._io, self._apply_io, self._snap_io):
                executor.shutdown(wait=False)
            raise
        try:
            await self._start_core_and_transport()
        except BaseException:
            await self._close_storage()
            raise
        self._running = True
        self._last_tick = time.monotonic()
        if self.config.snapshot_interval_s:
            self._next_snapshot_at = self._last_tick + self.config.snapshot_interval_s
        self._loop_task = asyncio.create_task(self._run(), name=f"dengine-node-{self.node_id}")
        self._ticker_task = asyncio.create_task(self._ticker(), name=f"dengine-tick-{self.node_id}")

    async def _start_core_and_transport(self) -> None:
        raft_log = self._log
        assert raft_log is not None
        # An empty log (first start, or a first start that died before writing anything)
        # bootstraps from the configured peers; a node joining an existing cluster waits
        # to be added instead.
        fresh = raft_log.last_index() == 0 and raft_log.snapshot_metadata() is None
        bootstrap = self._bootstrap_membership() if fresh and not self.config.join else None
        self._core = RaftCore(self._raft_config(), raft_log, random.Random(), bootstrap=bootstrap)
        hs = raft_log.hard_state()
        self._saved_vote = (hs.term, hs.voted_for)
        self._latest_hs.CopyFrom(hs)
        snap = raft_log.snapshot_metadata()
        self.snapshot_index = snap.last_included.index if snap is not None else 0
        peers = self._peer_addresses()
        self._transport = Transport(
            node_id=self.node_id,
            cluster_id=self.config.cluster_id,
            listen=self.config.listen_peer,
            peers=peers,
            on_messages=self._on_peer_messages,
            client_address=self.config.listen_client,
            max_frame_bytes=self.config.max_bytes_per_msg
            + self.config.max_request_size
            + _FRAME_MARGIN,
            on_unreachable=self._on_unreachable,
            on_snapshot_chunk=self._on_snapshot_chunk,
            on_snapshot_done=self._on_snapshot_done,
            accept_unknown=self._is_outside_membership,
            snapshot_chunk_bytes=self.config.snapshot_chunk_bytes,
        )
        try:
            await self._transport.start()
        except OSError as e:
            if peers or self.config.join:
                raise Unavailable(
                    f"cannot listen for peers on {self.config.listen_peer}: {e}"
                ) from None
            # A lone node works without its peer listener; it just cannot grow.
            log.warning("node %d: cannot listen for peers on %s (%s); running alone, "
                        "new members cannot be added until a restart",
                        self.node_id, self.config.listen_peer, e)
            self._transport = None

    async def stop(self) -> None:
        """Stop the loop, close the transport, flush and close storage. Idempotent."""
        if not self._running and self._loop_task is None:
            return
        self._running = False
        self._wake.set()
        snapshot_task = self._snapshot_task
        for task in (self._ticker_task, self._loop_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if snapshot_task is not None:
            # A snapshot being written is finished (its thread would write it to the end
            # anyway, and the store would wait for it): the log is then compacted to it at
            # close, instead of a restart holding and reading what it covers.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await snapshot_task
        self._loop_task = self._ticker_task = self._snapshot_task = None
        if self._transport is not None:
            await self._transport.close()
        self._receiver.close()
        self._fail_pending(stopping=True)
        await self._close_storage()

    async def _close_storage(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            # Let a running apply finish before the state machine is closed.
            await loop.run_in_executor(self._apply_io, _nothing)
            await loop.run_in_executor(self._snap_io, _nothing)
            await loop.run_in_executor(self._io, self._flush_and_close)
        finally:
            for executor in (self._io, self._apply_io, self._snap_io):
                executor.shutdown(wait=True)

    def _open_storage(self) -> None:
        """Open the log and state machine; re-apply committed entries the SM has not seen."""
        raft_log = RaftLog(self.data_dir.raft, segment_bytes=self.config.log_segment_bytes)
        # Applies are not fsynced: an entry's durable record is the Raft log until the
        # state machine syncs, so the log is compacted only below durable_index().
        sm = FileStateMachine(
            self.data_dir.sm, checkpoint_bytes=self.config.wal_checkpoint_bytes,
            sync_apply=False, replayable_from=raft_log.first_index(),
        )
        self._log, self._sm = raft_log, sm
        self._finish_interrupted_install(raft_log, sm)
        self._store.prune(raft_log.snapshot_metadata(), leftovers=True)
        applied = sm.last_applied().index
        commit = min(raft_log.hard_state().commit, raft_log.last_index())
        start = max(applied + 1, raft_log.first_index())
        if start > applied + 1:
            raise StorageError(
                f"state machine applied up to {applied} but the log starts at "
                f"{raft_log.first_index()}: a snapshot is needed (not supported yet)"
            )
        while start <= commit:
            hi = min(commit + 1, start + _APPLY_CHUNK)
            sm.apply_chunk(raft_log.entries(start, hi))
            start = hi
        self.applied_index = max(applied, commit)
        if commit > applied:
            log.info("node %d: re-applied log entries %d..%d", self.node_id, applied + 1, commit)

    def _finish_interrupted_install(self, raft_log: RaftLog, sm: FileStateMachine) -> None:
        """A snapshot from the leader is installed in the state machine, then in the log;
        after a crash in between, the state machine is at a point the log does not hold:
        finish the install (the log restarts after the snapshot)."""
        applied = sm.last_applied()
        if applied.index < raft_log.first_index():
            return  # in the compacted prefix, or nothing applied
        if applied.index <= raft_log.last_index() and raft_log.term(applied.index) == applied.term:
            return
        snap = sm.snapshot_metadata()
        if snap is None or (snap.last_included.index, snap.last_included.term) != (
            applied.index, applied.term
        ):
            raise StorageError(
                f"the state machine is at ({applied.term}, {applied.index}), which the Raft "
                f"log (entries {raft_log.first_index()}..{raft_log.last_index()}) does not "
                "hold, and no snapshot explains it: the log is not the one it was applied from"
            )
        log.warning("node %d: finishing the install of the snapshot at index %d that a "
                    "crash interrupted", self.node_id, applied.index)
        raft_log.install_snapshot(snap)

    def _flush_and_close(self) -> None:
        if self._log is not None and self._core is not None:
            hs = self._log.hard_state()
            if hs.commit < self._latest_hs.commit:
                self._log.set_hard_state(self._latest_hs)
        if self._compact_to is not None and self._sm is not None and self._failure is None:
            # A snapshot finished after the last turn: compact to it now (the state machine
            # synced first, as at a snapshot's capture), not at some later run.
            snapshot, self._compact_to = self._compact_to, None
            try:
                self._sm.sync()
                self._compact(snapshot)
            except Exception as e:
                log.warning("node %d: compaction at stop failed (the log is simply kept): %s",
                            self.node_id, e)
        for closable in (self._sm, self._log):
            close = getattr(closable, "close", None) or getattr(closable, "stop", None)
            if close is not None:
                close()

    def _raft_config(self) -> RaftConfig:
        c = self.config
        return RaftConfig(
            id=c.node_id,
            election_tick=c.election_ticks,
            heartbeat_tick=c.heartbeat_ticks,
            max_entries_per_msg=c.max_entries_per_msg,
            max_bytes_per_msg=c.max_bytes_per_msg,
            max_inflight_msgs=c.max_inflight_msgs,
            lease_ticks=c.lease_ticks if c.lease_read else 0,
            applied=self.applied_index,
        )

    def _is_outside_membership(self) -> bool:
        """True while this node is in no membership (joining): it accepts any peer."""
        core = self._core
        return core is not None and not core.voters and not core.learners

    def _bootstrap_membership(self) -> Membership:
        voters = [Member(id=self.node_id, address=self.config.listen_peer)]
        voters += [Member(id=i, address=a) for i, a in sorted(self.config.peers.items())]
        return Membership(voters=voters)

    def _peer_addresses(self) -> dict[int, str]:
        """Peers to talk to: the members of the current membership (addresses from the
        membership, else from the config's peers); the config's peers while not a member."""
        assert self._core is not None
        membership = self._membership_seen = self._core.membership
        members = [*membership.voters, *membership.learners]
        if not members:
            return dict(self.config.peers)
        peers = {}
        for m in members:
            address = m.address or self.config.peers.get(m.id, "")
            if m.id != self.node_id and address:
                peers[m.id] = address
        return peers

    # -- inputs (called by the engine and the transport on the loop thread) -------------

    def check_running(self) -> None:
        """Raise Unavailable unless the node is running."""
        if not self._running:
            if self._failure is not None:
                raise Unavailable(f"node {self.node_id} failed: {self._failure}")
            raise Unavailable(f"node {self.node_id} is stopped")

    def propose(
        self, commands: list[bytes], timeout: float
    ) -> asyncio.Future[list[ApplyResult]]:
        """Queue encoded commands as one write; the future gets one ApplyResult each.

        After `timeout` seconds the future fails with Timeout (the outcome is unknown).
        """
        self.check_running()
        if self.role is not Role.LEADER:
            raise self.not_leader()
        future: asyncio.Future[list[ApplyResult]] = self._loop.create_future()
        write = _Write(future, len(commands), timeout, self._due(timeout))
        self._in_proposals.append((commands, write))
        self._wake.set()
        return future

    def read(
        self, keys: Sequence[bytes], consistency: str, timeout: float
    ) -> asyncio.Future[list[bytes | None]]:
        """Queue a read of `keys` at `consistency` ("linearizable", "lease", "eventual")."""
        self.check_running()
        future: asyncio.Future[list[bytes | None]] = self._loop.create_future()
        self._in_reads[consistency].append(_Read(keys, future, timeout, self._due(timeout)))
        self._wake.set()
        return future

    def read_local(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """An eventual read: this node's state machine as it is now, without a loop turn.

        It sees every committed entry applied here so far (a write is acknowledged only
        after its apply, so a caller reads its own completed writes on this node).
        """
        self.check_running()
        sm = self._sm
        assert sm is not None
        get = sm.get
        return [get(k) for k in keys]

    def read_local_one(self, key: bytes) -> bytes | None:
        """`read_local` of one key (the embedded eventual get's hot path)."""
        sm = self._sm
        if not self._running or sm is None:
            self.check_running()
        assert sm is not None
        return sm.get(key)

    def _due(self, timeout: float) -> int:
        """The tick after which a request made now with `timeout` fails (no timer per call)."""
        ticks = self._timeout_ticks.get(timeout)
        if ticks is None:
            if len(self._timeout_ticks) > 64:
                self._timeout_ticks.clear()
            ticks = self._timeout_ticks[timeout] = max(1, math.ceil(timeout / self._tick_s))
        return self._ticks + ticks

    def _expire(self) -> None:
        """Fail the pending requests whose deadline has passed."""
        now = self._ticks
        if now < self._next_expiry_scan:
            return
        self._next_expiry_scan = now + _EXPIRY_SCAN_TICKS
        for _, write in self._in_proposals:
            _expire_write(write, now)
        for _, write, _ in self._waiters.values():
            _expire_write(write, now)
        for batch in self._in_reads.values():
            for r in batch:
                _expire_read(r, now)
        for rnd in self._rounds.values():
            for r in rnd.reads:
                _expire_read(r, now)
        for _, r in self._ready_reads:
            _expire_read(r, now)

    def not_leader(self) -> NotLeader:
        """The NotLeader error to raise here, with the leader's client address if known."""
        return NotLeader(leader_id=self.leader_id, leader_address=self.leader_address())

    def leader_address(self) -> str:
        if self.leader_id == self.node_id:
            return self.config.listen_client
        if self.leader_id and self._transport is not None:
            return self._transport.peer_client_address(self.leader_id)
        return ""

    def _on_peer_messages(self, from_id: int, messages: Sequence[Message]) -> None:
        self._in_messages.extend(messages)
        self._wake.set()

    async def _on_snapshot_chunk(self, from_id: int, chunk: SnapshotChunk) -> None:
        """Store a chunk (worker thread); once the file is whole and verified, hand Raft
        the MSG_SNAPSHOT it stands for. Raft then asks for the install in a Ready."""
        if not self._running:
            return
        try:
            ack = await asyncio.to_thread(self._receiver.receive, chunk)
        except Exception as e:
            # The old state is untouched; the leader resends from what we acknowledged.
            log.error("node %d: cannot store a snapshot chunk from node %d: %s",
                      self.node_id, from_id, e)
            return
        if ack.done and self._running:
            self._in_messages.append(Message(
                type=MSG_SNAPSHOT, from_id=from_id, to_id=self.node_id, term=chunk.term,
                snapshot=chunk.metadata,
            ))
            self._wake.set()
        if self._transport is not None:
            self._transport.send_snapshot_ack(from_id, ack)

    def _on_snapshot_done(
        self, peer: int, metadata: SnapshotMetadata, ok: bool, error: str
    ) -> None:
        core = self._core
        if core is None or not self._running:
            return
        if ok:
            log.info("node %d: node %d received the snapshot at index %d",
                     self.node_id, peer, metadata.last_included.index)
        else:
            log.warning("node %d: node %d refused the snapshot at index %d: %s",
                        self.node_id, peer, metadata.last_included.index, error)
            self._loop.create_task(self._check_own_snapshot(metadata))
        core.report_snapshot(peer, ok)
        self._wake.set()

    async def _check_own_snapshot(self, metadata: SnapshotMetadata) -> None:
        """A follower refused our snapshot: if our file is damaged, take a new snapshot."""
        path = self._store.file(metadata)
        try:
            digest = await asyncio.to_thread(file_sha256, path)
        except OSError:
            digest = b""
        if digest == metadata.checksum:
            return
        log.error("node %d: snapshot file %s is damaged (SHA-256 mismatch); taking a new one",
                  self.node_id, path)
        await asyncio.to_thread(shutil.rmtree, path.parent, True)
        self._maybe_snapshot(force=True, repair=True)

    def _on_unreachable(self, peer_id: int) -> None:
        if self._core is not None and self._running:
            self._core.report_unreachable(peer_id)
            self._wake.set()

    # -- the loop ----------------------------------------------------------------------

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self._tick_s)
            self._wake.set()

    def _has_input(self) -> bool:
        return bool(
            self._in_messages
            or self._in_proposals
            or any(self._in_reads.values())
            or time.monotonic() - self._last_tick >= self._tick_s
        )

    async def _run(self) -> None:
        core = self._core
        assert core is not None
        loop = asyncio.get_running_loop()
        try:
            while self._running:
                if not self._has_input() and not core.has_ready():
                    if self._held and self._ticks > self._held_since:
                        self._send_held()
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if self._compact_to is not None:
                    snapshot, self._compact_to = self._compact_to, None
                    await loop.run_in_executor(self._io, self._compact, snapshot)
                self._take_inputs(core)
                if not core.has_ready():
                    continue
                rd = core.ready()
                await self._handle_ready(loop, core, rd)
                self._after_ready(rd)
                core.advance(rd)
                if len(self._applies) > _MAX_APPLIES_QUEUED:
                    await asyncio.wait([self._applies[0]])
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            self._die(e)

    def _die(self, e: BaseException) -> None:
        """A storage failure: stop the node and fail what is pending (nothing is lost)."""
        if self._failure is not None:
            return
        log.critical("node %d: stopping after a fatal error: %s", self.node_id, e,
                     exc_info=e)
        self._failure = e
        self._running = False
        self._wake.set()
        self._fail_pending(stopping=False)

    def _take_inputs(self, core: RaftCore) -> None:
        now = time.monotonic()
        owed = int((now - self._last_tick) / self._tick_s)
        if owed > 0:
            self._last_tick += owed * self._tick_s
            for _ in range(min(owed, 10 * self.config.election_ticks)):
                core.tick()
            before = self._ticks
            self._ticks += owed
            self._retry_stale_rounds(core)
            self._expire()
            hb = self.config.heartbeat_ticks
            if before // hb != self._ticks // hb:
                if self.role is Role.LEADER:
                    self._auto_promote(core)
                self._drop_unneeded_transfers(core)
            if now >= self._next_sm_sync:
                self._next_sm_sync = now + _SM_SYNC_INTERVAL_S
                self._sync_state_machine()
            if self._next_snapshot_at and now >= self._next_snapshot_at:
                self._maybe_snapshot(force=True)
            elif self._snapshot_task is None:
                self._maybe_snapshot()  # the threshold may have passed during the last one
        if self._in_messages:
            messages, self._in_messages = self._in_messages, []
            for msg in messages:
                if msg.type == MSG_APPEND and msg.entries:
                    self._incoming_bytes += msg.ByteSize()
                try:
                    core.step(msg)
                except Exception as e:
                    # An unexpected message never stops the node: log it and go on.
                    log.warning("node %d: dropped %s from node %d: %s",
                                self.node_id, msg.type, msg.from_id, e)
        if self._in_proposals:
            self._propose(core)
        reads = self._in_reads
        if reads["eventual"]:
            eventual, reads["eventual"] = reads["eventual"], []
            for r in eventual:
                self._serve(r)
        for mode in ("linearizable", "lease"):
            if reads[mode]:
                batch, reads[mode] = reads[mode], []
                self._start_round(core, batch, lease=mode == "lease")

    def _propose(self, core: RaftCore) -> None:
        proposals, self._in_proposals = self._in_proposals, []
        commands = [c for cmds, _ in proposals for c in cmds]
        self._incoming_bytes += sum(map(len, commands)) + _ENTRY_OVERHEAD * len(commands)
        try:
            term, index = core.propose_batch(commands)
        except NotLeader:
            error: DengineError = self.not_leader()
        except DengineError as e:
            error = e
        else:
            waiters = self._waiters
            for cmds, write in proposals:
                for slot in range(len(cmds)):
                    waiters[index] = (term, write, slot)
                    index += 1
            return
        for _, write in proposals:
            if not write.future.done():
                write.future.set_exception(error)

    def _sync_state_machine(self) -> None:
        """fdatasync the state machine's WAL on the apply thread, off the reply path."""
        sm = self._sm
        if sm is None or sm.durable_index() >= self.applied_index:
            return
        job = self._on_apply_thread(sm.sync)
        # A failed sync marks the state machine failed: the next apply stops the node.
        job.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _start_round(self, core: RaftCore, reads: list[_Read], lease: bool) -> None:
        self._next_ctx += 1
        ctx = self._next_ctx.to_bytes(8, "big")
        try:
            core.read_index(ctx, lease=lease and self.role == Role.LEADER)
        except DengineError as e:
            error = e if not isinstance(e, NotLeader) else Unavailable(
                f"node {self.node_id} knows no leader to confirm a read"
            )
            for r in reads:
                if not r.future.done():
                    r.future.set_exception(error)
            return
        self._rounds[ctx] = _ReadRound(reads, lease, self._ticks)

    def _retry_stale_rounds(self, core: RaftCore) -> None:
        """Re-ask for rounds unanswered after an election timeout (lost message, new leader)."""
        limit = self._ticks - self.config.election_ticks
        stale = [ctx for ctx, rnd in self._rounds.items() if rnd.issued_tick < limit]
        for ctx in stale:
            rnd = self._rounds.pop(ctx)
            alive = [r for r in rnd.reads if not r.future.done()]
            if alive:
                self._start_round(core, alive, rnd.lease)

    async def _handle_ready(
        self, loop: asyncio.AbstractEventLoop, core: RaftCore, rd: Ready
    ) -> None:
        """Persist and send one Ready; queue its committed entries for the apply thread."""
        hs = rd.hard_state
        vote_changed = hs is not None and (hs.term, hs.voted_for) != self._saved_vote
        if hs is not None:
            # Commit alone is not needed for safety: it is saved with the next term or
            # vote change and at stop, which keeps steady state at one log fsync per turn.
            self._latest_hs.CopyFrom(hs)
        messages = rd.messages
        if messages and not vote_changed and core.is_leader():
            # A leader's appends and heartbeats promise nothing about its own disk (it
            # counts itself toward commit only after advance), so they may leave before
            # its fsync and the followers write in parallel (Raft thesis 10.2.1).
            if rd.committed_entries:
                messages = self._hold_commit_updates(messages)
            self._send(messages)
            messages = []
        committed = rd.committed_entries
        if committed and committed[0].index <= self.applied_index:
            committed = [e for e in committed if e.index > self.applied_index]
        if rd.snapshot is not None:
            # The state machine first (on its own thread, so that it never races an apply
            # or a snapshot capture), then the log in _persist: see _finish_interrupted_install.
            await self._on_apply_thread(self._install_snapshot, rd.snapshot)
        persist = None
        small = True
        if rd.entries:
            small = self._note_sizes(rd.entries)
        self._incoming_bytes = 0
        if rd.snapshot is None and (rd.entries or vote_changed) and small:
            self._persist(rd, vote_changed)  # see _INLINE_MAX_ENTRIES
            if vote_changed and hs is not None:
                self._saved_vote = (hs.term, hs.voted_for)
        elif rd.snapshot is not None or rd.entries or vote_changed:
            persist = loop.run_in_executor(self._io, self._persist, rd, vote_changed)
        if persist is None and messages:
            # Written already: a follower's acknowledgement leaves before its apply (it is
            # on the leader's commit path; the apply is not).
            self._send(messages)
            messages = []
        if committed and (persist is None or (
            rd.snapshot is None and (not rd.entries or committed[-1].index < rd.entries[0].index)
        )):
            # These entries are durable already: apply while the new ones are written.
            self._start_apply(loop, committed)
            committed = []
        if persist is not None:
            await persist
            if vote_changed and hs is not None:
                self._saved_vote = (hs.term, hs.voted_for)
        if messages:
            self._send(messages)
        if committed:
            self._start_apply(loop, committed)

    def _note_sizes(self, entries: list[Entry]) -> bool:
        """Record the size of a Ready's entries; whether they are small (see _INLINE_MAX_ENTRIES).

        The bytes counted as they came in are exact for a leader's proposals and an upper
        bound for a follower's appends; entries the count missed (a new leader's no-op, a
        membership entry) are tiny, and a batch of them falls back to measuring.
        """
        size = self._incoming_bytes or _size(entries)
        self._entry_sizes.add(entries[0].index, entries[-1].index, size)
        return len(entries) <= _INLINE_MAX_ENTRIES and size <= _INLINE_MAX_BYTES

    def _on_apply_thread(self, fn: Any, *args: Any) -> asyncio.Future[Any]:
        """Run `fn` on the apply thread (after every job queued before it)."""
        self._apply_thread_jobs += 1
        job = self._loop.run_in_executor(self._apply_io, fn, *args)
        job.add_done_callback(self._apply_job_done)
        return job

    def _apply_job_done(self, job: asyncio.Future[Any]) -> None:
        self._apply_thread_jobs -= 1

    def _start_apply(self, loop: asyncio.AbstractEventLoop, entries: list[Entry]) -> None:
        """Apply `entries` after every chunk queued before them: on the loop when the apply
        thread is idle and the chunk small, else queued on the apply thread."""
        sm = self._sm
        first, last = entries[0].index, entries[-1].index
        size = self._entry_sizes.size(first, last)
        self._entry_sizes.forget_to(last)
        if (
            not self._apply_thread_jobs
            and sm is not None
            and len(entries) <= _INLINE_MAX_ENTRIES
            and (size if size is not None else _size(entries)) <= _INLINE_MAX_BYTES
            and sm.checkpoint_headroom() > 2 * _INLINE_MAX_BYTES
        ):
            self._finish_apply(entries, self._apply(entries))
            return
        job = self._on_apply_thread(self._apply, entries)
        self._applies.append(job)
        job.add_done_callback(functools.partial(self._on_applied, entries))

    def _on_applied(
        self, entries: list[Entry], job: asyncio.Future[list[ApplyResult]]
    ) -> None:
        """Loop: a chunk is applied (completions come in queue order)."""
        if self._applies and self._applies[0] is job:
            self._applies.popleft()
        if job.cancelled():
            return
        error = job.exception()
        if error is not None:
            self._die(error)
            return
        self._finish_apply(entries, job.result())

    def _finish_apply(self, entries: list[Entry], results: list[ApplyResult]) -> None:
        """Loop: resolve the writes of an applied chunk and serve the reads it unblocks."""
        self.applied_index = max(self.applied_index, entries[-1].index)
        if results:
            self._resolve_writes(entries, results)
        if self._ready_reads:
            self._serve_ready_reads()
        threshold = self.config.snapshot_threshold_entries
        if threshold and self.applied_index - self.snapshot_index >= threshold:
            self._maybe_snapshot()

    def _persist(self, rd: Ready, save_hard_state: bool) -> None:
        """Log thread: make the Ready's snapshot, entries and hard state durable."""
        raft_log = self._log
        assert raft_log is not None
        if rd.snapshot is not None:
            raft_log.install_snapshot(rd.snapshot)
        if rd.entries:
            first = rd.entries[0].index
            if first <= raft_log.last_index():
                raft_log.truncate_suffix(first)
            raft_log.append(rd.entries)
        if save_hard_state and rd.hard_state is not None:
            raft_log.set_hard_state(rd.hard_state)

    def _apply(self, entries: list[Entry]) -> list[ApplyResult]:
        sm = self._sm
        assert sm is not None
        return sm.apply_chunk(entries)

    def _install_snapshot(self, metadata: SnapshotMetadata) -> None:
        """Apply thread: replace the state machine by a received, verified snapshot."""
        sm = self._sm
        assert sm is not None
        directory = self._store.directory(metadata)
        sm.apply_snapshot_from_file(metadata, str(directory))
        log.info("node %d: installed the snapshot at index %d (term %d)", self.node_id,
                 metadata.last_included.index, metadata.last_included.term)

    def _hold_commit_updates(self, messages: list[Message]) -> list[Message]:
        """Keep back, until the next tick at most, the entry-less appends that only carry
        the new commit index; the rest go now.

        The writes this commit completes usually lead to new ones (at once for embedded
        writers, a client round trip later for remote ones), and the append carrying
        their entries carries the commit index too, so the update is dropped (see
        _send): one message, one follower Ready and one acknowledgement fewer per write,
        and the follower is not busy with it when the next entries arrive. Otherwise it
        leaves when the loop is idle after the next tick, so an idle follower learns the
        commit within a tick (10 ms by default; a ReadIndex round's heartbeats carry it
        sooner). Dropping one is a lost message to Raft: always safe.
        """
        rest = []
        for msg in messages:
            if msg.type == MSG_APPEND and not msg.entries:
                if not self._held:
                    self._held_since = self._ticks
                self._held[msg.to_id] = msg
            else:
                rest.append(msg)
        return rest

    def _send_held(self) -> None:
        held = list(self._held.values())
        self._held.clear()
        self._send(held)

    def _send(self, messages: list[Message]) -> None:
        held = self._held
        if held:
            for msg in messages:
                if msg.type == MSG_APPEND:
                    held.pop(msg.to_id, None)  # this one carries the commit index too
        transport = self._transport
        if transport is None:
            return
        for msg in messages:
            if msg.type == MSG_SNAPSHOT:
                transport.send([m for m in messages if m.type != MSG_SNAPSHOT])
                for m in messages:
                    if m.type == MSG_SNAPSHOT:
                        self._start_transfer(transport, m)
                return
        transport.send(messages)

    def _start_transfer(self, transport: Transport, msg: Message) -> None:
        """The core wants `msg.to_id` to get a snapshot: stream the file beside the log."""
        path = self._store.file(msg.snapshot)
        log.debug("node %d: sending the snapshot at index %d to node %d", self.node_id,
                  msg.snapshot.last_included.index, msg.to_id)
        if path.is_file() and transport.send_snapshot(msg.to_id, msg.snapshot, msg.term, path):
            return
        if not path.is_file():
            log.error("node %d: snapshot file %s is missing; taking a new snapshot",
                      self.node_id, path)
            self._maybe_snapshot(force=True, repair=True)
        if self._core is not None:
            self._core.report_snapshot(msg.to_id, False)

    # -- snapshots and compaction --------------------------------------------------------

    def _maybe_snapshot(self, force: bool = False, repair: bool = False) -> None:
        """Start a snapshot when the threshold (or `force`: the interval) calls for it;
        `repair` rewrites the current one too (its file was found missing or damaged)."""
        if self._snapshot_task is not None or not self._running:
            return
        behind = self.applied_index - self.snapshot_index
        threshold = self.config.snapshot_threshold_entries
        if behind < 0 or (behind == 0 and not repair):
            return
        if not (force or (threshold and behind >= threshold)):
            return
        if time.monotonic() < self._next_snapshot_at and not self.config.snapshot_interval_s:
            return  # backing off after a failure
        self._snapshot_task = self._loop.create_task(
            self._take_snapshot(), name=f"dengine-snapshot-{self.node_id}"
        )

    async def _take_snapshot(self) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            # On the apply thread, between two chunks: state and index from one point.
            state, last, membership = await self._on_apply_thread(self._capture)
            if not self._running:
                return  # stopping: do not start a write that stop() would wait for
            core = self._core
            if membership is None and core is not None:
                membership = core.membership_at(last.index)
            if last.index < self.snapshot_index or not membership or not membership.voters:
                return
            metadata = await loop.run_in_executor(
                self._snap_io, self._store.write, state, last, membership
            )
            del state
            self.snapshots_taken += 1
            self._compact_to = metadata
            self._wake.set()
            log.info("node %d: snapshot at index %d written in %.2fs", self.node_id,
                     last.index, time.monotonic() - started)
            interval = self.config.snapshot_interval_s
            self._next_snapshot_at = time.monotonic() + interval if interval else 0.0
        except asyncio.CancelledError:
            raise
        except Exception as e:
            # The log is simply not compacted yet; nothing is lost. Retry later.
            log.error("node %d: snapshot failed: %s", self.node_id, e, exc_info=True)
            self._next_snapshot_at = time.monotonic() + _SNAPSHOT_RETRY_S
        finally:
            self._snapshot_task = None

    def _capture(self) -> tuple[dict[bytes, bytes], LogId, Membership | None]:
        sm = self._sm
        assert sm is not None
        sm.sync()  # the log is compacted behind this point: the state must be on disk
        return sm.items(), sm.last_applied(), sm.membership()

    def _compact(self, metadata: SnapshotMetadata) -> None:
        """Log thread, between turns: the log now starts from `metadata`; prune old files."""
        raft_log = self._log
        assert raft_log is not None
        index = metadata.last_included.index
        current = raft_log.snapshot_metadata()
        if current is not None and current.last_included.index >= index:
            return  # a snapshot installed meanwhile is newer
        tail = self.config.snapshot_threshold_entries // _COMPACTION_TAIL_DIVISOR
        point = min(max(index - tail, raft_log.first_index()), raft_log.last_index())
        # Restart re-applies the log above the state machine's durable point: keep it.
        sm = self._sm
        assert sm is not None
        point = min(point, sm.durable_index())
        if point < raft_log.first_index():
            return
        raft_log.compact_prefix(point, metadata)
        self._store.prune(metadata)
        self.snapshot_index = index

    # -- membership ----------------------------------------------------------------------

    def members(self) -> list[MemberInfo]:
        """The latest configuration this node has appended, with the leader's match view."""
        core = self._require_core()
        membership = core.membership
        leading = core.is_leader()
        out = []
        for role, group in (("voter", membership.voters), ("learner", membership.learners)):
            for m in group:
                pr = core.prs.get(m.id) if leading else None
                out.append(MemberInfo(
                    id=m.id, address=m.address, client_address=self.peer_client_address(m.id),
                    role=role, match_index=pr.match if pr is not None else 0,
                    is_leader=m.id == self.leader_id and self.leader_id != 0,
                ))
        return out

    def peer_client_address(self, node_id: int) -> str:
        if node_id == self.node_id:
            return self.config.listen_client
        if self._transport is not None:
            return self._transport.peer_client_address(node_id)
        return ""

    def change_membership(
        self, membership: Membership, timeout: float
    ) -> asyncio.Future[list[ApplyResult]]:
        """Propose a configuration (one voter changed at most); resolves once it is applied."""
        self.check_running()
        core = self._require_core()
        try:
            lid = core.propose_membership(membership)
        except NotLeader:
            raise self.not_leader() from None
        except Unavailable as e:
            raise Unavailable(f"cannot change the membership now: {e.message}") from None
        future: asyncio.Future[list[ApplyResult]] = self._loop.create_future()
        self._waiters[lid.index] = (lid.term, _Write(future, 1, timeout, self._due(timeout)), 0)
        self._sync_peers()
        self._wake.set()
        return future

    def check_learner_caught_up(self, node_id: int) -> None:
        """InvalidRequest unless `node_id` is a learner within promote_lag of our log."""
        core = self._require_core()
        pr = core.prs.get(node_id)
        last = core.log.last_index()
        lag = self.config.promote_lag
        if pr is None or pr.match == 0 or last - pr.match > lag:
            match = pr.match if pr is not None else 0
            raise InvalidRequest(
                f"node {node_id} has not caught up: it holds the log up to {match}, the "
                f"leader up to {last} (promote_lag {lag}); retry once it has"
            )

    def _auto_promote(self, core: RaftCore) -> None:
        """Leader: make learners added with `promote` voters once they have caught up."""
        last = core.log.last_index()
        for m in core.membership.learners:
            if not m.promote:
                continue
            pr = core.prs.get(m.id)
            if (pr is None or pr.match == 0 or pr.state is not ProgressState.REPLICATE
                    or last - pr.match > self.config.promote_lag):
                continue
            try:
                core.propose_membership(promoted(core.membership, m.id))
            except DengineError as e:
                log.debug("node %d: auto-promotion of node %d postponed: %s",
                          self.node_id, m.id, e)
                return
            log.info("node %d: promoting learner %d to voter (caught up at %d of %d)",
                     self.node_id, m.id, pr.match, last)
            self._sync_peers()
            return

    def _drop_unneeded_transfers(self, core: RaftCore) -> None:
        """Stop streaming snapshots to peers that replicate from the log again, and all of
        them once we no longer lead."""
        transport = self._transport
        if transport is None:
            return
        for peer in transport.snapshot_transfers():
            pr = core.prs.get(peer) if core.is_leader() else None
            if pr is None or pr.state is ProgressState.REPLICATE:
                transport.cancel_snapshot(peer)

    def transfer_leadership(self, to: int) -> None:
        self._require_core().transfer_leadership(to)
        self._wake.set()

    def transfer_target(self) -> int:
        """The node a leadership transfer under way goes to (0: none)."""
        core = self._core
        return core.lead_transferee if core is not None else 0

    def membership(self) -> Membership:
        """A copy of the latest configuration appended to this node's log."""
        out = Membership()
        out.CopyFrom(self._require_core().membership)
        return out

    def _sync_peers(self) -> None:
        peers = self._peer_addresses()
        if self._transport is not None:
            self._transport.set_peers(peers)

    def _require_core(self) -> RaftCore:
        if self._core is None:
            raise Unavailable(f"node {self.node_id} is not started")
        return self._core

    def _after_ready(self, rd: Ready) -> None:
        if rd.soft_state is not None:
            self.role = rd.soft_state.role
            if rd.soft_state.leader_id != self.leader_id:
                self.leader_id = rd.soft_state.leader_id
        if rd.snapshot is not None:
            index = rd.snapshot.last_included.index
            self.applied_index = max(self.applied_index, index)
            self.snapshot_index = max(self.snapshot_index, index)
            self.snapshots_installed += 1
        for rs in rd.read_states:
            rnd = self._rounds.pop(rs.ctx, None)
            if rnd is not None:
                for r in rnd.reads:
                    self._ready_reads.append((rs.index, r))
        if self._ready_reads:
            self._serve_ready_reads()
        core = self._core
        if core is not None and core.membership is not self._membership_seen:
            # A config entry was appended (or truncated): talk to the new member set.
            self._sync_peers()
        threshold = self.config.snapshot_threshold_entries
        if threshold and self.applied_index - self.snapshot_index >= threshold:
            self._maybe_snapshot()

    def _resolve_writes(self, entries: list[Entry], results: list[ApplyResult]) -> None:
        waiters = self._waiters
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
                continue
            write.results[slot] = result
            write.remaining -= 1
            if write.remaining == 0:
                write.future.set_result(write.results)

    def _serve_ready_reads(self) -> None:
        applied = self.applied_index
        pending = []
        for index, r in self._ready_reads:
            if index <= applied:
                self._serve(r)
            else:
                pending.append((index, r))
        self._ready_reads = pending

    def _serve(self, r: _Read) -> None:
        if r.future.done():
            return
        sm = self._sm
        assert sm is not None
        r.future.set_result([sm.get(k) for k in r.keys])

    def _fail_pending(self, stopping: bool) -> None:
        why = "stopped" if stopping else "failed"
        write_error = Timeout(f"node {self.node_id} {why} before the write's outcome was known")
        for _, write in self._in_proposals:
            if not write.future.done():
                write.future.set_exception(Unavailable(f"node {self.node_id} {why}"))
        self._in_proposals = []
        for _, write, _ in self._waiters.values():
            if not write.future.done():
                write.future.set_exception(write_error)
        self._waiters.clear()
        reads = [r for batch in self._in_reads.values() for r in batch]
        reads += [r for rnd in self._rounds.values() for r in rnd.reads]
        reads += [r for _, r in self._ready_reads]
        for r in reads:
            if not r.future.done():
                r.future.set_exception(Unavailable(f"node {self.node_id} {why}"))
        self._in_reads = {"linearizable": [], "lease": [], "eventual": []}
        self._rounds.clear()
        self._ready_reads = []

    # -- status --------------------------------------------------------------------------

    def status(self) -> NodeStatus:
        core, raft_log = self._core, self._log
        if core is None or raft_log is None:
            raise Unavailable(f"node {self.node_id} is not started")
        membership = core.membership
        return NodeStatus(
            node_id=self.node_id,
            cluster_id=self.config.cluster_id,
            role=self.role.value,
            term=core.term,
            leader_id=self.leader_id,
            commit_index=core.commit_index,
            applied_index=self.applied_index,
            first_log_index=raft_log.first_index(),
            last_log_index=raft_log.last_index(),
            voters=sorted(m.id for m in membership.voters),
            learners=sorted(m.id for m in membership.learners),
            snapshot_index=self.snapshot_index,
        )

    @property
    def running(self) -> bool:
        return self._running


def _size(entries: Sequence[Entry]) -> int:
    """The bytes of `entries`' commands, measured (~0.4 µs per entry)."""
    return sum(len(e.payload.command) for e in entries) + _ENTRY_OVERHEAD * len(entries)


class _EntrySizes:
    """Upper bounds of the size of persisted, not yet applied entries, by index run.

    The node decides per batch whether to persist and apply on the loop or on a thread
    (see _INLINE_MAX_ENTRIES); measuring each entry for that cost ~0.4 µs per entry and
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


def _expire_write(write: _Write, now: int) -> None:
    if write.due <= now and not write.future.done():
        write.future.set_exception(Timeout(
            f"write did not complete within {write.timeout}s; it may still be applied"
        ))


def _expire_read(r: _Read, now: int) -> None:
    if r.due <= now and not r.future.done():
        r.future.set_exception(Timeout(f"read did not complete within {r.timeout}s"))


def promoted(membership: Membership, node_id: int) -> Membership:
    """`membership` with learner `node_id` moved to the voters."""
    out = Membership()
    out.voters.extend(membership.voters)
    for m in membership.learners:
        if m.id == node_id:
            out.voters.add(id=m.id, address=m.address)
        else:
            out.learners.append(m)
    return out

"""The node runtime: one asyncio task drives the Raft core with real storage and peers.

`Node` owns the drive loop and wires its collaborators, each a module owning its state:
pending (requests, deadlines), apply, reads, snapshotter, membership, outbox, events,
recovery, logthread (the Raft log's thread), standing (why it stopped serving); ports
lists what the node calls on its log, snapshot store and transport (docs/architecture.md,
"Node and transport", says what each owns).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from dengine.api import MemberInfo, NodeStatus
from dengine.config import NodeConfig
from dengine.errors import DengineError, LeadershipLost, NotLeader, Unavailable
from dengine.kv import EVENTUAL, LEASE, LEVELS, LINEARIZABLE
from dengine.node.apply import ENTRY_OVERHEAD, MAX_APPLIES_QUEUED, ApplyPipeline
from dengine.node.changes import GroupEvents
from dengine.node.datadir import DataDir
from dengine.node.events import RaftEvents
from dengine.node.logthread import LogThread, persist_off_loop, run_in_executor, run_soon
from dengine.node.membership import Members, bootstrap_membership
from dengine.node.outbox import Outbox
from dengine.node.pending import Pending, Read, Write
from dengine.node.ports import NodeEnv, NodeLog, PeerTransport, SnapshotFiles
from dengine.node.reads import ReadPath
from dengine.node.snapshots import SnapshotReceiver, SnapshotStore
from dengine.node.snapshotter import Snapshotter
from dengine.node.standing import Standing, failure_reason
from dengine.node.watch import WatchHub
from dengine.proto import Entry, HardState, Member, Message, MessageType
from dengine.raft import RaftCore, Ready, Role
from dengine.storage import ApplyResult
from dengine.storage.state_machine import StateMachine

log = logging.getLogger(__name__)

__all__ = ["MemberInfo", "Node", "NodeStatus"]

MSG_APPEND = MessageType.MSG_APPEND
# The state machine's WAL is not fsynced per apply (the Raft log is the durable record of
# what it has not synced); syncing it this often bounds what a restart re-applies.
_SM_SYNC_INTERVAL_S = 1.0


def _by_id(member: Member) -> int:
    return member.id


def _nothing(store: Any) -> None:
    return None


def _not_started(node_id: int) -> Unavailable:
    return Unavailable(f"node {node_id} is not started")


class Node:
    """Drives one `RaftCore` with a Raft log, a state machine and the peer transport.

    The loop (one asyncio task, `_run`) repeats a turn: (1) drain the inbox: ticks owed by
    the clock, peer messages (`core.step`), the proposals queued (one `propose` call:
    group commit), the reads queued (one `read_index` round per level; eventual reads at
    once); (2) `rd = core.ready()`; (3) `_handle_ready`: a leader sends `rd.messages`
    first (the followers write in parallel, Raft thesis 10.2.1); a received snapshot is
    installed; the entries and hard state are made durable (one fsync-ed batch, on the
    loop when small and the load light, else on the log thread); a follower's or
    candidate's messages leave then (they promise what is now durable); the committed
    entries go to the apply pipeline; (4) `_after_ready`: role, leader, ReadStates;
    (5) `core.advance(rd)`. The apply is not awaited: each chunk's completion
    (`_on_applied`) moves `applied_index` and resolves its writes and reads. The loop never
    awaits a peer; input that comes while the log thread works is the next turn's batch.
    """

    def __init__(self, config: NodeConfig, env: NodeEnv | None = None) -> None:
        self.config = config.validate()
        self.node_id = config.node_id
        self._env = env = env or NodeEnv()
        self.data_dir = DataDir(config.data_dir, env.fileio)
        self._clock = env.clock or time.monotonic
        self._logs = LogThread(self.node_id, env.fileio, env.background_checkpoints)
        self._io, self._persist = self._logs.executor, self._logs.persist
        self._run_soon = run_soon if env.real_threads else run_in_executor
        self._log: NodeLog | None = None
        self._sm: StateMachine | None = None
        self._core: RaftCore | None = None
        self._transport: PeerTransport | None = None
        snapshot_store = SnapshotStore(
            self.data_dir.snapshots, config.snapshots_to_keep, env.fileio)
        self._store: SnapshotFiles = snapshot_store
        self._receiver = SnapshotReceiver(snapshot_store)
        self._loop_task: asyncio.Task[None] | None = None
        self._ticker_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._running = False
        self._standing = Standing(self.node_id)  # why it stopped serving: failed, removed
        self._closing: asyncio.Task[None] | None = None  # the transport, once removed/failed
        self._pending = Pending(config.tick_ms / 1e3, config.max_bytes_per_msg)
        self._due = self._pending.due
        # inbox, drained once per turn
        self._in_messages: list[Message] = []
        self._in_proposals: list[tuple[list[bytes], Write]] = []
        # Writes a follower waits for (forwarded to this leader): the commit that covers
        # them leaves at once instead of waiting for the next append (Outbox.hold_commit_updates).
        self._urgent_in_turn = False
        self._urgent_through = 0  # the last log index of such a write
        self._in_reads: dict[str, list[Read]] = {level: [] for level in LEVELS}
        # bytes of the entries that this turn's proposals and appends bring (see EntrySizes)
        self._incoming_bytes = 0
        # state mirrored for status() and the engine
        self.applied_index = 0
        self.role = Role.FOLLOWER
        self.leader_id = 0
        self._led_term = 0  # the term this node last became leader at
        # The Raft group's own events (Engine.leader_changes, membership_changes)
        self.group_events = GroupEvents()
        self._loop: asyncio.AbstractEventLoop  # set by start(), before any input is accepted
        self._tick_s = config.tick_ms / 1000.0
        self._last_tick = 0.0
        self._saved_vote = (0, 0)  # (term, voted_for) durable in the log's hard state
        self._latest_hs = HardState()  # the core's latest, commit included; saved at stop
        self._next_sm_sync = 0.0  # monotonic time of the next background state machine sync
        self._snapshot_threshold = config.snapshot_threshold_entries
        self.watches = WatchHub(self.query_local)  # woken after each apply (node/watch.py)
        # The collaborators, made by _wire() once storage is open (they exist iff _core).
        self._apply: ApplyPipeline
        self._reads: ReadPath
        self._snaps: Snapshotter
        self.members: Members  # the engine's membership calls go there
        self._events: RaftEvents
        self._outbox: Outbox
        self._send: Callable[[list[Message]], None]
        self._start_apply: Callable[[list[Entry]], None]
        self._note_sizes: Callable[[list[Entry], int], bool]

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open storage, recover, start the transport and the loop."""
        loop = self._loop = asyncio.get_running_loop()
        # The cluster id: set, derived at the first start, or read from the data dir.
        cluster_id = self.data_dir.claim_for(self.config)
        if cluster_id != self.config.cluster_id:
            self.config = self.config.replace(cluster_id=cluster_id)
        raft_log, sm, self.applied_index = await self._logs.open(
            self.config, self.data_dir, self._store
        )
        self._log, self._sm = raft_log, sm
        try:
            self._wire(loop, raft_log, sm)
            transport = await self.members.start_transport(
                self._outbox.timed(self._on_peer_messages), self._on_unreachable,
                self._snaps.on_chunk, self._snaps.on_sent,
            )
            if transport is not None:
                self._transport = self._snaps.transport = self._outbox.transport = transport
        except BaseException:
            await self._close_storage()
            raise
        self._running = True
        if self.members.removed_at_start():
            self._on_removed("its configuration left it out before this start")
        self._last_tick = self._clock()
        self._snaps.start_clock(self._last_tick)
        self._loop_task = asyncio.create_task(self._run(), name=f"dengine-node-{self.node_id}")
        self._ticker_task = asyncio.create_task(self._ticker(), name=f"dengine-tick-{self.node_id}")

    def _wire(self, loop: asyncio.AbstractEventLoop, raft_log: NodeLog, sm: StateMachine) -> None:
        """Make the core and the collaborators around it."""
        # An empty log (first start, or a first start that died before writing anything)
        # bootstraps from the configured peers; a node joining an existing cluster waits
        # to be added instead.
        fresh = raft_log.last_index() == 0 and raft_log.snapshot_metadata() is None
        bootstrap = bootstrap_membership(self.config) if fresh and not self.config.join else None
        env = self._env
        make_core = env.core or RaftCore
        core = make_core(self.config.raft_config(self.applied_index), raft_log,
                         env.rng or random.Random(), bootstrap=bootstrap)
        hs = raft_log.hard_state()
        self._saved_vote = (hs.term, hs.voted_for)
        self._latest_hs.CopyFrom(hs)
        self._apply = ApplyPipeline(self.node_id, loop, sm, self._on_applied, self._die)
        self._start_apply = self._apply.start
        self._note_sizes = self._apply.note_sizes
        self._reads = ReadPath(self.node_id, sm)
        self.members = Members(
            self.config, core, raft_log, self.applied_index, self._pending, loop,
            on_removed=self._on_removed, wake=self._wake.set,
            check_running=self.check_running, not_leader=self.not_leader,
            on_config=self.group_events.config_applied,
            transport_factory=env.transport,
        )
        self.group_events.config_applied(self.members.applied)
        self._events = RaftEvents(self.node_id, core)
        self._snaps = Snapshotter(
            self.config, loop, self._store, self._receiver, raft_log, sm, core, self._apply,
            applied=lambda: self.applied_index, running=lambda: self._running,
            wake=self._wake.set, deliver=self._on_peer_messages, clock=self._clock,
        )
        self._outbox = Outbox(self._snaps)
        self._send = self._outbox.send
        self._core = core

    async def stop(self) -> None:
        """Stop the loop, close the transport, flush and close storage. Idempotent."""
        if not self._running and self._loop_task is None:
            return
        self._running = False
        self._wake.set()
        for task in (self._ticker_task, self._loop_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._loop_task = self._ticker_task = None
        await self._snaps.finish()
        if self._transport is not None:
            await self._transport.close()
        self._receiver.close()
        self._fail_pending("stopped")
        self.group_events.close(None)
        await self._close_storage()

    async def _close_storage(self) -> None:
        latest = compact = None
        try:
            if self._core is not None:
                # Let a running apply and a snapshot write finish before storage closes.
                await self._apply.close()
                await self._snaps.close()
                if self._standing.failure is None:
                    latest, compact = self._latest_hs, self._snaps.compact_at_stop
        except BaseException:
            self._io.shutdown(wait=True)
            raise
        await self._logs.close(self._sm, latest, compact)

    # -- inputs (called by the engine and the transport on the loop thread) -------------

    def check_running(self) -> None:
        """Raise Unavailable unless the node is running (StorageError once it stopped on
        a fatal storage failure)."""
        if not self._running:
            raise self._standing.unavailable()

    def propose(
        self, commands: list[bytes], timeout: float, *, forwarded: bool = False
    ) -> asyncio.Future[list[ApplyResult]]:
        """Queue encoded commands as one write; the future gets one ApplyResult each.

        After `timeout` seconds the future fails with Timeout (the outcome is unknown).
        `forwarded`: a follower sent them and waits for its own apply, so the followers
        learn their commit at once (not with the next append, up to a tick later).
        """
        if not self._running:  # check_running(), inline: once per write
            raise self._standing.unavailable()
        if self.role is not Role.LEADER:
            raise self.not_leader()
        future: asyncio.Future[list[ApplyResult]] = self._loop.create_future()
        write = Write(future, len(commands), timeout, self._due(timeout))
        self._in_proposals.append((commands, write))
        if forwarded:
            self._urgent_in_turn = True
        self._wake.set()
        return future

    def learn_commit(self, index: int, term: int) -> None:
        """`RaftCore.learn_commit` (a forwarded write's answer); the loop then applies."""
        core = self._core
        if core is not None and self._running and core.learn_commit(index, term):
            self._wake.set()

    def read(
        self, keys: Sequence[bytes], consistency: str, timeout: float
    ) -> asyncio.Future[list[bytes | None]]:
        """Queue a read of `keys` at `consistency` (a name of `kv.LEVELS`)."""
        self.check_running()
        future: asyncio.Future[list[bytes | None]] = self._loop.create_future()
        self._in_reads[consistency].append(Read(keys, future, timeout, self._due(timeout)))
        self._wake.set()
        return future

    def read_query(
        self, fn: Callable[[Any], Any], consistency: str, timeout: float
    ) -> asyncio.Future[Any]:
        """Queue a read that answers `fn(store)` (`StateMachine.read`) at `consistency`:
        linearizable and lease reads once their read index is applied, eventual ones at
        the next turn. An exception of `fn` is the future's."""
        self.check_running()
        future: asyncio.Future[Any] = self._loop.create_future()
        self._in_reads[consistency].append(
            Read((), future, timeout, self._due(timeout), query=fn))
        self._wake.set()
        return future

    def query_local(self, fn: Callable[[Any], Any]) -> Any:
        """`fn(store)` on this node's applied state, now (an eventual `read_query`)."""
        self.check_running()
        assert self._sm is not None
        return self._sm.read(fn)

    def wait_applied(self, index: int, timeout: float) -> asyncio.Future[Any]:
        """A future done once this node applied `index` (Timeout after `timeout`)."""
        self.check_running()
        future: asyncio.Future[Any] = self._loop.create_future()
        if self.applied_index >= index:
            future.set_result(None)
        else:
            self._reads.ready.append(
                (index, Read((), future, timeout, self._due(timeout), query=_nothing)))
        return future

    @property
    def term(self) -> int:
        """The current Raft term (0 before start)."""
        return self._core.term if self._core is not None else 0

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

    def not_leader(self) -> NotLeader:
        """The NotLeader error to raise here, with the leader's client address if known."""
        return NotLeader(leader_id=self.leader_id, leader_address=self.leader_address())

    def leader_address(self) -> str:
        if self.leader_id == self.node_id:
            return self.config.client_address
        if self.leader_id and self._transport is not None:
            return self._transport.peer_client_address(self.leader_id)
        return ""

    def _on_peer_messages(self, from_id: int, messages: Sequence[Message]) -> None:
        self._in_messages.extend(messages)
        self._wake.set()

    def _on_unreachable(self, peer_id: int) -> None:
        if self._core is not None and self._running:
            self._core.report_unreachable(peer_id)
            self._wake.set()

    def transfer_leadership(self, to: int) -> None:
        """Hand leadership to `to` (the membership itself: `members`, see membership.py)."""
        if self._core is None:
            raise _not_started(self.node_id)
        self.members.transfer_leadership(to)
        self._events.transfer_requested(to)
        self._wake.set()

    # -- the loop ----------------------------------------------------------------------

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self._tick_s)
            self._wake.set()

    async def _run(self) -> None:
        core = self._core
        assert core is not None
        loop = asyncio.get_running_loop()
        snaps = self._snaps
        applies = self._apply.queued
        outbox = self._outbox
        try:
            while self._running:
                if not (
                    self._in_messages
                    or self._in_proposals
                    or any(self._in_reads.values())
                    or self._clock() - self._last_tick >= self._tick_s
                ) and not core.has_ready():
                    if outbox.held and self._pending.ticks > outbox.held_since:
                        outbox.send_held()
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if snaps.compact_to is not None:
                    snapshot, snaps.compact_to = snaps.compact_to, None
                    await loop.run_in_executor(self._io, snaps.compact, snapshot)
                self._take_inputs(core)
                if not core.has_ready():
                    continue
                rd = core.ready()
                await self._handle_ready(loop, core, rd)
                self._after_ready(rd)
                core.advance(rd)
                if len(applies) > MAX_APPLIES_QUEUED:
                    await asyncio.wait([applies[0]])
        except (asyncio.CancelledError, GeneratorExit):
            raise  # GeneratorExit: the coroutine is closed (its loop is gone), not a failure
        except BaseException as e:
            self._die(e)

    def _die(self, e: BaseException) -> None:
        """A storage failure: stop the node and fail what is pending (nothing is lost)."""
        if not self._standing.fail(e):
            return
        self._running = False
        # Never a zombie: give up the leader role at once and drop the peer connections, so
        # that the others elect a leader (and nothing here claims to lead); the process
        # running the node decides whether to exit (`dengine serve` does: wait_failure).
        self.role = Role.FOLLOWER
        self.leader_id = 0
        if self._transport is not None and self._closing is None:
            self._closing = self._loop.create_task(self._transport.close())
        self._wake.set()
        self._fail_pending(f"failed ({failure_reason(e)})")
        self.group_events.close(self._standing.unavailable())

    async def wait_failure(self) -> BaseException:
        """The error once the node stopped on a fatal (storage) failure."""
        return await self._standing.wait_failure()

    def _on_removed(self, why: str) -> None:
        """No longer a member: stop serving (the process stays up; requests get Unavailable)."""
        if not self._standing.remove(why, self._core.term if self._core is not None else 0):
            return
        self.leader_id = 0
        self._running = False
        self._wake.set()
        self._fail_pending("was removed from the cluster")
        self.group_events.leader_seen(0, self.term, self.leader_address)
        self.group_events.close(self._standing.unavailable())
        if self._transport is not None:  # nothing to say to the peers any more
            self._closing = self._loop.create_task(self._transport.close())

    def _take_inputs(self, core: RaftCore) -> None:
        now = self._clock()
        owed = int((now - self._last_tick) / self._tick_s)
        if owed > 0:
            self._last_tick += owed * self._tick_s
            # More ticks than a heartbeat interval at once: the loop stalled. Its time
            # counts for the lease; elections see a heartbeat interval of it at most.
            ticked = min(owed, self.config.heartbeat_ticks)
            core.pass_time(owed - ticked)
            for _ in range(ticked):
                core.tick()
            pending = self._pending
            before = pending.ticks
            pending.ticks += owed
            self._reads.retry_stale(core, self.role is Role.LEADER, pending.ticks,
                                    self.config.election_ticks, self.not_leader)
            if pending.lost:
                pending.check_lost(core.commit_index)
            self._expire()
            hb = self.config.heartbeat_ticks
            if before // hb != pending.ticks // hb:
                if self.role is Role.LEADER:
                    self.members.auto_promote()
                self._snaps.drop_unneeded_transfers()
            if now >= self._next_sm_sync:
                self._next_sm_sync = now + _SM_SYNC_INTERVAL_S
                self._apply.sync(self.applied_index)
            self._snaps.on_tick(now)
        if self._in_messages:
            messages, self._in_messages = self._in_messages, []
            term = core.term
            for msg in messages:
                if msg.type == MSG_APPEND and msg.entries:
                    self._incoming_bytes += msg.ByteSize()
                try:
                    core.step(msg)
                except Exception as e:
                    # An unexpected message never stops the node: log it and go on.
                    log.warning("node %d: dropped %s from node %d: %s",
                                self.node_id, msg.type, msg.from_id, e)
            if core.term != term:
                self._events.term_raised(messages, term)
        if self._in_proposals:
            self._propose(core)
        reads = self._in_reads
        if reads[EVENTUAL]:
            eventual, reads[EVENTUAL] = reads[EVENTUAL], []
            serve = self._reads.serve
            for r in eventual:
                serve(r)
        for mode in (LINEARIZABLE, LEASE):
            if reads[mode]:
                batch, reads[mode] = reads[mode], []
                self._reads.start_round(core, batch, mode == LEASE,
                                        self.role is Role.LEADER, self._pending.ticks)

    def _propose(self, core: RaftCore) -> None:
        proposals, self._in_proposals = self._in_proposals, []
        commands = [c for cmds, _ in proposals for c in cmds]
        self._incoming_bytes += sum(map(len, commands)) + ENTRY_OVERHEAD * len(commands)
        entries, slots = self._pending.entries_for(proposals, commands, self.members.batch_ok())
        try:
            term, index = core.propose_batch(entries)
        except NotLeader:
            error: DengineError = self.not_leader()
        except DengineError as e:
            error = e
        else:
            self._pending.register_entries(proposals, slots, term, index)
            if self._urgent_in_turn:
                self._urgent_in_turn = False
                self._urgent_through = index + len(entries) - 1
            return
        self._urgent_in_turn = False
        for _, write in proposals:
            if not write.future.done():
                write.future.set_exception(error)

    def _expire(self) -> None:
        """Fail the pending requests whose deadline has passed (every few ticks)."""
        pending = self._pending
        if not pending.scan_due():
            return
        pending.expire(self._in_proposals, self._in_reads.values())
        if self._core is not None:
            self._reads.expire(pending.ticks)

    async def _handle_ready(
        self, loop: asyncio.AbstractEventLoop, core: RaftCore, rd: Ready
    ) -> None:
        """Send, persist and apply one Ready (see the class docstring for the order)."""
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
            committed = rd.committed_entries
            if committed and committed[0].index > self._urgent_through:
                messages = self._outbox.hold_commit_updates(messages, self._pending.ticks)
            self._send(messages)
            messages = []
        committed = rd.committed_entries
        if committed and committed[0].index <= self.applied_index:
            committed = [e for e in committed if e.index > self.applied_index]
        if rd.snapshot is not None:
            # The state machine first (on the apply thread, so that it never races an apply
            # or a snapshot capture), then the log in _persist: see recovery.py.
            await self._apply.run(self._snaps.install, rd.snapshot)
        persist = None
        small = True
        if rd.entries:
            small = self._note_sizes(rd.entries, self._incoming_bytes) and not \
                persist_off_loop(rd.entries, self._pending.waiting())
        self._incoming_bytes = 0
        if rd.snapshot is None and (rd.entries or vote_changed) and small:
            self._persist(rd, vote_changed)  # see apply.INLINE_MAX_ENTRIES
            if vote_changed and hs is not None:
                self._saved_vote = (hs.term, hs.voted_for)
        elif rd.snapshot is not None or rd.entries or vote_changed:
            persist = self._run_soon(loop, self._io, self._persist, rd, vote_changed)
        if persist is None and messages:
            # Written already: a follower's acknowledgement leaves before its apply (it is
            # on the leader's commit path; the apply is not).
            self._send(messages)
            messages = []
        if committed and (persist is None or (
            rd.snapshot is None and (not rd.entries or committed[-1].index < rd.entries[0].index)
        )):
            # These entries are durable already: apply while the new ones are written.
            self._start_apply(committed)
            committed = []
        if persist is not None:
            await persist
            if vote_changed and hs is not None:
                self._saved_vote = (hs.term, hs.voted_for)
        if messages:
            self._send(messages)
        if committed:
            self._start_apply(committed)

    def _on_applied(self, entries: list[Entry], results: Sequence[ApplyResult]) -> None:
        """Loop: a chunk is applied: resolve its writes, serve the reads it unblocks."""
        applied = self.applied_index = max(self.applied_index, entries[-1].index)
        if results:
            self._pending.resolve(entries, results)
        self.watches.applied()
        reads = self._reads
        if reads.ready:
            reads.serve_ready(applied)
        threshold = self._snapshot_threshold
        if threshold and applied - self._snaps.index >= threshold:
            self._snaps.maybe()

    def _after_ready(self, rd: Ready) -> None:
        if rd.soft_state is not None:
            was_leader = self.role is Role.LEADER
            self.role = rd.soft_state.role
            leader_changed = rd.soft_state.leader_id != self.leader_id
            if leader_changed:
                self.leader_id = rd.soft_state.leader_id
            self._events.on_change(self.role, self.leader_id)
            if self.role is Role.LEADER and not was_leader and self._core is not None:
                self._led_term = self._core.term
                self._pending.leading()
            elif was_leader and self.role is not Role.LEADER:
                self._on_deposed()
            elif leader_changed and self._reads.rounds and self._core is not None:
                # Rounds asked of the old leader will not be answered: ask the new one now.
                self._reads.retry_stale(self._core, self.role is Role.LEADER,
                                        self._pending.ticks, None)
        if self._core is not None:
            self.group_events.leader_seen(self.leader_id, self._core.term, self.leader_address)
        if rd.snapshot is not None:
            index = rd.snapshot.last_included.index
            self.applied_index = max(self.applied_index, index)
            self._snaps.on_installed(index)
            self.watches.applied()
        reads = self._reads
        if rd.read_states:
            reads.on_read_states(rd.read_states)
        if reads.ready:
            reads.serve_ready(self.applied_index)
        self.members.after_ready(self.applied_index)
        threshold = self._snapshot_threshold
        if threshold and self.applied_index - self._snaps.index >= threshold:
            self._snaps.maybe()

    def _on_deposed(self) -> None:
        """No longer the leader: answer what waits on its leadership without waiting for
        each request's deadline (issue 14).

        A write past the commit index may be committed by the next leader, or
        overwritten. The next leader usually settles it within a few heartbeats -- its
        commit reaching this node gives the write its result, its overwrite a definite
        Unavailable (retried) -- and so does this node leading again; a write unsettled
        after a grace (a share of its timeout, at least an election timeout: see
        `Pending.leadership_lost`) gets LeadershipLost (a Timeout: outcome unknown, not
        retried). A read whose round was not confirmed was never served: NotLeader at
        once (retried by clients, with the new leader when known).
        """
        core = self._core
        assert core is not None
        self._pending.leadership_lost(core.commit_index, LeadershipLost(
            f"node {self.node_id} lost its leadership (term {self._led_term}, now "
            f"{core.term}) and no leader settled the write since; it may still be applied"
        ), self.config.election_ticks)
        if self._reads.rounds:
            self._reads.fail_unconfirmed(self.not_leader())

    def _fail_pending(self, why: str) -> None:
        why = f"node {self.node_id} {why}"
        self._pending.fail_all(self._in_proposals, self._in_reads.values(), why)
        self._in_proposals = []
        self._in_reads = {level: [] for level in LEVELS}
        if self._core is not None:
            self._reads.fail(why)
        self.watches.close(Unavailable(why))

    # -- status --------------------------------------------------------------------------

    def status(self) -> NodeStatus:
        core, raft_log = self._core, self._log
        if core is None or raft_log is None:
            raise _not_started(self.node_id)
        membership = core.membership
        return NodeStatus(
            node_id=self.node_id,
            cluster_id=self.config.cluster_id,
            role="removed" if self._standing.removed else self.role.value,
            term=core.term,
            leader_id=self.leader_id,
            commit_index=core.commit_index,
            applied_index=self.applied_index,
            first_log_index=raft_log.first_index(),
            last_log_index=raft_log.last_index(),
            voters={m.id: m.address for m in sorted(membership.voters, key=_by_id)},
            learners={m.id: m.address for m in sorted(membership.learners, key=_by_id)},
            snapshot_index=self._snaps.index,
            leader_address=self.leader_address(),
        )

    @property
    def running(self) -> bool:
        return self._running


"""A deterministic, single-process Raft cluster under faults.

Everything happens on a virtual clock (integer milliseconds) in one event queue; every
random choice comes from one `random.Random(seed)`, so a run is a pure function of
(nodes, seed, steps, faults, core class) and any failure replays exactly.

One *step* is one event: a node's tick, a message delivery, a client action or a fault.
After each step the driver has persisted, sent and applied whatever the touched core
produced (the driver contract of docs/architecture.md) and the invariants were checked.
After `steps` steps all faults heal; the run continues until every pending client op
completes (liveness), and the client history is checked for linearizability.
"""

from __future__ import annotations

import hashlib
import heapq
import random
import traceback
from collections.abc import Callable
from typing import Any

from dengine.errors import DengineError, NotLeader, Unavailable
from dengine.kv import decode_entry, encode_insert
from dengine.kv.mvcc import Applied, MvccStore
from dengine.proto import (
    Entry,
    Membership,
    Message,
    MessageType,
    SnapshotMetadata,
)
from dengine.raft import RaftConfig, RaftCore
from dengine.sim.config import (
    BARRIER_KEY,
    CLIENT_TIMEOUT_MS,
    DRIFT_TICKS,
    ELECTION_TICK,
    FAULT_KINDS,
    HEARTBEAT_TICK,
    LEADER_BOUND_MS,
    MAX_SKEW_MS,
    SETTLE_BOUND_MS,
    STRIKE_CHURN_P,
    STRIKE_ELECTED_P,
    STRIKE_FIRST_COMMIT_P,
    TICK_MS,
    CoreFactory,
    SimConfig,
    SimResult,
)
from dengine.sim.invariants import InvariantChecker, InvariantViolation
from dengine.sim.lincheck import Op
from dengine.sim.nodes import Image, PendingRead, PendingWrite, SimNode
from dengine.sim.watcher import SimWatcher
from dengine.sim.workloads import Done, make_workload, resolve_op


class Simulator:
    """Runs one seeded simulation. `core_factory` builds each node's core (default RaftCore)."""

    def __init__(self, config: SimConfig, core_factory: CoreFactory | None = None,
                 store_cls: type[MvccStore] | None = None) -> None:
        if config.nodes < 1:
            raise DengineError(f"nodes must be at least 1, got {config.nodes}")
        unknown = set(config.faults) - set(FAULT_KINDS)
        if unknown:
            raise DengineError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        self.cfg = config
        self.factory: CoreFactory = core_factory or RaftCore
        self.store_cls: type[MvccStore] = store_cls or MvccStore
        self.rng = random.Random(config.seed)
        self.now = 0
        self.step = 0
        self._seq = 0
        self._events: list[tuple[int, int, str, Any]] = []
        self.ids = list(range(1, config.nodes + 1))
        self.nodes = {i: SimNode(i) for i in self.ids}
        self.checker = InvariantChecker()
        self.history: list[Op] = []
        self._writes: dict[tuple[int, int], list[PendingWrite]] = {}  # (node, index)
        self._client_busy: dict[int, Any] = {}
        self._client_target = dict.fromkeys(range(config.clients), 0)
        self._next_value = 0
        self._blocked: set[tuple[int, int]] = set()  # (from, to) links that drop everything
        self.loss = 0.0
        self.dup = 0.0
        self.max_delay = 5
        self.healing = False
        self.churn_until = 0  # leader churn: until then, nearly every new leader is struck
        self._barrier_reads_done: set[int] = set()
        # Snapshot contents by (index, term): what a real transfer would ship.
        self._snapshots: dict[tuple[int, int], tuple[bytes, Image]] = {}
        self.max_entries_per_msg = config.max_entries_per_msg or self.rng.choice((1, 3, 64))
        self.max_inflight = config.max_inflight or self.rng.choice((1, 4, 64))
        self.stats = dict.fromkeys(
            ("messages", "dropped", "crashes", "partitions", "elections", "writes", "reads",
             "lease_reads", "failed_writes", "unknown_writes", "snapshots_taken",
             "snapshots_installed", "membership_changes", "commits_learnt"), 0
        )
        self.workload = make_workload(self)
        self.watcher = SimWatcher(config.seed)  # a watch resumed across nodes (watcher.py)
        # Which node learns a commit from a write's answer, and when (its own stream, so
        # that the rest of a seed's run draws the same numbers as without it).
        self._learn_rng = random.Random(f"learn-{config.seed}")
        self._on_tick = getattr(self.workload, "on_tick", None)

    # ----------------------------------------------------------------------------- run

    def run(self) -> SimResult:
        """Run faults for `steps` steps, heal, check liveness and linearizability."""
        try:
            for node_id in self.ids:
                self._start(node_id)
            for client in range(self.cfg.clients):
                self._schedule(self.rng.randint(0, 50), "client", client)
            self._schedule(self.rng.randint(50, 300), "fault", None)
            while self.step < self.cfg.steps:
                self._run_one()
            self._heal()
            self._settle()
            self._check_history()
        except InvariantViolation as v:
            return SimResult(self.cfg, self.step, v, self.history, self.stats)
        except Exception as e:  # a crash of the core (or the driver) is a finding too
            where = traceback.extract_tb(e.__traceback__)[-1]
            crash = InvariantViolation(
                "no exceptions", 0,
                f"{type(e).__name__}: {e} (at {where.filename}:{where.lineno})",
            )
            return SimResult(self.cfg, self.step, crash, self.history, self.stats)
        return SimResult(self.cfg, self.step, None, self.history, self.stats)

    def _schedule(self, delay: int, kind: str, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (self.now + delay, self._seq, kind, payload))

    def _run_one(self) -> None:
        when, _, kind, payload = heapq.heappop(self._events)
        self.now = when
        self.step += 1
        if kind == "tick":
            node_id, incarnation = payload
            node = self.nodes[node_id]
            if node.up and node.incarnation == incarnation:
                assert node.core is not None
                node.core.tick()
                if self._on_tick is not None:
                    self._on_tick(node)  # the lease workload's clocks
                self._drive(node)
                self._schedule(self._tick_delay(node), "tick", payload)
        elif kind == "deliver":
            sender, to, data = payload
            node = self.nodes[to]
            if (sender, to) in self._blocked:
                self.stats["dropped"] += 1  # a partition also eats packets in flight
            elif node.up:
                assert node.core is not None
                msg = Message.FromString(data)
                node.core.step(msg)
                self._drive(node)
                if msg.type == MessageType.MSG_SNAPSHOT:
                    self._schedule(self.rng.randint(1, 5), "snapshot_done", (sender, to, True))
        elif kind == "snapshot_done":
            sender, to, ok = payload
            core = self.nodes[sender].core
            if core is not None:
                core.report_snapshot(to, ok)
                self._drive(self.nodes[sender])
        elif kind == "client":
            self._client_act(payload)
        elif kind == "learn_commit":
            node_id, index, term = payload
            node = self.nodes[node_id]
            if node.up:
                assert node.core is not None
                if node.core.learn_commit(index, term):
                    self.stats["commits_learnt"] += 1
                self._drive(node)
        elif kind == "fault":
            self._fault()
        elif kind == "strike":
            self._strike(*payload)
        elif kind == "restart":
            if not self.nodes[payload].up:  # _heal may have restarted it already
                self._start(payload)
        elif kind == "heal_link":
            self._blocked.discard(payload)
        elif kind == "client_timeout":
            client, op = payload
            if op is not None and self._client_busy.get(client) is op:
                self._client_target[client] = 0  # try another node next time
                self._client_done(client)  # gives up; a write stays possibly-applied

    def _tick_delay(self, node: SimNode) -> int:
        jitter = self.rng.randint(-MAX_SKEW_MS, MAX_SKEW_MS)
        return max(TICK_MS - MAX_SKEW_MS, min(TICK_MS + MAX_SKEW_MS, node.period + jitter))

    # ---------------------------------------------------------------------- node driver

    def _start(self, node_id: int) -> None:
        """Boot (or reboot after a crash) a node from its durable log."""
        node = self.nodes[node_id]
        node.incarnation += 1
        node.kv = self.store_cls()
        node.applied = 0
        node.reads = {}
        snap = node.log.snapshot_metadata()
        if snap is not None:
            node.kv = self._snapshot_data(node.id, snap)
            node.applied = snap.last_included.index
            self._resolve_covered_writes(node_id, node.applied)
        raft_cfg = RaftConfig(
            id=node_id,
            peers=list(self.ids),
            election_tick=ELECTION_TICK,
            heartbeat_tick=HEARTBEAT_TICK,
            pre_vote=True,
            check_quorum=True,
            lease_read=self.cfg.lease_reads,
            lease_ticks=ELECTION_TICK - DRIFT_TICKS,
            max_entries_per_msg=self.max_entries_per_msg,
            max_inflight_msgs=self.max_inflight,
        )
        node.core = self.factory(raft_cfg, node.log, random.Random(self.rng.getrandbits(64)))
        self._drive(node)
        self._schedule(self._tick_delay(node), "tick", (node_id, node.incarnation))

    def _crash(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if not node.up:
            return
        node.core = None
        self.checker.on_not_leader(node_id)
        node.reads = {}  # clients of lost reads time out; their reads observed nothing
        self.stats["crashes"] += 1

    def _drive(self, node: SimNode) -> None:
        """Honour the driver contract for every Ready the core has, then check invariants."""
        core = node.core
        assert core is not None
        while core.has_ready():
            rd = core.ready()
            log = node.log
            if rd.snapshot is not None:
                node.kv = self._snapshot_data(node.id, rd.snapshot)
                log.install_snapshot(rd.snapshot)
                node.applied = rd.snapshot.last_included.index
                self._resolve_covered_writes(node.id, node.applied)
                self.stats["snapshots_installed"] += 1
            if rd.entries:
                first = rd.entries[0].index
                if first <= log.last_index():
                    self.checker.on_truncate(node.id, first, node.applied)
                    log.truncate_suffix(first)
                self.checker.on_append(node.id, list(rd.entries), log.term(first - 1))
                log.append(list(rd.entries))
            if rd.hard_state is not None:
                self.checker.on_persist_hard_state(node.id, rd.hard_state)
                log.set_hard_state(rd.hard_state)
            for msg in rd.messages:
                self._send(msg)
            for entry in rd.committed_entries:
                self._apply(node, entry)
            for rs in rd.read_states:
                read = node.reads.get(rs.ctx)
                if read is not None:
                    read.index = rs.index
            self._serve_reads(node)
            core.advance(rd)
        if core.is_leader():
            if core.term not in self.checker.leaders:
                self.stats["elections"] += 1
            self.checker.on_leader(node.id, core.term, core.log, core.commit_index)
            # Milestones of a leadership at which a strike hurts most: just elected, and
            # its first commit (before the no-op reaches everyone).
            if node.lead_term != core.term:
                node.lead_term, node.lead_commit = core.term, core.commit_index
                self._maybe_strike(node.id, core.term, STRIKE_ELECTED_P)
            elif node.lead_commit >= 0 and core.commit_index > node.lead_commit:
                node.lead_commit = -1
                self._maybe_strike(node.id, core.term, STRIKE_FIRST_COMMIT_P)
        else:
            self.checker.on_not_leader(node.id)
        every = self.cfg.snapshot_every
        if every and node.applied - node.log.first_index() + 1 >= every:
            self._take_snapshot(node)

    def _take_snapshot(self, node: SimNode) -> None:
        """Snapshot the state machine at the applied index and compact the log behind it."""
        assert node.core is not None
        index = node.applied
        metadata = SnapshotMetadata()
        metadata.last_included.index = index
        metadata.last_included.term = node.log.term(index)
        metadata.membership.CopyFrom(node.core.membership_at(index))
        kv = node.kv
        data = (kv.revision, kv.compact_revision, tuple(sorted(kv.items_packed())),
                tuple(kv.changes()), tuple(kv.leases.packed()))
        metadata.checksum = hashlib.sha256(repr(data).encode()).digest()
        key = (index, metadata.last_included.term)
        other = self._snapshots.setdefault(key, (metadata.checksum, data))
        if other[0] != metadata.checksum:
            raise InvariantViolation(
                "state machine safety", node.id,
                f"snapshot at index {index} differs from another node's snapshot there",
            )
        node.log.save_snapshot(metadata)
        self.stats["snapshots_taken"] += 1

    def _snapshot_data(self, node_id: int, metadata: SnapshotMetadata) -> MvccStore:
        """The state a snapshot describes (its transfer), verified against its checksum."""
        last = metadata.last_included
        checksum, data = self._snapshots[(last.index, last.term)]
        if checksum != metadata.checksum:
            raise InvariantViolation(
                "snapshot integrity", node_id, f"snapshot at index {last.index}: checksum mismatch"
            )
        return self.store_cls.restore(*data)

    def _apply(self, node: SimNode, entry: Entry) -> None:
        self.checker.on_apply(node.id, entry, node.applied + 1)
        node.applied = entry.index
        applied = node.kv.apply(*decode_entry(entry))
        self._resolve_writes(node.id, entry.index, entry.term, applied)

    def _resolve_writes(self, node_id: int, index: int, term: int,
                        applied: Applied | None) -> None:
        """The entry at `index` on `node_id` is applied with `term`: decide writes there.
        `applied` is its outcome (None: unknown, a snapshot covered it)."""
        for write in self._writes.pop((node_id, index), []):
            if term != write.term:
                self.stats["failed_writes"] += 1
                if write.op_slot >= 0:
                    self.history[write.op_slot] = _FAILED
            else:
                if write.done is not None:
                    write.done(applied)
                if write.op_slot >= 0:
                    self._resolve_op(write.op_slot, applied)
                self._answer_forwarder(node_id, index)
            if self._client_busy.get(write.client) is write:
                self._client_done(write.client)

    def _answer_forwarder(self, node_id: int, index: int) -> None:
        """A write applied on `node_id` is answered to a follower that forwarded it (as
        the etcd API's followers do): it learns the commit of `index` from the answer,
        with the term `node_id` has now (`RaftCore.learn_commit`)."""
        core = self.nodes[node_id].core
        others = [i for i in self.ids if i != node_id]
        if core is None or not others:
            return
        rng = self._learn_rng
        to = rng.choice(others)
        self._schedule(rng.randint(1, 2 * self.max_delay), "learn_commit",
                       (to, index, core.term))

    def _resolve_covered_writes(self, node_id: int, upto: int) -> None:
        """A snapshot up to `upto` replaced the node's log: decide its writes at or below.

        The snapshot holds applied entries only, so the checker knows their terms.
        """
        for node, index in [k for k in self._writes if k[0] == node_id and k[1] <= upto]:
            self._resolve_writes(node, index, self.checker.applied_entries[index][0], None)

    def _resolve_op(self, slot: int, applied: Applied | None) -> None:
        """A history op's write took effect: it returns now (a cas with what it did)."""
        op = resolve_op(self.history[slot], applied, self.now)
        if op is not None:
            self.history[slot] = op
            self.workload.observed(op)

    def _serve_reads(self, node: SimNode) -> None:
        for ctx, read in list(node.reads.items()):
            if 0 <= read.index <= node.applied:
                del node.reads[ctx]
                if read.key == BARRIER_KEY:
                    self._barrier_reads_done.add(node.id)
                elif read.serve is not None:
                    read.serve(node.kv)
                else:
                    op = Op(read.client, "get", read.key, None, node.kv.get(read.key),
                            read.call, self.now)
                    self.history.append(op)
                    self.workload.observed(op)
                if self._client_busy.get(read.client) is read:
                    self._client_done(read.client)

    # --------------------------------------------------------------------------- network

    def _send(self, msg: Message) -> None:
        self.stats["messages"] += 1
        link = (msg.from_id, msg.to_id)
        if link in self._blocked or (self.loss and self.rng.random() < self.loss):
            self.stats["dropped"] += 1
            if msg.type == MessageType.MSG_SNAPSHOT:
                self._schedule(self.rng.randint(1, 20), "snapshot_done", (*link, False))
            return
        data = msg.SerializeToString()
        copies = 2 if self.dup and self.rng.random() < self.dup else 1
        for _ in range(copies):
            delay = self.rng.randint(1, self.max_delay)
            if self.rng.random() < 0.02 and "delay" in self.cfg.faults and not self.healing:
                delay += self.rng.randint(20, 200)  # a straggler, reordered past many others
            self._schedule(delay, "deliver", (msg.from_id, msg.to_id, data))

    # ---------------------------------------------------------------------------- faults

    def _fault(self) -> None:
        """Change the fault state at random, then schedule the next change."""
        if self.healing:
            return
        faults = self.cfg.faults
        choices = [k for k in FAULT_KINDS if k in faults]
        if self.cfg.membership:
            choices.append("member")
        if choices:
            kind = self.rng.choice(choices)
            if kind == "loss":
                self.loss = self.rng.choice((0.0, 0.0, 0.05, 0.2))
            elif kind == "dup":
                self.dup = self.rng.choice((0.0, 0.05, 0.2))
            elif kind == "delay":
                self.max_delay = self.rng.choice((2, 5, 15, 40))
            elif kind == "partition":
                self._partition(oneway=False)
            elif kind == "oneway":
                self._partition(oneway=True)
            elif kind == "crash":
                self._crash_some()
            elif kind == "member":
                self._change_membership()
            elif kind == "churn":
                self.churn_until = self.now + self.rng.randint(200, 1000)
            elif kind == "skew":
                node = self.nodes[self.rng.choice(self.ids)]
                node.period = TICK_MS + self.rng.choice((-MAX_SKEW_MS, 0, MAX_SKEW_MS))
        self._schedule(self.rng.randint(20, 250), "fault", None)

    def _leader(self) -> int | None:
        for node in self.nodes.values():
            if node.core is not None and node.core.is_leader():
                return node.id
        return None

    def _partition(self, oneway: bool, side: set[int] | None = None) -> None:
        """Cut `side` (default: chosen at random) off from the rest, for a while."""
        if len(self.ids) < 2:
            return
        self.stats["partitions"] += 1
        leader = self._leader()
        if side is None and leader is not None and self.rng.random() < 0.5:
            side = {leader}  # isolate the leader: the classic stale-leader scenario
            if len(self.ids) >= 5 and self.rng.random() < 0.5:
                side.add(self.rng.choice([i for i in self.ids if i != leader]))
        elif side is None:
            side = set(self.rng.sample(self.ids, self.rng.randint(1, len(self.ids) // 2)))
        duration = self.rng.randint(100, 1000)
        for a in side:
            for b in self.ids:
                if b in side:
                    continue
                links = [(b, a)] if oneway else [(a, b), (b, a)]
                for link in links:
                    self._blocked.add(link)
                    self._seq += 1
                    heapq.heappush(
                        self._events, (self.now + duration, self._seq, "heal_link", link)
                    )

    def _maybe_strike(self, leader: int, term: int, p: float) -> None:
        """With probability `p`, hit a brand-new leader before its no-op is replicated.

        That leaves divergent uncommitted tails of several terms on different nodes: the
        raw material of the Raft paper's Figure 8 and of stale-leader reads.
        """
        kinds = [k for k in ("crash", "partition") if k in self.cfg.faults]
        if self.now < self.churn_until:
            p = STRIKE_CHURN_P
        if kinds and not self.healing and self.rng.random() < p:
            kind = self.rng.choice(kinds)
            delay = self.rng.choice((0, self.rng.randint(1, 15)))
            self._schedule(delay, "strike", (leader, term, kind))

    def _strike(self, leader: int, term: int, kind: str) -> None:
        core = self.nodes[leader].core
        if self.healing or core is None or not core.is_leader() or core.term != term:
            return
        if kind == "crash":
            self._crash(leader)
            self._schedule(self.rng.randint(20, 500), "restart", leader)
        else:
            self._partition(oneway=False, side={leader})

    def _change_membership(self) -> bool:
        """At the leader: remove (or demote) one voter, or restore the full membership.

        Returns True when the full membership is in effect at the leader.
        """
        leader = self._leader()
        if leader is None:
            return False
        core = self.nodes[leader].core
        assert core is not None
        voters = set(core.voters)
        full = voters == set(self.ids)
        if full and self.healing:
            return True
        new = Membership()
        if full:
            victim = self.rng.choice(self.ids)
            voters.discard(victim)
            learners = {victim} if self.rng.random() < 0.5 else set()
        else:
            voters.add(self.rng.choice(sorted(set(self.ids) - voters)))
            learners = set(self.ids) - voters if self.rng.random() < 0.5 else set()
        for i in sorted(voters):
            new.voters.add(id=i, address=f"sim:{i}")
        for i in sorted(learners):
            new.learners.add(id=i, address=f"sim:{i}")
        try:
            core.propose_membership(new)
        except (NotLeader, Unavailable):
            return False
        self.stats["membership_changes"] += 1
        self._drive(self.nodes[leader])
        return False

    def _crash_some(self) -> None:
        up = [i for i in self.ids if self.nodes[i].up]
        if not up:
            return
        leader = self._leader()
        victim = leader if leader is not None and self.rng.random() < 0.4 else self.rng.choice(up)
        self._crash(victim)
        self._schedule(self.rng.randint(20, 500), "restart", victim)

    def _heal(self) -> None:
        """End every fault: links, loss, skew; restart crashed nodes; clients stop."""
        self.healing = True
        self._blocked.clear()
        self.loss = self.dup = 0.0
        self.max_delay = 5
        for node in self.nodes.values():
            node.period = TICK_MS
            if not node.up:
                self._start(node.id)

    def _settle(self) -> None:
        """After healing: a leader must appear and every pending op must complete, in bounds.

        Barrier writes push every log past the index of each pending write (so its
        outcome is decided), and one linearizable read per node proves reads work again.
        """
        leader_deadline = self.now + LEADER_BOUND_MS
        deadline = self.now + SETTLE_BOUND_MS
        next_barrier = self.now
        reads_issued: dict[int, int] = {}
        leader_seen = False
        while True:
            leader = self._leader()
            leader_seen = leader_seen or leader is not None
            if not leader_seen and self.now > leader_deadline:
                raise InvariantViolation(
                    "liveness", 0, f"no leader within {LEADER_BOUND_MS} ms after healing"
                )
            if self.now > deadline:
                raise InvariantViolation(
                    "liveness", leader or 0,
                    f"{len(self._writes)} writes, {len(self._client_busy)} client ops and reads "
                    f"on nodes {sorted(set(self.ids) - self._barrier_reads_done)} still pending "
                    f"{SETTLE_BOUND_MS} ms after healing",
                )
            done_reading = len(self._barrier_reads_done) == len(self.ids)
            if not self._writes and not self._client_busy and done_reading:
                return
            if leader is not None and self.now >= next_barrier:
                next_barrier = self.now + ELECTION_TICK * TICK_MS
                if not self.cfg.membership or self._change_membership():
                    self._barrier_write(self.nodes[leader])
            for node in self.nodes.values():
                issued = reads_issued.get(node.id)
                if node.id in self._barrier_reads_done or (
                    issued is not None and self.now - issued < CLIENT_TIMEOUT_MS
                ):
                    continue
                reads_issued[node.id] = self.now
                self._barrier_read(node)
            self._run_one()

    def _barrier_write(self, node: SimNode) -> None:
        assert node.core is not None
        try:
            node.core.propose([encode_insert(BARRIER_KEY, b"x")])
        except (NotLeader, Unavailable):
            return
        self._drive(node)

    def _barrier_read(self, node: SimNode) -> None:
        assert node.core is not None
        self._seq += 1
        ctx = f"b{self._seq}".encode()
        node.reads[ctx] = PendingRead(-node.id, BARRIER_KEY, self.now, ctx)
        try:
            node.core.read_index(ctx, lease=False)
        except (NotLeader, Unavailable):
            del node.reads[ctx]
            return
        self._drive(node)

    def _check_history(self) -> None:
        history = [op for op in self.history if op is not _FAILED]
        self.stats["unknown_writes"] = sum(1 for op in history if op.ret is None)
        self.workload.check(history)
        self.watcher.check(list(self.nodes.values()), self.stats)

    # --------------------------------------------------------------------------- clients

    def _client_act(self, client: int) -> None:
        if self.healing or client in self._client_busy:
            return
        self.watcher.maybe_pull(list(self.nodes.values()))
        choice = self.workload.choose(client)
        target = self._client_target[client]
        if not target or self.rng.random() < 0.3:
            target = self.rng.choice(self.ids)  # clients are spread over the nodes
        node = self.nodes[target]
        if not node.up:
            self._client_target[client] = 0
            self._schedule(self.rng.randint(5, 30), "client", client)
            return
        assert node.core is not None
        try:
            self.workload.act(client, node, choice)  # type: ignore[arg-type]
        except (NotLeader, Unavailable) as e:
            self._client_target[client] = getattr(e, "leader_id", 0)
            self._schedule(self.rng.randint(1, 20), "client", client)
            return
        op = self._client_busy.get(client)
        if op is None:  # served at once (a serializable read) or nothing to do
            self._schedule(self.rng.randint(1, 40), "client", client)
            return
        self._drive(node)
        self._schedule(CLIENT_TIMEOUT_MS, "client_timeout", (client, op))

    def client_propose(self, client: int, node: SimNode, command: bytes,
                       op: Op | None = None, done: Done | None = None) -> None:
        """Propose `command` for `client` on `node`; `op` goes to the history (returning
        when applied), `done` is told the outcome. Raises NotLeader / Unavailable."""
        assert node.core is not None
        log_id = node.core.propose([command])[0]
        self.stats["writes"] += 1
        slot = -1
        if op is not None:
            self.history.append(op)
            slot = len(self.history) - 1
        write = PendingWrite(client, log_id.term, slot, done)
        self._writes.setdefault((node.id, log_id.index), []).append(write)
        self._client_busy[client] = write

    def client_read(self, client: int, node: SimNode, lease: bool, key: bytes = b"",
                    serve: Callable[[MvccStore], None] | None = None) -> None:
        """A read index round on `node`, then a get of `key` (to the history) or
        `serve(store)` once applied. Raises NotLeader / Unavailable."""
        assert node.core is not None
        self._seq += 1
        ctx = f"r{self._seq}".encode()
        read = PendingRead(client, key, self.now, ctx, serve=serve)
        node.reads[ctx] = read
        self._client_busy[client] = read
        try:
            node.core.read_index(ctx, lease=lease)
        except (NotLeader, Unavailable):
            del node.reads[ctx]
            del self._client_busy[client]
            raise
        self.stats["lease_reads" if lease else "reads"] += 1

    def _client_done(self, client: int) -> None:
        del self._client_busy[client]
        self._schedule(self.rng.randint(1, 40), "client", client)


_FAILED = Op(-1, "get", BARRIER_KEY)  # placeholder for writes known not to have happened

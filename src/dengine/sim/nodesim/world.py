"""The simulated world of whole nodes: N real `Node`s, their disks, the network, the clock.

`World(config).run()` starts every node (each on its own `SimLoop`, `SimulatedDisk` and
`SimTransport`), runs clients and a fault schedule for `config.seconds` of virtual time,
heals everything, waits for the cluster to settle, reads every key once more and checks
the run (`dengine.sim.nodesim.checks`). One `random.Random(seed)` decides everything, so
a run is a function of its config: the same seed gives the same history, byte for byte.

Stepping: while some running (not paused, not dead) loop has a ready callback, one of them
(chosen by the seed) runs that callback; otherwise the clock moves to the next event: a
world event (a delivery, a client action, a fault) or a node's timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
from collections.abc import Callable
from typing import Any

from dengine.config import NodeConfig
from dengine.errors import KvError
from dengine.kv.codec import LOG_FORMAT, LOG_FORMAT_SINGLE
from dengine.node.lessor import KV_LEASE_REVOKE, Lessor, read_index_round
from dengine.node.node import Node
from dengine.node.ports import NodeEnv
from dengine.proto import Membership, WriteCommand
from dengine.proto.etcd.rpc_pb2 import LeaseRevokeRequest
from dengine.raft import Role
from dengine.sim.nodesim.admin import Admin
from dengine.sim.nodesim.checks import Checks, Violation
from dengine.sim.nodesim.clients import Clients
from dengine.sim.nodesim.config import NodeSimConfig, NodeSimResult
from dengine.sim.nodesim.disk import FencedDisk, ProcessGone
from dengine.sim.nodesim.faults import Faults
from dengine.sim.nodesim.loop import Clock, SimLoop
from dengine.sim.nodesim.net import SimNetwork, SimTransport
from dengine.storage.fileio import SimulatedCrash, SimulatedDisk

# A run that takes more callbacks than this is stuck in a busy loop (a run of 3 virtual
# seconds takes ~10,000).
MAX_STEPS = 1_000_000
# A world event: (virtual time, sequence number, callback).
_Event = tuple[float, int, Callable[[], None]]


class Member:
    """One simulated machine: its disk (kept across incarnations) and its current process."""

    def __init__(self, node_id: int, learner: bool) -> None:
        self.node_id = node_id
        self.learner = learner
        self.disk = SimulatedDisk()
        self.incarnation = 0
        self.loop: SimLoop | None = None
        self.node: Node | None = None
        self.fence: FencedDisk | None = None
        self.transport: SimTransport | None = None
        self.paused = False
        self.held: list[tuple[int, bytes]] = []  # deliveries waiting while paused
        self.slow = 1.0  # disk latency factor (the `slow` fault)
        # The node's monotonic clock: offset + rate * (world time - base) (`skew`).
        self.clock_offset = 0.0
        self.clock_rate = 1.0
        self.clock_base = 0.0
        self.start_task: Any = None
        self.joining = False  # a new machine joining (`--membership`)
        self.retired = False  # removed from the cluster and replaced: never started again
        self.lessor: Lessor | None = None  # the running incarnation's (`dengine serve`'s)
        # It runs the older release (`--upgrade`): no batch entries, log format 1.
        self.older = False

    @property
    def up(self) -> bool:
        return self.node is not None

    @property
    def running(self) -> bool:
        return self.node is not None and not self.paused


class World:
    """See the module docstring."""

    def __init__(self, config: NodeSimConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.clock = Clock()
        self._events: list[_Event] = []
        self._seq = itertools.count()
        self.steps = 0
        self.stats: dict[str, int] = {}
        voters = range(1, config.nodes + 1)
        learners = range(config.nodes + 1, config.nodes + config.learners + 1)
        self.members = {i: Member(i, False) for i in voters}
        self.members.update({i: Member(i, True) for i in learners})
        self._ids_used = set(self.members)
        if config.upgrade:  # every voter but node 1 starts on the older release
            for i in voters[1:]:
                self.members[i].older = True
        self.net = SimNetwork(random.Random(self.rng.random()), self.after, self._deliver)
        self.checks = Checks(self)
        self.clients = Clients(self, random.Random(self.rng.random()))
        self.faults = Faults(self, random.Random(self.rng.random()))
        self.admin = Admin(self, random.Random(self.rng.random()))
        self._node_class = config.node_class()
        self._core = config.core_factory()
        self._disk_class = config.disk_class()
        self._loop_rng = random.Random(self.rng.random())
        self._failure: Violation | None = None
        self._dead_loops: list[SimLoop] = []
        self.jumps: list[tuple[int, float, float]] = []  # (node, world time, seconds)

    # -- the clock and world events -----------------------------------------------------

    @property
    def now_ms(self) -> float:
        return self.clock.now * 1000.0

    def after(self, delay_s: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._events, (self.clock.now + delay_s, next(self._seq), callback))

    @staticmethod
    def data_dir(m: Member) -> str:
        return f"/sim/n{m.node_id}"

    def count(self, what: str, n: int = 1) -> None:
        self.stats[what] = self.stats.get(what, 0) + n

    # -- nodes ----------------------------------------------------------------------------

    def node_config(self, m: Member) -> NodeConfig:
        voters = range(1, self.config.nodes + 1)
        peers = {i: f"sim-peer-{i}:1" for i in voters if i != m.node_id}
        return NodeConfig(
            data_dir=self.data_dir(m), node_id=m.node_id, cluster_id="sim",
            listen_peer=f"sim-peer-{m.node_id}:1", listen_client=f"sim-client-{m.node_id}:1",
            peers=peers, join="sim-peer-1:1" if m.learner or m.joining else "", auto_promote=False,
            tick_ms=10, election_timeout_ms=100, heartbeat_interval_ms=20, clock_drift_ms=20,
            snapshot_threshold_entries=self.config.snapshot_entries,
            wal_checkpoint_bytes=self.config.checkpoint_bytes,
            log_segment_bytes=self.config.segment_bytes,
            batch_writes=self.config.batches and not m.older,
        )

    def start(self, m: Member) -> None:
        """Start a new incarnation of `m`'s node process on its disk."""
        assert m.node is None
        if m.retired:
            return  # a restart scheduled before it was retired
        m.incarnation += 1
        rng = random.Random(self.rng.random())
        fast = self.config.disk_latency_ms

        def latency() -> float:
            return rng.uniform(0.01, fast) * m.slow / 1000.0

        world_clock = self.clock

        def node_clock() -> float:
            return m.clock_offset + m.clock_rate * (world_clock.now - m.clock_base)

        loop = SimLoop(self.clock, latency)
        loop.set_exception_handler(lambda _, context: self._loop_error(m, loop, context))
        fence = self._disk_class(m.disk, lambda: self.power_cut(m))
        holder: dict[str, SimTransport] = {}
        older = m.older
        self.net.log_formats[m.node_id] = LOG_FORMAT_SINGLE if older else LOG_FORMAT

        def received_batch(src: int) -> None:
            raise Violation("log format", m.node_id, f"node {m.node_id}, of the older "
                            f"release, received from node {src} an append carrying a batch "
                            "entry (it would apply it as one rejected command and diverge)")

        def make_transport(**kwargs: Any) -> SimTransport:
            transport = SimTransport(self.net, fence, **kwargs)
            if older:
                transport.on_batch = received_batch
            holder["t"] = transport
            return transport

        env = NodeEnv(clock=node_clock, fileio=fence, rng=random.Random(rng.random()),
                      transport=make_transport, core=self._core, background_checkpoints=False,
                      real_threads=False)
        node = self._node_class(self.node_config(m), env)
        node.world = self  # type: ignore[attr-defined]
        m.loop, m.node, m.fence, m.paused, m.held = loop, node, fence, False, []
        self.count("starts")

        async def start() -> None:
            await node.start()
            m.transport = holder.get("t")
            m.lessor = self._lessor(m, node, node_clock)
            await node.wait_failure()
            # A storage failure (EIO, disk full) stops the node; `dengine serve` then
            # exits, and the machine's supervisor starts it again.
            self.after(0.0, lambda: self._exited(m, node))

        m.start_task = loop.create_task(start())
        m.start_task.add_done_callback(lambda t: self._started(m, node, t))

    def upgrade(self, m: Member) -> None:
        """A rolling upgrade's step (`--upgrade`): `m`'s process is stopped and started
        again at once on this release (if it is down, its next start is)."""
        if m.retired or not m.older:
            return
        m.older = False
        self.count("upgrades")
        if m.node is not None:
            self.stop(m, "upgrade_stops")
            self.after(0.02, lambda: self.start(m) if m.node is None else None)

    def replace(self, m: Member) -> Member:
        """Retire `m` (removed from the cluster) and start a new machine, with the next
        node id and an empty disk, that joins the cluster."""
        self.retire(m)
        return self.new_machine()

    def retire(self, m: Member) -> None:
        """`m` was removed from the cluster: stopped, never started again."""
        self.stop(m, "retired")
        m.retired = True
        del self.members[m.node_id]

    def new_machine(self) -> Member:
        """Start a new machine, with the next node id and an empty disk, that joins."""
        new = Member(max(self._ids_used) + 1, False)
        self._ids_used.add(new.node_id)
        new.joining = True
        self.members[new.node_id] = new
        self.start(new)
        return new

    def _exited(self, m: Member, node: Node) -> None:
        if m.node is node:
            self.stop(m, "storage_failures")
            self.after(self.rng.uniform(0.05, 0.3),
                       lambda: self.start(m) if m.node is None else None)

    def set_clock_rate(self, m: Member, rate: float) -> None:
        """Change how fast `m`'s clock runs from now on (it stays monotonic)."""
        now = self.clock.now
        m.clock_offset += m.clock_rate * (now - m.clock_base)
        m.clock_base, m.clock_rate = now, rate

    def jump_clock(self, m: Member, seconds: float) -> None:
        """`m`'s clock jumps `seconds` forward at once."""
        m.clock_offset += seconds
        self.jumps.append((m.node_id, self.clock.now, seconds))

    def _lessor(self, m: Member, node: Node, clock: Callable[[], float]) -> Lessor:
        """The lease expiry clock `dengine serve` runs beside the node (its `Engine`'s), on
        the node's clock; its expiry revokes that commit are shown to the lease check."""
        async def propose(field: int, request: bytes) -> Any:
            assert field == KV_LEASE_REVOKE
            lease_id = LeaseRevokeRequest.FromString(request).ID
            proposed = self.clock.now
            command = WriteCommand(lease_revoke=request).SerializeToString()
            result = (await node.propose([command], 1.0))[0]
            if not isinstance(result.response, KvError):  # not revoked already
                self.checks.expiry_committed(m.node_id, lease_id, proposed)
            return result

        config = node.config
        lessor = self.config.lessor_class()(
            election_timeout_s=config.election_timeout_ms / 1000.0,
            is_leader=lambda: node.role is Role.LEADER, term=lambda: node.term,
            applied_index=lambda: node.applied_index,
            last_index=lambda: node.status().last_log_index,
            read_local=node.query_local, propose=propose, confirm=read_index_round(node),
            not_leader=node.not_leader, clock=clock,
        )
        lessor.start()
        return lessor

    def _loop_error(self, m: Member, loop: SimLoop, context: dict[str, Any]) -> None:
        """An exception no one handled in a node's loop: a check that failed, or a bug."""
        error = context.get("exception")
        if isinstance(error, Violation):
            self._failure = self._failure or error
        elif m.loop is loop and not isinstance(error, ProcessGone | SimulatedCrash):
            self._failure = self._failure or Violation(
                "exception", m.node_id, f"{context.get('message')}: {error!r}")

    def _started(self, m: Member, node: Node, task: Any) -> None:
        if m.node is not node or task.cancelled():
            return
        error = task.exception()
        if error is None:
            return
        if m.fence is not None and not m.fence.alive:
            return  # power cut or killed while starting
        if m.fence is not None and m.fence.error_fired:
            # The disk error armed by `diskerr` hit the start itself: `dengine serve`
            # exits, and the supervisor starts it again (as after a failure while running).
            self._exited(m, node)
            return
        raise Violation("recovery", m.node_id,
                        f"node {m.node_id} could not restart: {type(error).__name__}: {error}")

    def stop(self, m: Member, why: str) -> None:
        """The process dies at once (kill -9, or the power goes): nothing of it runs again."""
        if m.node is None:
            return
        assert m.fence is not None and m.loop is not None
        m.fence.alive = False
        if m.transport is not None:
            m.transport.closed = True
        loop = m.loop
        self._count_snapshots(m.node)
        m.node = m.loop = m.fence = m.transport = m.lessor = None
        m.paused, m.held = False, []
        # Closed after the callback running now (it may be this node's own, which the
        # power cut interrupted); its tasks are then dropped without running again.
        self._dead_loops.append(loop)
        self.clients.node_gone(m.node_id)
        self.count(why)

    def _count_snapshots(self, node: Node) -> None:
        snaps = getattr(node, "_snaps", None)  # absent if it died while starting
        if snaps is not None:
            self.count("snapshots_taken", snaps.taken)
            self.count("snapshots_installed", snaps.installed)

    def power_cut(self, m: Member) -> None:
        """Power loss: the process dies and the disk loses or tears what was not synced."""
        self.stop(m, "power_cuts")
        m.disk.power_cut(random.Random(self.rng.random()))
        self.faults.cut_happened(m)

    # -- delivery ---------------------------------------------------------------------------

    def _deliver(self, src: int, dst: int, data: bytes) -> None:
        m = self.members.get(dst)
        if m is None or m.node is None:
            self.net.stats["down"] = self.net.stats.get("down", 0) + 1
            return
        if m.paused:
            m.held.append((src, data))
            return
        transport = m.transport
        if transport is None or m.loop is None:
            return  # still starting: like a connection not accepted yet
        m.loop.call_soon(transport.receive, src, data)

    def resume(self, m: Member) -> None:
        if not m.paused:
            return
        m.paused = False
        held, m.held = m.held, []
        for src, data in held:
            self._deliver(src, m.node_id, data)

    def call_on(self, m: Member, fn: Callable[..., Any], *args: Any) -> bool:
        """Run `fn(*args)` as a callback of `m`'s loop; False if the node is down."""
        if m.loop is None:
            return False
        m.loop.call_soon(fn, *args)
        return True

    # -- running -----------------------------------------------------------------------------

    def step_until(self, t_end: float, done: Callable[[], bool] | None = None) -> bool:
        """Run until virtual time `t_end` (or until `done()`); whether `done` held."""
        all_members = self.members
        check_leaders = self.checks.leaders
        choose = self._loop_rng.choice
        while True:
            members = list(all_members.values())  # --membership replaces machines
            ready = [m for m in members if m.running and m.loop is not None and m.loop.has_ready()]
            if ready:
                m = ready[0] if len(ready) == 1 else choose(ready)
                loop = m.loop
                assert loop is not None
                loop.run_one()
                self.steps += 1
                if self.steps > MAX_STEPS:
                    raise Violation("runaway", m.node_id,
                                    f"{MAX_STEPS} callbacks by {self.clock.now:.3f} s")
                if self._dead_loops:
                    self._bury()
                if self._failure is not None:
                    raise self._failure
                node = m.node
                if node is not None and node.role is Role.LEADER:
                    check_leaders(node)
                continue
            if done is not None and done():
                return True
            # Nothing ready: move the clock to the next event.
            nxt = self._events[0][0] if self._events else None
            timer_member = None
            for m in members:
                if m.running and m.loop is not None:
                    t = m.loop.next_timer()
                    if t is not None and (nxt is None or t < nxt):
                        nxt, timer_member = t, m
            if nxt is None or nxt > t_end:
                self.clock.now = max(self.clock.now, t_end)
                return done() if done is not None else False
            self.clock.now = max(self.clock.now, nxt)
            if timer_member is not None:
                for m in members:
                    if m.running and m.loop is not None:
                        m.loop.release_due()
            else:
                _, _, callback = heapq.heappop(self._events)
                callback()
                self.steps += 1
                if self._dead_loops:
                    self._bury()
                if self._failure is not None:
                    raise self._failure

    def _bury(self) -> None:
        dead, self._dead_loops = self._dead_loops, []
        for loop in dead:
            # Its tasks never run again: close their coroutines now, quietly (a dead
            # process's code does nothing more: a `finally` that touches the disk meets
            # the fence).
            for task in asyncio.all_tasks(loop):
                task._log_destroy_pending = False  # type: ignore[attr-defined]
                with contextlib.suppress(BaseException):
                    task.get_coro().close()
            loop.close()

    def leader(self) -> Member | None:
        """The running node that leads at the highest term, if any."""
        best: tuple[int, Member] | None = None
        for m in self.members.values():
            node = m.node
            if m.running and node is not None and node.role is Role.LEADER and node.running:
                term = node.status().term
                if best is None or term > best[0]:
                    best = (term, m)
        return best[1] if best is not None else None

    def add_learners(self) -> None:
        """Admin: add the configured learners, one configuration change at a time."""
        want = [m for m in self.members.values() if m.learner]
        if not want:
            return
        lead = self.leader()
        if lead is not None and lead.node is not None and lead.node.running:
            node = lead.node
            have = {x.id for x in (*node.members.copy().voters, *node.members.copy().learners)}
            missing = [m for m in want if m.node_id not in have]
            if missing:
                target = missing[0]

                def propose() -> None:
                    if not node.running or node.role is not Role.LEADER:
                        return
                    membership = Membership()
                    membership.CopyFrom(node.members.copy())
                    membership.learners.add(id=target.node_id,
                                            address=f"sim-peer-{target.node_id}:1")
                    try:
                        done = node.members.change(membership, 1.0)
                    except Exception:
                        return
                    done.add_done_callback(lambda f: f.cancelled() or f.exception())
                    self.count("learners_proposed")

                self.call_on(lead, propose)
        self.after(0.1, self.add_learners)

    def run(self) -> NodeSimResult:
        try:
            return self._run()
        finally:
            for m in self.members.values():
                if m.node is not None:
                    self.stop(m, "end")
            self._bury()

    def _run(self) -> NodeSimResult:
        config = self.config
        violation: Violation | None = None
        try:
            for m in self.members.values():
                self.start(m)
            self.after(0.05, self.add_learners)
            self.clients.start()
            self.faults.start(config.seconds)
            if config.membership:
                self.admin.start()
            if config.upgrade:  # its own generator: the other draws stay the same
                rng = random.Random(f"upgrade-{config.seed}")
                older = [m for m in self.members.values() if m.older]
                times = sorted(rng.uniform(0.1, 0.9) * config.seconds for _ in older)
                for t, m in zip(times, rng.sample(older, len(older)), strict=True):
                    self.after(t, lambda m=m: self.upgrade(m))  # type: ignore[misc]
            self.step_until(config.seconds)
            self.faults.heal()
            self.admin.stop()
            self.clients.stop()
            self.checks.settle()
            self.clients.final_reads()
            self.checks.leases_expire()
            self.checks.at_end()
        except Violation as v:
            violation = v
        stats = dict(self.stats)
        for m in self.members.values():
            snaps = getattr(m.node, "_snaps", None)
            if snaps is not None:
                stats["snapshots_taken"] = stats.get("snapshots_taken", 0) + snaps.taken
                stats["snapshots_installed"] = (stats.get("snapshots_installed", 0)
                                                + snaps.installed)
        stats.update({f"net_{k}": v for k, v in self.net.stats.items()})
        stats.update(self.clients.stats)
        stats["steps"] = self.steps
        return NodeSimResult(config, violation, self.clients.history_lines(), stats,
                             self.clock.now)

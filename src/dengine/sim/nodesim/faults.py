"""The fault schedule of a whole-node run, drawn from the seed.

Every 20-250 ms of the run one fault of the enabled kinds starts (and undoes itself
later); `strike` is drawn three times as often as each other kind:

* `net`: new network settings: loss 0-20 %, duplication 0-10 %, delays up to 1-30 ms,
  stragglers (20-200 ms: reordering) 0-5 %;
* `partition`: a node (the leader half the time) cut off both ways for 50-600 ms;
* `oneway`: one direction of one or two links blocked for 50-600 ms;
* `kill`: a node's process dies (kill -9: its disk keeps everything written, synced or
  not), restarted 10-300 ms later;
* `power`: a node loses power at its n-th next disk operation (n = 1-6: inside an append,
  between a write and its fsync...) or within 50 ms, whichever first; unsynced data and
  directory entries are lost or torn; restarted 10-300 ms later;
* `power_all`: every node loses power within 0-15 ms of the first (a rack), the first one
  during a disk operation; all restart 20-300 ms later;
* `pause`: a node stops running (SIGSTOP) for 20-400 ms; what reaches it waits;
* `strike`: correlated failures around the leader: either a follower gets each append
  twice, the copy late (behind newer ones), or it loses power while it writes an append
  it may have acknowledged; the followers that would make a majority
  without it starved of appends, and the leader killed or cut 1-2.5 network delays later;
  or the leader reaches no other voter (learners excepted) and goes down a few delays
  later (what makes a lost acknowledgement or a wrong commit count matter);
* `diskerr`: one of a node's next 1-20 disk writes, fsyncs, renames... fails with EIO or
  ENOSPC: the node stops (fatal storage failure), its process exits and is restarted
  50-300 ms later;
* `slow`: a node's disk (its log, apply and snapshot threads' jobs) 5-50x slower for
  100-500 ms;
* `freeze`: a node (the leader 80 % of the time) stops (SIGSTOP) for 250-600 ms while
  its peers give up on it: what they send it meanwhile is lost, and they reach it again
  only 30-150 ms after it resumes (a frozen VM whose connections were reset). A leader
  then resumes believing it still leads; only its clock says its lease is over;
* `jump`: a node's clock jumps 20-300 ms forward (a VM's clock catching up), at most one
  node in any 400 ms: within the lease rules (a lone early timer meets the others' vote
  leases);
* `snapcut`: a node loses power at the n-th disk operation (n = 1-16) from the next one
  that touches its snapshot directory: while it writes a snapshot, receives one (the
  partial file, its rename), installs it (the state machine, then the log) or prunes
  old ones; restarted 30-200 ms after the cut;
* `bitrot`: silent media corruption: once the next snapshot transfer (to any node) has
  stored some chunks, one byte of the receiver's partial file flips (in its written and
  its durable bytes alike); the receiver's SHA-256 must refuse the file;
* `skew`: a node's clock runs 0-10 % fast or slow from now on (within the drift bound the
  lease allows for; the clock stays monotonic).

`heal` ends them all: links unblocked, network clean, paused nodes resumed, dead ones
restarted. Counters (`World.stats`) show what each seed exercised.
"""

from __future__ import annotations

import errno
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from dengine.sim.nodesim.net import NetFaults

if TYPE_CHECKING:
    from dengine.sim.nodesim.world import Member, World


class Faults:
    def __init__(self, world: World, rng: random.Random) -> None:
        self.world = world
        self.rng = rng
        # Strikes, which the subtle bugs need, are drawn three times as often as the rest.
        self.kinds = [k for k in sorted(world.config.faults)
                      for _ in range(3 if k == "strike" else 1)]
        self._until = 0.0
        self._healed = False
        self._after_cut: dict[int, Callable[[], None]] = {}
        self._jumped_at = -1.0

    def start(self, seconds: float) -> None:
        self._until = seconds
        if self.kinds:
            self._later(self.rng.uniform(0.1, 0.3), self._tick)

    def _tick(self) -> None:
        world = self.world
        if self._healed or world.clock.now >= self._until:
            return
        kind = self.rng.choice(self.kinds)
        getattr(self, "_" + kind)()
        world.count("fault_" + kind)
        self._later(self.rng.uniform(0.02, 0.25), self._tick)

    # -- helpers

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        """`fn` after `delay`, unless everything was healed meanwhile."""
        def run() -> None:
            if not self._healed:
                fn()
        self.world.after(delay, run)

    def _victim(self, leader_bias: float = 0.5) -> Member | None:
        world = self.world
        up = [m for m in world.members.values() if m.node is not None]
        if not up:
            return None
        lead = world.leader()
        if lead is not None and self.rng.random() < leader_bias:
            return lead
        return self.rng.choice(up)

    def _restart_later(self, m: Member, lo: float, hi: float) -> None:
        def restart() -> None:
            if m.node is None and not self._healed:
                self.world.start(m)
        self._later(self.rng.uniform(lo, hi), restart)

    def _heal_links(self, pairs: set[tuple[int, int]], lo: float, hi: float) -> None:
        def heal() -> None:
            self.world.net.faults.blocked -= pairs
        self._later(self.rng.uniform(lo, hi), heal)

    # -- the kinds

    def _net(self) -> None:
        rng = self.rng
        self.world.net.faults = NetFaults(
            loss=rng.choice((0.0, 0.0, 0.02, 0.1, 0.2)), dup=rng.choice((0.0, 0.02, 0.1)),
            max_delay_ms=rng.choice((1.0, 5.0, 10.0, 30.0)),
            straggler=rng.choice((0.0, 0.0, 0.01, 0.05)),
            blocked=self.world.net.faults.blocked, echo=self.world.net.faults.echo,
        )

    def _partition(self) -> None:
        m = self._victim()
        if m is None:
            return
        others = [i for i in self.world.members if i != m.node_id]
        pairs = {(m.node_id, o) for o in others} | {(o, m.node_id) for o in others}
        self.world.net.faults.blocked |= pairs
        self._heal_links(pairs, 0.05, 0.6)

    def _oneway(self) -> None:
        ids = sorted(self.world.members)
        if len(ids) < 2:
            return
        pairs = set()
        for _ in range(self.rng.randint(1, 2)):
            a, b = self.rng.sample(ids, 2)
            pairs.add((a, b))
        self.world.net.faults.blocked |= pairs
        self._heal_links(pairs, 0.05, 0.6)

    def _kill(self) -> None:
        m = self._victim()
        if m is None:
            return
        self.world.stop(m, "kills")
        self._restart_later(m, 0.01, 0.3)

    def _power(self) -> None:
        m = self._victim(0.3)
        if m is None:
            return
        self._arm(m)
        self._restart_later(m, 0.06, 0.35)

    def _arm(self, m: Member, ops: int = 0) -> None:
        fence = m.fence
        if fence is None:
            return
        fence.arm(ops or self.rng.randint(1, 6))

        def fallback() -> None:
            if m.fence is fence and fence.alive:
                self.world.power_cut(m)
        self._later(self.rng.uniform(0.0, 0.05), fallback)

    def _power_all(self) -> None:
        world = self.world
        up = [m for m in world.members.values() if m.node is not None]
        if not up:
            return
        first = self.rng.choice(up)
        self._arm(first)
        for m in up:
            if m is not first:
                def cut(m: Member = m) -> None:
                    if m.node is not None:
                        world.power_cut(m)
                self._later(self.rng.uniform(0.0, 0.015), cut)
        lo = self.rng.uniform(0.02, 0.3)
        for m in world.members.values():
            self._restart_later(m, lo + 0.05, lo + 0.1)

    def _pause(self) -> None:
        m = self._victim()
        if m is None or m.paused:
            return
        m.paused = True
        world = self.world

        def resume(node: object = m.node) -> None:
            if m.node is node:
                world.resume(m)
        self._later(self.rng.uniform(0.02, 0.4), resume)

    def _diskerr(self) -> None:
        m = self._victim(0.3)
        if m is None or m.fence is None:
            return
        m.fence.arm_error(self.rng.randint(1, 20),
                          errno.EIO if self.rng.random() < 0.5 else errno.ENOSPC)

    def _slow(self) -> None:
        m = self._victim(0.3)
        if m is None:
            return
        m.slow = self.rng.uniform(5.0, 50.0)

        def fast() -> None:
            m.slow = 1.0
        self._later(self.rng.uniform(0.1, 0.5), fast)

    def _freeze(self) -> None:
        m = self._victim(0.8)
        if m is None or m.paused:
            return
        world = self.world
        m.paused = True
        inbound = {(o, m.node_id) for o in world.members if o != m.node_id}
        world.net.faults.blocked |= inbound
        node = m.node
        frozen = self.rng.uniform(0.25, 0.6)

        def resume() -> None:
            if m.node is node:
                world.resume(m)
        self._later(frozen, resume)
        self._heal_links(inbound, frozen + 0.03, frozen + 0.15)

    def _jump(self) -> None:
        now = self.world.clock.now
        if now < self._jumped_at + 0.4:
            return
        m = self._victim(0.5)
        if m is None:
            return
        self._jumped_at = now
        self.world.jump_clock(m, self.rng.uniform(0.02, 0.3))

    def _snapcut(self) -> None:
        if self.rng.random() < 0.5:
            # The next node a snapshot chunk is sent to, while it stores the transfer: its
            # partial file, torn, is resumed after the restart.
            n = self.rng.randint(1, 4)

            def on_chunk(src: int, dst: int) -> bool:
                m = self.world.members.get(dst)
                if m is None or m.fence is None:
                    return False  # the next chunk
                self._arm_snapshot(m, n, "/incoming-", "snapshot_cuts_receiving")
                return True
            self.world.net.chunk_hooks.append(on_chunk)
            return
        m = self._victim(0.3)
        if m is not None and m.fence is not None:
            self._arm_snapshot(m, self.rng.randint(1, 16), "/snapshots/", "snapshot_cuts")

    def _arm_snapshot(self, m: Member, n: int, marker: str, counter: str) -> None:
        fence = m.fence
        assert fence is not None
        fence.arm_snapshot(n, marker)

        def after() -> None:
            if fence.in_snapshot:
                self.world.count(counter)
            self._restart_later(m, 0.03, 0.2)
        self._after_cut[m.node_id] = after

    def _bitrot(self) -> None:
        rng = self.rng

        def on_chunk(src: int, dst: int) -> bool:
            m = self.world.members.get(dst)
            if m is None or m.node is None:
                return False
            root = f"{self.world.data_dir(m)}/snapshots"
            disk = m.disk
            parts = [f"{root}/{d}/snapshot.part" for d in sorted(disk.listdir(root))
                     if d.startswith("incoming-")] if disk.exists(root) else []
            parts = [p for p in parts if disk.exists(p) and disk.size(p) > 0]
            if not parts:
                return False  # the next chunk
            path = rng.choice(parts)
            disk.flip(path, rng.randrange(disk.size(path)), 1 << rng.randrange(8))
            self.world.count("snapshot_bitrot")
            return True
        self.world.net.chunk_hooks.append(on_chunk)

    def _skew(self) -> None:
        """A node's clock runs 0-10 % fast or slow (within the lease's drift bound)."""
        m = self._victim(0.5)
        if m is None:
            return
        self.world.set_clock_rate(m, self.rng.uniform(0.9, 1.1))

    def _strike(self) -> None:
        """Correlated failures around the leader (module docstring)."""
        world = self.world
        lead = world.leader()
        if lead is None:
            return
        rng = self.rng
        voters = sorted(m.node_id for m in world.members.values()
                        if not m.learner and m is not lead)
        if not voters:
            return
        delay = world.net.faults.max_delay_ms / 1000.0
        r = rng.random()
        if r < 0.25:
            # One follower gets every append twice, the copy late (behind newer ones);
            # the followers that would make a majority without it are starved of appends,
            # and the leader goes down within a network delay of a late copy's arrival.
            world.count("strike_echo")
            echoed = rng.choice(voters)
            keep = rng.sample([v for v in voters if v != echoed], world.config.nodes // 2 - 1)
            starved = {(lead.node_id, v) for v in voters if v != echoed and v not in keep}
            link = (lead.node_id, echoed)
            world.net.faults.echo.add(link)
            copies = rng.randint(1, 6)

            def echoed_one(src: int, dst: int) -> None:
                nonlocal copies
                if (src, dst) != link or link not in world.net.faults.echo:
                    return
                copies -= 1
                if copies <= 0:
                    world.net.faults.echo.discard(link)
                    self._later(rng.uniform(0.0, delay + 0.001), lambda: self._down(lead))
            world.net.on_echo = echoed_one

            def quiet() -> None:
                world.net.faults.echo.discard(link)
            self._later(0.3, quiet)
        elif r < 0.7:
            # One follower acknowledges the next append and loses power while it writes
            # it; the followers that would make a majority without it do not get it.
            world.count("strike_ack")
            acker = rng.choice(voters)
            keep = rng.sample([v for v in voters if v != acker], world.config.nodes // 2 - 1)
            starved = {(lead.node_id, v) for v in voters if v != acker and v not in keep}
            target = world.members[acker]
            self._after_cut[acker] = lambda: self._later(
                rng.uniform(1.2 * delay, 2.5 * delay + 0.004), lambda: self._down(lead))
            self._arm(target, rng.randint(1, 3))
            self._restart_later(target, 0.03, 0.2)
        else:
            # The leader reaches no other voter (learners, if any, still get its appends).
            world.count("strike_isolate")
            starved = {(lead.node_id, v) for v in voters}
            self._later(rng.uniform(2.5 * delay, 6 * delay + 0.01), lambda: self._down(lead))
        world.net.faults.blocked |= starved
        self._heal_links(starved, 0.1, 0.3)

    def _down(self, m: Member) -> None:
        """Kill `m` or cut its power, and restart it later."""
        if m.node is None:
            return
        if self.rng.random() < 0.5:
            self.world.stop(m, "kills")
        else:
            self.world.power_cut(m)
        self._restart_later(m, 0.1, 0.3)

    def cut_happened(self, m: Member) -> None:
        """The world: `m` just lost power."""
        then = self._after_cut.pop(m.node_id, None)
        if then is not None:
            then()

    # -- the end

    def heal(self) -> None:
        world = self.world
        self._healed = True
        world.net.faults = NetFaults()
        world.net.on_echo = None
        world.net.chunk_hooks = []
        for m in world.members.values():
            m.slow = 1.0
            world.set_clock_rate(m, 1.0)
            if m.fence is not None:
                m.fence.arm(None)
            if m.paused:
                world.resume(m)
            if m.node is None:
                world.start(m)

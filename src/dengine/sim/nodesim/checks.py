"""What a whole-node run must hold, checked as it runs and at its end.

During the run:

* election safety: at most one node leads in each term (the cores' own role and term,
  after every callback a node runs);
* state machine safety: an entry applied anywhere at an index is the entry (term and
  bytes) every other node applied there (`SimNode._on_applied`);
* membership steps: a configuration applied anywhere differs from the one before it in
  the log by at most one voter (single-server changes: every majority of the old
  voters meets every majority of the new ones);
* leases: no lease expires early: an expiry revoke that commits was proposed no sooner
  than the lease's last keep-alive answered (or its grant acknowledged) + its TTL over
  the fastest clock rate (1.1), less the forward jumps of the expiring node's clock
  since, less 10 ms. A revoke that never commits harms no one: a deposed leader that has
  not noticed yet proposes some, and they are lost when the new leader commits its term;
* recovery: a node restarted after a kill or a power cut starts (never refuses);
* no unhandled exception in any node's loop.

At the end, after every fault is healed and every node restarted:

* liveness: within 5 s a leader exists, a membership change cycle under way has
  completed, and every node has applied all it committed;
* lease expiry (liveness): once the clients stop keeping leases alive, within TTL + 1 s
  every lease is revoked (by the settled leader's lessor) and every node applied it;
* state machines equal: nodes at the same applied index hold the same store
  (revision, keys, history);
* linearizability: the clients' history (writes, linearizable and lease reads, and a
  final linearizable read of every key) passes `dengine.sim.lincheck`; an acknowledged
  write a power cut ate shows up there;
* eventual reads: every value an eventual read returned was written by some client;
* lease keys: in every node's store, every key bound to a lease is bound to a lease of
  its lease table (a revoke, by a client or on expiry, deleted the lease's keys);
* compaction: a read at a past revision that returned a value returned the key's value
  at that revision (as a replay of the committed log without compactions gives it); one
  that failed with etcd's "required revision has been compacted" came after a compaction
  above that revision was asked for (done or of unknown outcome); and one called after a
  compaction above its revision was acknowledged failed so (linearizable and lease reads).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from dengine.kv import OP_BATCH, batch_ops, decode_entry
from dengine.kv.codec import OP_COMPACTION
from dengine.kv.etcd_check import COMPACTED
from dengine.kv.mvcc import MvccStore
from dengine.proto import Entry, Membership
from dengine.sim import lincheck
from dengine.sim.nodesim.clients import LEASE_TTL

if TYPE_CHECKING:
    from dengine.node.node import Node
    from dengine.sim.nodesim.world import World

SETTLE_S = 5.0
_LEASE_OF = struct.Struct("<qqqq")  # a packed key's create, mod revision, version, lease


class Violation(Exception):
    """A check failed: which, on which node, and what was seen."""

    def __init__(self, invariant: str, node: int, detail: str) -> None:
        super().__init__(f"{invariant} on node {node}: {detail}")
        self.invariant = invariant
        self.node = node
        self.detail = detail

    def __reduce__(self) -> tuple[type[Violation], tuple[str, int, str]]:
        # Results cross process boundaries (`--jobs`): pickle by the constructor's arguments.
        return (Violation, (self.invariant, self.node, self.detail))


class Checks:
    def __init__(self, world: World) -> None:
        self.world = world
        self.leader_of: dict[int, int] = {}  # term -> the node that led in it
        self.applied: dict[int, tuple[int, bytes, int]] = {}  # index -> (term, bytes, node)
        self.configs: dict[int, frozenset[int]] = {}  # index of a config entry -> its voters
        # The committed log replayed in index order without its compactions: every past
        # revision's value (fed as the entries are first applied anywhere).
        self.oracle = MvccStore()
        self._oracle_index = 0
        self._oracle_waiting: dict[int, Entry] = {}
        self.renewed: dict[int, float] = {}  # lease -> its last keep-alive (world seconds)

    # -- during the run

    def leaders(self, node: Node) -> None:
        core = node._core
        if core is None or not core.is_leader():
            return
        term = core.term
        other = self.leader_of.setdefault(term, node.node_id)
        if other != node.node_id:
            raise Violation("election safety", node.node_id,
                            f"nodes {other} and {node.node_id} both lead term {term}")

    def on_applied(self, node_id: int, entries: list[Entry]) -> None:
        applied = self.applied
        for e in entries:
            data = e.payload.SerializeToString()
            seen = applied.get(e.index)
            if seen is None:
                applied[e.index] = (e.term, data, node_id)
                if e.payload.HasField("config"):
                    self._config_step(node_id, int(e.index), e.payload.config)
                self._oracle_waiting[e.index] = e
            elif seen[0] != e.term or seen[1] != data:
                other = "" if seen[1] == data else ", other bytes"
                raise Violation(
                    "state machine safety", node_id,
                    f"applied (index {e.index}, term {e.term}) where node {seen[2]} applied "
                    f"(index {e.index}, term {seen[0]}){other}")
        waiting = self._oracle_waiting
        while self._oracle_index + 1 in waiting:
            self._oracle_index += 1
            op, key, value = decode_entry(waiting.pop(self._oracle_index))
            if op == OP_BATCH:  # its commands in order, each its own revision
                for item in batch_ops(value):
                    self.oracle.apply(*item)
            elif op != OP_COMPACTION:
                self.oracle.apply(op, key, value)

    def kept_alive(self, lease: int, at: float) -> None:
        self.renewed[lease] = max(at, self.renewed.get(lease, 0.0))

    def expiry_committed(self, node_id: int, lease: int, proposed: float) -> None:
        """`node_id`'s lessor proposed at `proposed` (world seconds) to revoke `lease`,
        expired by its clock, and the revoke committed."""
        world = self.world
        world.count("lease_expiry_revokes")
        renewed = self.renewed.get(lease)
        if renewed is None:
            return  # its grant's outcome was unknown to the client: never kept alive
        now = proposed
        jumped = sum(s for n, t, s in world.jumps if n == node_id and t > renewed)
        earliest = renewed + LEASE_TTL / 1.1 - jumped - 0.01
        if now < earliest:
            raise Violation("lease expiry", node_id,
                            f"lease {lease:x} expired at {now * 1000:.1f} ms, kept alive at "
                            f"{renewed * 1000:.1f} ms (TTL {LEASE_TTL} s)")

    def _config_step(self, node_id: int, index: int, config: Membership) -> None:
        voters = frozenset(m.id for m in config.voters)
        configs = self.configs
        before = [i for i in configs if i < index]
        configs[index] = voters
        if before:
            prev = configs[max(before)]
            if len(prev ^ voters) > 1:
                raise Violation(
                    "membership steps", node_id,
                    f"the configuration at index {index} has voters {sorted(voters)}, the "
                    f"one at index {max(before)} {sorted(prev)}: more than one voter changed")

    # -- at the end

    def _settled(self) -> bool:
        world = self.world
        lead = world.leader()
        if lead is None or lead.node is None or not world.admin.idle():
            return False
        status = lead.node.status()
        if status.commit_index < status.last_log_index:
            return False
        for m in world.members.values():
            node = m.node
            if node is None or not m.running or not node.running:
                return False
            if node.applied_index != status.commit_index:
                return False
        return True

    def settle(self) -> None:
        world = self.world
        if not world.step_until(world.clock.now + SETTLE_S, self._settled):
            states = []
            for m in world.members.values():
                if m.node is None:
                    states.append(f"{m.node_id}: down")
                else:
                    s = m.node.status()
                    states.append(f"{m.node_id}: {s.role} term {s.term} commit {s.commit_index} "
                                  f"applied {s.applied_index} last {s.last_log_index}")
            raise Violation("liveness", 0, f"not settled {SETTLE_S:g} s after healing: "
                            + "; ".join(states))

    def leases_expire(self) -> None:
        world = self.world

        def gone() -> bool:
            if not self._settled():
                return False
            return all(m.node is not None
                       and not m.node.query_local(lambda store: store.leases.ttls())
                       for m in world.members.values())

        if not world.step_until(world.clock.now + LEASE_TTL + 1.0, gone):
            raise Violation("lease expiry", 0, f"leases left {LEASE_TTL + 1} s after the "
                            "clients stopped keeping them alive")

    def at_end(self) -> None:
        world = self.world
        by_index: dict[int, tuple[int, object]] = {}
        for m in world.members.values():
            node = m.node
            if node is None or node._sm is None:
                continue
            image = node._sm.image()
            table = {lease for lease, _ in image.leases}
            for key, packed in image.items.items():
                lease = _LEASE_OF.unpack_from(packed)[3]
                if lease and lease not in table:
                    raise Violation("lease keys", m.node_id,
                                    f"{key!r} is bound to lease {lease:x}, which is gone")
            state = (image.revision, image.compact_revision, sorted(image.items.items()),
                     list(image.changes))
            seen = by_index.setdefault(node.applied_index, (m.node_id, state))
            if seen[1] != state:
                raise Violation("state machines equal", m.node_id,
                                f"its store at applied index {node.applied_index} differs from "
                                f"node {seen[0]}'s")
        clients = world.clients
        result = lincheck.check(clients.history)
        if not result.ok:
            raise Violation("linearizability", 0, result.explanation)
        self._compaction(clients)
        written = clients.values_written
        for node_id, key, value, at in clients.eventual:
            if value is not None and value not in written:
                raise Violation("eventual reads", node_id,
                                f"read {key!r} = {value!r} at {at:.1f} ms: no client wrote it")

    def _compaction(self, clients: Any) -> None:
        asked = [(rev, call) for rev, call, _, done in clients.compactions if done]
        acked = [(rev, ret) for rev, _, ret, done in clients.compactions
                 if done and ret is not None]
        oracle = self.oracle
        for node_id, key, rev, got, call, ret in clients.past_reads:
            where = f"read {key!r} at revision {rev} ({call:.1f}-{ret:.1f} ms)"
            if got == COMPACTED:
                if not any(r > rev and c < ret for r, c in asked):
                    raise Violation("compaction", node_id,
                                    f"{where}: compacted, but no compaction above it was asked")
                continue
            before = [r for r, t in acked if r > rev and t < call]
            if before:
                raise Violation("compaction", node_id,
                                f"{where}: {got!r}, after the compaction at {before[0]} "
                                "was acknowledged")
            if oracle.revision < rev:  # the replay stopped at a gap (never seen applied)
                self.world.count("past_reads_unchecked")
            else:
                kv = oracle.get_kv(key, rev)
                want = None if kv is None else kv.value
                if got != want:
                    raise Violation("compaction", node_id,
                                    f"{where}: {got!r}, the log says {want!r}")

"""What a whole-node run must hold, checked as it runs and at its end.

During the run:

* election safety: at most one node leads in each term (the cores' own role and term,
  after every callback a node runs);
* state machine safety: an entry applied anywhere at an index is the entry (term and
  bytes) every other node applied there (`SimNode._on_applied`);
* membership steps: a configuration applied anywhere differs from the one before it in
  the log by at most one voter (single-server changes: every majority of the old
  voters meets every majority of the new ones);
* recovery: a node restarted after a kill or a power cut starts (never refuses);
* no unhandled exception in any node's loop.

At the end, after every fault is healed and every node restarted:

* liveness: within 5 s a leader exists, a membership change cycle under way has
  completed, and every node has applied all it committed;
* state machines equal: nodes at the same applied index hold the same store
  (revision, keys, history);
* linearizability: the clients' history (writes, linearizable and lease reads, and a
  final linearizable read of every key) passes `dengine.sim.lincheck`; an acknowledged
  write a power cut ate shows up there;
* eventual reads: every value an eventual read returned was written by some client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dengine.proto import Entry, Membership
from dengine.sim import lincheck

if TYPE_CHECKING:
    from dengine.node.node import Node
    from dengine.sim.nodesim.world import World

SETTLE_S = 5.0


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
            elif seen[0] != e.term or seen[1] != data:
                other = "" if seen[1] == data else ", other bytes"
                raise Violation(
                    "state machine safety", node_id,
                    f"applied (index {e.index}, term {e.term}) where node {seen[2]} applied "
                    f"(index {e.index}, term {seen[0]}){other}")

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

    def at_end(self) -> None:
        world = self.world
        by_index: dict[int, tuple[int, object]] = {}
        for m in world.members.values():
            node = m.node
            if node is None or node._sm is None:
                continue
            image = node._sm.image()
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
        written = clients.values_written
        for node_id, key, value, at in clients.eventual:
            if value is not None and value not in written:
                raise Violation("eventual reads", node_id,
                                f"read {key!r} = {value!r} at {at:.1f} ms: no client wrote it")

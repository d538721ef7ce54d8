"""A watch of every key in the simulator, resumed across nodes as `Client.watch` does.

At random moments (its own RNG, so the simulation's draws are unchanged) it pulls the
next batch above its cursor (`kv.watch.collect`, batches of 1 to 50 events) from a random
node that is up, whatever its role or lag: a node behind the cursor answers nothing new,
a restarted node answers from its rebuilt store. At the end it catches up on the node
with the highest applied revision, and its events must be exactly that store's changelog
(no compaction runs in the simulator): nothing missed, nothing repeated, in order, every
node's history a prefix of the one history.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from dengine.kv.watch import WatchRange, collect
from dengine.sim.invariants import InvariantViolation

if TYPE_CHECKING:
    from dengine.sim.nodes import SimNode

EVERY_KEY = WatchRange(b"\x00", b"\x00")
PULL_CHANCE = 0.2


class SimWatcher:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed * 7919 + 17)
        self.cursor = 1  # a new store is at revision 1, with no change
        self.events: list[Any] = []
        self.pulls = 0
        self.hops = 0  # pulls from another node than the previous one
        self._last = 0

    def maybe_pull(self, nodes: list[SimNode]) -> None:
        if self.rng.random() < PULL_CHANCE:
            up = [n for n in nodes if n.up]
            if up:
                self.pull(self.rng.choice(up))

    def pull(self, node: SimNode, max_events: int | None = None) -> int:
        """One batch from `node`; the number of events it brought."""
        batch = collect(node.kv, self.cursor, EVERY_KEY,
                        max_events=max_events or self.rng.choice((1, 2, 5, 50)))
        self.pulls += 1
        if node.id != self._last:
            self.hops += 1
            self._last = node.id
        if batch.revision < self.cursor:
            raise InvariantViolation("watch", node.id, f"cursor moved back from "
                                     f"{self.cursor} to {batch.revision}")
        self.events.extend(batch.changes)
        self.cursor = batch.revision
        return len(batch.changes)

    def check(self, nodes: list[SimNode], stats: dict[str, int]) -> None:
        up = [n for n in nodes if n.up]
        if not up:
            return
        node = max(up, key=lambda n: n.kv.revision)
        while self.cursor < node.kv.revision:
            self.pull(node, 1000)
        want = list(node.kv.changes())
        stats["watch_events"] = len(self.events)
        stats["watch_pulls"] = self.pulls
        stats["watch_hops"] = self.hops
        if self.events != want:
            first = next((i for i, (a, b) in enumerate(zip(self.events, want, strict=False))
                          if a != b), min(len(self.events), len(want)))
            raise InvariantViolation(
                "watch", node.id,
                f"the watch's {len(self.events)} events differ from node {node.id}'s "
                f"history of {len(want)} changes from position {first} "
                f"(watch: {self.events[first:first + 2]}, history: {want[first:first + 2]})")

"""Raft safety invariants, checked incrementally as the simulator persists and applies.

Every check is O(work the step did), so the simulator can run them after every step:

* election safety: at most one leader per term;
* vote safety: a node's durable vote never changes within a term, its term never
  goes back (a second vote in one term is how two leaders happen);
* log matching: an entry (index, term) has one payload and one predecessor term
  everywhere, which by induction makes logs that share an entry share the prefix;
* leader completeness: a leader's log holds every entry known to be committed;
* state machine safety: no two nodes apply different entries at one index, and every
  node applies indexes in order;
* committed entries are never lost: a node's durable commit index never regresses and
  its log is never truncated at or below it.
"""

from __future__ import annotations

from dataclasses import dataclass

from dengine.errors import DengineError
from dengine.proto import Entry, HardState
from dengine.storage import LogCompacted, LogStorage


class InvariantViolation(DengineError):
    """A Raft safety (or liveness, or linearizability) property did not hold in a simulation."""

    code = "INVARIANT"

    def __init__(self, invariant: str, node: int, detail: str) -> None:
        super().__init__(f"{invariant} violated on node {node}: {detail}")
        self.invariant = invariant
        self.node = node
        self.detail = detail


@dataclass
class _LeaderWatch:
    term: int
    checked_upto: int


class InvariantChecker:
    """Global knowledge across nodes, fed by the driver, raising InvariantViolation."""

    def __init__(self) -> None:
        self.leaders: dict[int, int] = {}  # term -> node id
        self.entry_at: dict[tuple[int, int], tuple[bytes, int]] = {}  # (index, term)
        self.applied_entries: dict[int, tuple[int, bytes]] = {}  # index -> (term, payload)
        self.max_applied = 0
        self.durable: dict[int, HardState] = {}
        self._watch: dict[int, _LeaderWatch] = {}

    def on_leader(self, node: int, term: int, log: LogStorage) -> None:
        """`node` is leader in `term` after this step."""
        other = self.leaders.setdefault(term, node)
        if other != node:
            raise InvariantViolation(
                "election safety", node, f"nodes {other} and {node} are both leader of term {term}"
            )
        watch = self._watch.get(node)
        if watch is None or watch.term != term:
            watch = self._watch[node] = _LeaderWatch(term, 0)
        for index in range(watch.checked_upto + 1, self.max_applied + 1):
            entry = self.applied_entries.get(index)
            if entry is None:
                continue
            try:
                have = log.term(index) if index <= log.last_index() else None
            except LogCompacted:
                continue  # covered by the snapshot, itself checked at install
            if have != entry[0]:
                raise InvariantViolation(
                    "leader completeness", node,
                    f"leader of term {term} lacks committed entry {index} (term {entry[0]}); "
                    f"its log has {'nothing' if have is None else f'term {have}'} there",
                )
        watch.checked_upto = max(watch.checked_upto, self.max_applied)

    def on_persist_hard_state(self, node: int, hs: HardState) -> None:
        old = self.durable.get(node)
        if old is not None:
            if hs.term < old.term:
                raise InvariantViolation(
                    "term monotonicity", node, f"durable term went from {old.term} to {hs.term}"
                )
            if hs.term == old.term and old.voted_for and hs.voted_for != old.voted_for:
                raise InvariantViolation(
                    "vote safety", node,
                    f"voted for {old.voted_for} then {hs.voted_for} in term {hs.term}",
                )
            if hs.commit < old.commit:
                raise InvariantViolation(
                    "committed entries never lost", node,
                    f"durable commit index went from {old.commit} to {hs.commit}",
                )
        copy = HardState()
        copy.CopyFrom(hs)
        self.durable[node] = copy

    def on_truncate(self, node: int, index: int, applied: int) -> None:
        hs = self.durable.get(node)
        commit = hs.commit if hs is not None else 0
        if index <= max(commit, applied):
            raise InvariantViolation(
                "committed entries never lost", node,
                f"log truncated from index {index}, at or below its commit index {commit} "
                f"/ applied index {applied}",
            )

    def on_append(self, node: int, entries: list[Entry], prev_term: int) -> None:
        for entry in entries:
            key = (entry.index, entry.term)
            payload = entry.payload.SerializeToString()
            seen = self.entry_at.setdefault(key, (payload, prev_term))
            if seen != (payload, prev_term):
                what = "payload" if seen[0] != payload else f"predecessor term {seen[1]}"
                raise InvariantViolation(
                    "log matching", node,
                    f"entry {entry.index} of term {entry.term} has a different {what} "
                    f"(predecessor term here {prev_term})",
                )
            prev_term = entry.term

    def on_apply(self, node: int, entry: Entry, expected_index: int) -> None:
        if entry.index != expected_index:
            raise InvariantViolation(
                "apply order", node, f"applied index {entry.index}, expected {expected_index}"
            )
        payload = entry.payload.SerializeToString()
        seen = self.applied_entries.setdefault(entry.index, (entry.term, payload))
        if seen != (entry.term, payload):
            raise InvariantViolation(
                "state machine safety", node,
                f"applied entry {entry.index} of term {entry.term}, another node applied "
                f"term {seen[0]} there" + ("" if seen[0] != entry.term else " (other payload)"),
            )
        self.max_applied = max(self.max_applied, entry.index)

"""Raft safety invariants, checked incrementally as the simulator persists and applies.

Every check is O(work the step did), so the simulator can run them after every step:

* election safety: at most one leader per term;
* vote safety: a node's durable vote never changes within a term, its term never
  goes back (a second vote in one term is how two leaders happen);
* log matching: an entry (index, term) has one payload and one predecessor term
  everywhere, which by induction makes logs that share an entry share the prefix;
* leader completeness: a leader's log holds every entry committed in an earlier term
  (and no two leaders commit different entries at one index);
* state machine safety: no two nodes apply different entries at one index, and every
  node applies indexes in order;
* committed entries are never lost: a node's durable commit index never regresses and
  its log is never truncated at or below it.
"""

from __future__ import annotations

from typing import Protocol

from dengine.errors import DengineError
from dengine.proto import Entry, HardState


class InvariantViolation(DengineError):
    """A Raft safety (or liveness, or linearizability) property did not hold in a simulation."""

    code = "INVARIANT"

    def __init__(self, invariant: str, node: int, detail: str) -> None:
        super().__init__(f"{invariant} violated on node {node}: {detail}")
        self.invariant = invariant
        self.node = node
        self.detail = detail

    def __reduce__(self) -> tuple[type[InvariantViolation], tuple[str, int, str]]:
        return (InvariantViolation, (self.invariant, self.node, self.detail))


class _LogView(Protocol):
    """The parts of a (core's) log the leader checks read."""

    def first_index(self) -> int: ...
    def last_index(self) -> int: ...
    def term(self, index: int) -> int: ...
    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]: ...


class InvariantChecker:
    """Global knowledge across nodes, fed by the driver, raising InvariantViolation."""

    def __init__(self) -> None:
        self.leaders: dict[int, int] = {}  # term -> node id
        self.entry_at: dict[tuple[int, int], tuple[bytes, int]] = {}  # (index, term)
        self.applied_entries: dict[int, tuple[int, bytes]] = {}  # index -> (term, payload)
        # Entries some leader committed: index -> (entry term, payload), and the lowest
        # term of a leader that had committed it. Leaders of later terms must hold it.
        self.committed: dict[int, tuple[int, bytes]] = {}
        self.commit_term: dict[int, int] = {}
        self.durable: dict[int, HardState] = {}
        self._current: dict[int, tuple[int, _LogView]] = {}  # leader node -> (term, log)
        self._recorded_commit: dict[int, tuple[int, int]] = {}  # node -> (term, commit)

    def on_leader(self, node: int, term: int, log: _LogView, commit: int) -> None:
        """`node` is leader of `term` after this step, with commit index `commit`."""
        other = self.leaders.setdefault(term, node)
        if other != node:
            raise InvariantViolation(
                "election safety", node, f"nodes {other} and {node} are both leader of term {term}"
            )
        self._current[node] = (term, log)
        rec_term, recorded = self._recorded_commit.get(node, (0, 0))
        if rec_term != term:
            recorded = log.first_index() - 1
            for index, ct in self.commit_term.items():
                if ct < term:
                    self._check_holds(node, term, log, index)
        for index in range(recorded + 1, commit + 1):
            entry = log.entries(index, index + 1)[0]
            record = (int(entry.term), entry.payload.SerializeToString())
            if self.committed.setdefault(index, record) != record:
                raise InvariantViolation(
                    "commit safety", node,
                    f"leader of term {term} committed entry {index} of term {record[0]}; "
                    f"term {self.committed[index][0]} was committed there before",
                )
            if term < self.commit_term.get(index, term + 1):
                self.commit_term[index] = term
                for leader, (lterm, llog) in self._current.items():
                    if lterm > term:
                        self._check_holds(leader, lterm, llog, index)
        self._recorded_commit[node] = (term, max(recorded, commit))

    def on_not_leader(self, node: int) -> None:
        self._current.pop(node, None)

    def _check_holds(self, node: int, term: int, log: _LogView, index: int) -> None:
        if index < log.first_index():
            return  # compacted into a snapshot of applied (hence committed) entries
        want = self.committed[index][0]
        have = log.term(index) if index <= log.last_index() else None
        if have != want:
            raise InvariantViolation(
                "leader completeness", node,
                f"leader of term {term} lacks entry {index} (term {want}) committed in term "
                f"{self.commit_term[index]}; its log has "
                f"{'nothing' if have is None else f'term {have}'} there",
            )

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

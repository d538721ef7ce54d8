"""A tiny hand-driven network of RaftCores for scenario tests (the full simulator is dengine.sim).

Each node has a MemoryRaftLog and follows the driver contract. Messages collect in
`pending` and move only when a test delivers them, so a test decides exactly what
reaches whom and when.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from dengine.proto import (
    Entry,
    HardState,
    LogId,
    Member,
    Membership,
    Message,
    MessageType,
    SnapshotMetadata,
)
from dengine.raft import MemoryRaftLog, RaftConfig, RaftCore, ReadState, Role

T = MessageType


def membership(voters: Iterable[int], learners: Iterable[int] = ()) -> Membership:
    return Membership(
        voters=[Member(id=i, address=f"n{i}") for i in voters],
        learners=[Member(id=i, address=f"n{i}") for i in learners],
    )


def make_log(terms: list[int], term: int = 0, vote: int = 0, commit: int = 0) -> MemoryRaftLog:
    """A log holding one no-op entry per element of `terms` (entry i+1 has terms[i])."""
    log = MemoryRaftLog()
    entries = []
    for i, t in enumerate(terms, 1):
        e = Entry(index=i, term=t)
        e.payload.noop.SetInParent()
        entries.append(e)
    log.append(entries)
    log.set_hard_state(HardState(term=max([term, *terms]), voted_for=vote, commit=commit))
    return log


def compact(log: MemoryRaftLog, index: int, members: Membership) -> SnapshotMetadata:
    """Compact `log` up to `index` as a driver would after taking a snapshot there."""
    meta = SnapshotMetadata(last_included=LogId(term=log.term(index), index=index))
    meta.membership.CopyFrom(members)
    log.compact_prefix(index)
    log._snapshot = meta  # MemoryRaftLog has no snapshot-taking API: the driver's job
    return meta


def log_terms(log: MemoryRaftLog) -> list[int]:
    return [log.term(i) for i in range(log.first_index(), log.last_index() + 1)]


class Network:
    """Cores wired by hand. Nothing moves until the test calls deliver/settle/tick."""

    def __init__(
        self,
        ids: Iterable[int],
        *,
        learners: Iterable[int] = (),
        logs: dict[int, MemoryRaftLog] | None = None,
        seed: int = 0,
        core_cls: type[RaftCore] = RaftCore,
        **cfg: object,
    ) -> None:
        self.ids = sorted(ids)
        self.members = membership(self.ids, learners)
        all_ids = self.ids + sorted(learners)
        self.cfg = cfg
        self.seed = seed
        self.core_cls = core_cls
        self.logs: dict[int, MemoryRaftLog] = {i: MemoryRaftLog() for i in all_ids}
        self.logs.update(logs or {})
        self.cores: dict[int, RaftCore] = {}
        self.applied: dict[int, list[Entry]] = {i: [] for i in all_ids}
        self.reads: dict[int, list[ReadState]] = {i: [] for i in all_ids}
        self.snapshots: dict[int, list[SnapshotMetadata]] = {i: [] for i in all_ids}
        self.pending: list[Message] = []
        self.sent: list[Message] = []  # every message ever sent, for assertions
        self.cut: set[tuple[int, int]] = set()  # (from, to) links that drop messages
        self.down: set[int] = set()
        for i in all_ids:
            self.start(i)

    # ---- nodes -------------------------------------------------------------------

    def start(self, i: int, applied: int = 0) -> RaftCore:
        config = RaftConfig(id=i, applied=applied, **self.cfg)  # type: ignore[arg-type]
        rng = random.Random(self.seed * 1000 + i)
        self.cores[i] = self.core_cls(config, self.logs[i], rng, bootstrap=self.members)
        self.down.discard(i)
        return self.cores[i]

    def add_node(self, i: int) -> RaftCore:
        """A brand-new empty node with no bootstrap: it learns the membership from the leader."""
        self.logs[i] = MemoryRaftLog()
        self.applied[i], self.reads[i], self.snapshots[i] = [], [], []
        config = RaftConfig(id=i, **self.cfg)  # type: ignore[arg-type]
        self.cores[i] = self.core_cls(config, self.logs[i], random.Random(self.seed * 1000 + i))
        return self.cores[i]

    def crash(self, i: int) -> None:
        """Lose everything not persisted: the core and messages in flight to it."""
        self.down.add(i)
        self.pending = [m for m in self.pending if m.to_id != i]

    def restart(self, i: int) -> RaftCore:
        applied = self.applied[i][-1].index if self.applied[i] else 0
        return self.start(i, applied=applied)

    def __getitem__(self, i: int) -> RaftCore:
        return self.cores[i]

    def leader(self) -> int:
        leaders = [i for i, c in self.cores.items() if i not in self.down and c.is_leader()]
        assert len(leaders) <= 1 or len({self.cores[i].term for i in leaders}) == len(leaders)
        return max(leaders, key=lambda i: self.cores[i].term) if leaders else 0

    # ---- driver ------------------------------------------------------------------

    def process(self, i: int) -> None:
        """Run the driver contract for node `i` until it has nothing ready."""
        core, log = self.cores[i], self.logs[i]
        while core.has_ready():
            rd = core.ready()
            if rd.snapshot is not None:
                log.install_snapshot(rd.snapshot)
                self.snapshots[i].append(rd.snapshot)
            if rd.entries:
                first = rd.entries[0].index
                if first <= log.last_index():
                    log.truncate_suffix(first)
                log.append(list(rd.entries))
            if rd.hard_state is not None:
                log.set_hard_state(rd.hard_state)
            for m in rd.messages:
                self.sent.append(m)
                if (m.from_id, m.to_id) not in self.cut:
                    self.pending.append(m)
            self.applied[i].extend(rd.committed_entries)
            self.reads[i].extend(rd.read_states)
            core.advance(rd)

    def process_all(self) -> None:
        for i in self.cores:
            if i not in self.down:
                self.process(i)

    def deliver(self, keep: Callable[[Message], bool] = lambda m: True) -> int:
        """Deliver every pending message `keep` accepts (others are dropped); count them."""
        self.process_all()
        batch, self.pending = self.pending, []
        n = 0
        for m in batch:
            lost = m.to_id not in self.cores or m.to_id in self.down
            if lost or (m.from_id, m.to_id) in self.cut or not keep(m):
                continue
            self.cores[m.to_id].step(m)
            self.process(m.to_id)
            n += 1
        return n

    def settle(self, keep: Callable[[Message], bool] = lambda m: True, rounds: int = 200) -> None:
        """Deliver until no message is left."""
        for _ in range(rounds):
            if not self.deliver(keep) and not self.pending:
                return
        raise AssertionError("network did not settle")

    def tick(self, ids: Iterable[int] | None = None, n: int = 1, settle: bool = True) -> None:
        for _ in range(n):
            for i in ids if ids is not None else list(self.cores):
                if i not in self.down:
                    self.cores[i].tick()
            if settle:
                self.settle()
            else:
                self.process_all()

    def elect(self, i: int) -> RaftCore:
        """Make `i` campaign and let the election and the leader's no-op complete."""
        self.cores[i].campaign()
        self.settle()
        assert self.cores[i].role is Role.LEADER, self.cores[i].status()
        return self.cores[i]

    # ---- faults ------------------------------------------------------------------

    def isolate(self, i: int) -> None:
        for j in self.cores:
            if j != i:
                self.cut |= {(i, j), (j, i)}
        self.pending = [m for m in self.pending if i not in (m.from_id, m.to_id)]

    def heal(self) -> None:
        self.cut.clear()

    # ---- observation ---------------------------------------------------------------

    def sent_of(self, msg_type: int, since: int = 0) -> list[Message]:
        return [m for m in self.sent[since:] if m.type == msg_type]

    def commands(self, i: int) -> list[bytes]:
        return [e.payload.command for e in self.applied[i] if e.payload.HasField("command")]

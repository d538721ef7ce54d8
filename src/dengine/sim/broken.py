"""Deliberately broken Raft cores: the simulator must catch each of them ("teeth").

Each overrides exactly one rule of `RaftCore` with a bug real Raft implementations have
shipped. Replay one with `python -m dengine.sim --core dengine.sim.broken:DoubleVoteCore`.
Never use these outside tests.
"""

from __future__ import annotations

import dataclasses
import random

from dengine.proto import Message
from dengine.raft import LogStorage, RaftConfig, RaftCore, Role
from dengine.raft.quorum import quorum_value


class CommitOldTermCore(RaftCore):
    """Commits by counting replicas of any entry, including earlier terms' (Figure 8 bug)."""

    def _maybe_commit(self) -> bool:
        prs = self.prs
        index = quorum_value(self.voters, {v: prs[v].match for v in self.voters if v in prs})
        if index > self.log.committed:
            return self.log.commit_to(index)
        return False


class DoubleVoteCore(RaftCore):
    """Grants a vote to every up-to-date candidate, even after voting in this term."""

    def _can_grant_vote(self, m: Message) -> bool:
        return self.log.is_up_to_date(m.index, m.log_term)


class LeaseWithoutCheckQuorumCore(RaftCore):
    """Serves lease reads while it believes it leads, with check-quorum off.

    Nothing then makes a partitioned leader step down or stops the others from electing
    a new one: it serves stale reads for as long as the partition lasts.
    """

    def __init__(self, config: RaftConfig, log: LogStorage, rng: random.Random) -> None:
        super().__init__(dataclasses.replace(config, check_quorum=False), log, rng)

    def _lease_valid(self) -> bool:
        return self.state is Role.LEADER and self.term_committed


class EndlessLeaseCore(RaftCore):
    """Serves lease reads until check-quorum deposes it, not only within the lease.

    The window is between a new leader's first commit and the old leader's next quorum
    check (at most one election timeout), so this one is harder to catch.
    """

    def _lease_valid(self) -> bool:
        return self.state is Role.LEADER and self.term_committed

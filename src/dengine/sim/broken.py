"""Deliberately broken Raft cores, stores and recipes: the simulator must catch each of them
("teeth").

Each overrides exactly one rule of `RaftCore` (or of the MVCC store) with a bug real
implementations have shipped. Replay one with
`python -m dengine.sim --core dengine.sim.broken:DoubleVoteCore` (or `--store ...`).
Never use these outside tests.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from google.protobuf.message import DecodeError

from dengine.kv.codec import OP_TXN
from dengine.kv.mvcc import Applied, MvccStore
from dengine.proto import Message
from dengine.proto.etcd import rpc_pb2 as pb
from dengine.raft import LogStorage, RaftConfig, RaftCore, Role
from dengine.raft.quorum import quorum_value
from dengine.sim.locks import Contender, LockWorkload
from dengine.sim.nodes import SimNode


class CommitOldTermCore(RaftCore):
    """Commits by counting replicas of any entry, including earlier terms' (Figure 8 bug)."""

    def _maybe_commit(self) -> bool:
        prs = self.prs
        index = quorum_value(self.voters, {v: prs[v].match for v in self.voters if v in prs})
        if index > self.log.committed:
            return self.log.commit_to(index)
        return False


class BlindLearnCommitCore(RaftCore):
    """Takes a commit index from a write's answer without checking that its own entry
    there is the leader's (a stale entry of an older term gets applied)."""

    def learn_commit(self, index: int, term: int) -> bool:
        if self.state is Role.LEADER or index <= self.log.committed:
            return False
        return self.log.commit_to(min(index, self.log.last_index()))


class DoubleVoteCore(RaftCore):
    """Grants a vote to every up-to-date candidate, even after voting in this term."""

    def _can_grant_vote(self, m: Message) -> bool:
        return self.log.is_up_to_date(m.index, m.log_term)


class LeaseWithoutCheckQuorumCore(RaftCore):
    """Serves lease reads while it believes it leads, with check-quorum off.

    Nothing then makes a partitioned leader step down or stops the others from electing
    a new one: it serves stale reads for as long as the partition lasts.
    """

    def __init__(self, config: RaftConfig, log: LogStorage, rng: random.Random,
                 **kwargs: Any) -> None:
        super().__init__(dataclasses.replace(config, check_quorum=False), log, rng, **kwargs)

    def _lease_valid(self) -> bool:
        return self.state is Role.LEADER and self.term_committed


class EndlessLeaseCore(RaftCore):
    """Serves lease reads until check-quorum deposes it, not only within the lease.

    The window is between a new leader's first commit and the old leader's next quorum
    check (at most one election timeout), so this one is harder to catch.
    """

    def _lease_valid(self) -> bool:
        return self.state is Role.LEADER and self.term_committed


class StaleCompareStore(MvccStore):
    """Evaluates a txn's compares on the store one revision back, not on the state the
    txn applies to (like a server that checks compares at the read it proposed from).

    Two transfers read at one revision; the first commits; the second's mod_revision
    compares still hold one revision back, so it overwrites the first's balances.
    """

    def apply(self, op: int, key: bytes, value: bytes) -> Applied:
        if op != OP_TXN:
            return super().apply(op, key, value)
        try:
            req = pb.TxnRequest.FromString(value)
        except DecodeError:
            return super().apply(op, key, value)
        taken = all(self._stale_compare(c) for c in req.compare)
        # The same txn with its branch decided: no compare (success) or one that never
        # holds (a version below 0: failure).
        fixed = pb.TxnRequest(success=req.success) if taken else pb.TxnRequest(
            compare=[pb.Compare(key=b"\0", target=pb.Compare.VERSION,
                                result=pb.Compare.LESS, version=0)],
            failure=req.failure)
        return super().apply(op, key, fixed.SerializeToString())

    def _stale_compare(self, c: pb.Compare) -> bool:
        kv = self.get_kv(c.key, max(self.revision - 1, 1))
        target = c.target
        have: Any  # bytes (value) or int
        want: Any
        if target == pb.Compare.VALUE:
            if kv is None:
                return False
            have, want = kv.value, c.value
        elif target == pb.Compare.VERSION:
            have, want = (kv.version if kv else 0), c.version
        elif target == pb.Compare.MOD:
            have, want = (kv.mod_revision if kv else 0), c.mod_revision
        else:
            have, want = (kv.create_revision if kv else 0), c.create_revision
        result = c.result
        if result == pb.Compare.EQUAL:
            return have == want
        if result == pb.Compare.NOT_EQUAL:
            return have != want
        if result == pb.Compare.GREATER:
            return bool(have > want)
        return bool(have < want)


class SkipWaitLock(LockWorkload):
    """etcd's lock recipe without its wait: a contender enters its critical section as
    soon as its key exists, not once every key created before it is deleted."""

    def _turn(self, c: Contender, mine: bool) -> None:
        super()._turn(c, True)


class LocalLeaderLock(LockWorkload):
    """Reads the election's leader from the node's own applied state (serializable), as
    if that were linearizable."""

    def _read_leader(self, client: int, node: SimNode, lease: bool) -> None:
        self._observe(self.sim.now, node.kv)

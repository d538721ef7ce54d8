"""The sans-I/O Raft consensus core: inputs in, one `Ready` batch of outputs out.

`RaftCore` never reads a clock (time is `tick()` calls), never touches a file or a socket,
and draws randomness only from the `random.Random` it is given, so a cluster of cores can
be simulated deterministically and every scenario replayed.

Inputs: `tick()`, `step(message)`, `propose(commands)`, `propose_membership(membership)`,
`read_index(ctx, lease=False)`, `transfer_leadership(to)`, `campaign()`,
`learn_commit(index, term)`,
`report_unreachable(peer)`, `report_snapshot(peer, ok)`.
Output: `ready()` returns a `Ready` whenever `has_ready()`; the driver then calls
`advance(rd)`.

Driver contract (the node and the simulator both honour it):

1. Persist, fsynced, in this order and **before sending any of `rd.messages`**:
   `rd.snapshot` (install: the log is discarded and restarts after `last_included`, the
   state machine is replaced), then `rd.entries` (when `entries[0].index <= last_index`
   first truncate the log from `entries[0].index`: that suffix conflicted with the
   leader), then `rd.hard_state`. A vote or an append acknowledgement is a promise that
   only holds once what it promises is durable.
2. Apply `rd.committed_entries` to the state machine in order (they are durable locally
   once step 1 is done). Applying never fails for configuration reasons. The apply may
   finish after `advance(rd)` if the driver queues each Ready's chunk on one worker in
   commit order (the node does: its apply thread runs beside the next turns' persists).
3. Serve each `ReadState(ctx, index)` once the state machine's applied index >= `index`
   (the index really applied, not the one handed to the apply queue).
4. Call `advance(rd)` when 1 is done, 2 is done or queued, and 3 is recorded, and before
   the next `ready()`. Inputs may be
   stepped between `ready()` and `advance()` (for example while a worker thread fsyncs).
   The leader counts its own entries toward commit only from `advance` on.

Reads may be dropped silently when leadership changes (a pending ReadIndex of a deposed
leader is never answered); the driver times them out and retries.
"""

from __future__ import annotations

import random

from dengine.errors import ConfigError, InvalidRequest, StorageError
from dengine.proto import Entry, HardState, Membership, Message
from dengine.raft.confchange import ConfChangeMixin, validate_membership
from dengine.raft.election import ElectionMixin
from dengine.raft.limits import MAX_TERM, message_problem
from dengine.raft.log import LogView
from dengine.raft.progress import Progress
from dengine.raft.quorum import has_quorum
from dengine.raft.readonly import ReadIndexMixin, ReadOnly, ReadState
from dengine.raft.replication import ReplicationMixin, _ProposedBatch
from dengine.raft.storage import LogStorage
from dengine.raft.types import (
    MSG_APPEND,
    MSG_APPEND_RESPONSE,
    MSG_HEARTBEAT,
    MSG_HEARTBEAT_RESPONSE,
    MSG_PRE_VOTE,
    MSG_PRE_VOTE_RESPONSE,
    MSG_READ_INDEX,
    MSG_READ_INDEX_RESPONSE,
    MSG_SNAPSHOT,
    MSG_TIMEOUT_NOW,
    MSG_TRANSFER_LEADER,
    MSG_VOTE,
    TRANSFER_CONTEXT,
    RaftConfig,
    Ready,
    Role,
    SoftState,
)


class RaftCore(ElectionMixin, ReplicationMixin, ConfChangeMixin, ReadIndexMixin):
    """One Raft node's consensus state machine (see the module docstring for the contract).

    Initial membership, in order of precedence: the latest config entry in the log, else
    the snapshot's membership, else `bootstrap` (first boot), else `config.peers` as voter
    ids, else none (a node waiting to be added: it never campaigns). A leader whose
    membership came from `bootstrap`/`peers` writes it to the log right after its no-op so
    that it becomes durable and replicated like any change.

    Deliberately broken variants for the simulator's teeth tests subclass this and override
    exactly one of these small methods:

    - `_maybe_commit() -> bool`: advance `self.log.committed` to the highest index a
      majority of voters (`self.voters`, matches in `self.prs[id].match`) holds, only if
      that entry is of the current term (§5.4.2); True if the commit index moved.
    - `_can_grant_vote(msg) -> bool`: whether to grant a (pre-)vote request: one vote per
      term (`self.vote`) and the candidate's log at least as up to date as ours (§5.4.1).
    - `_lease_valid() -> bool`: whether a lease read may be served right now without a
      heartbeat round (leader, check-quorum on, lease_ticks > 0, an entry of this term
      committed, no transfer started, and a quorum acknowledged a heartbeat sent less
      than lease_ticks ago).

    Useful state for tests and variants: `term`, `vote`, `lead`, `state` (a Role, never
    LEARNER; see `role`), `log` (LogView: `committed`, `applied`, `last_index()`,
    `term(i)`), `prs` (leader only: peer id -> Progress), `voters`, `learners`.
    """

    def __init__(
        self,
        config: RaftConfig,
        log: LogStorage,
        rng: random.Random,
        *,
        bootstrap: Membership | None = None,
    ) -> None:
        self.cfg = config.validate()
        self.id = config.id
        self.rng = rng
        self.log = LogView(log)
        hs = log.hard_state()
        if hs.term > MAX_TERM:
            raise StorageError(
                f"the persisted term {hs.term} is above the maximum {MAX_TERM} (adopted from a "
                "forged peer message before terms were bounded): remove this node's data "
                "directory and add it to the cluster again"
            )
        self.term = int(hs.term)
        self.vote = int(hs.voted_for)
        self.lead = 0
        self.state = Role.FOLLOWER
        self.prs: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.lead_transferee = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = 0
        self.now = 0  # ticks since this core started
        self.rejected_messages = 0  # peer messages dropped as out of bounds or absurd
        # A restarted node may have acknowledged a leader's heartbeat just before it
        # crashed; it keeps refusing votes for one election timeout to honour that lease.
        self._restarted = self.term > 0 or log.last_index() > 0
        self.readonly = ReadOnly()
        self.term_committed = False  # leader: an entry of the current term has committed
        self.lease_revoked = False  # leader: sent TimeoutNow in this term
        self._needs_bcast = False
        self._batch: _ProposedBatch | None = None
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._applying = 0  # highest index handed out in committed_entries
        self._prev_hs = (self.term, self.vote, self.log.committed)
        self._prev_soft = SoftState(0, Role.FOLLOWER)

        if config.applied:
            if config.applied > self.log.last_index():
                raise StorageError(
                    f"state machine applied index {config.applied} is beyond the last log "
                    f"index {self.log.last_index()}: the log is not the one it was applied from"
                )
            self.log.applied = max(self.log.applied, config.applied)
            self.log.committed = max(self.log.committed, config.applied)
        snap = log.snapshot_metadata()
        self._base_from_bootstrap = False
        if snap is not None:
            base = snap.membership
        elif bootstrap is not None:
            try:
                validate_membership(bootstrap)
            except InvalidRequest as e:
                raise ConfigError(f"bootstrap membership: {e.message}") from None
            base = bootstrap
            self._base_from_bootstrap = True
        elif config.peers:
            base = Membership()
            for peer in sorted({config.id, *config.peers}):
                base.voters.add(id=peer)
            self._base_from_bootstrap = True
        else:
            base = Membership()
        self._base_membership = base
        self._configs: list[tuple[int, Membership]] = self._scan_configs()
        self.membership = Membership()
        self.voters: frozenset[int] = frozenset()
        self.learners: frozenset[int] = frozenset()
        self._set_membership(self._configs[-1][1] if self._configs else base)
        self._reset_election_timeout()

    # ------------------------------------------------------------------ observation

    @property
    def role(self) -> Role:
        if self.state is Role.FOLLOWER and self.id in self.learners:
            return Role.LEARNER
        return self.state

    @property
    def leader_id(self) -> int:
        return self.lead

    @property
    def commit_index(self) -> int:
        return self.log.committed

    @property
    def applied_index(self) -> int:
        return self.log.applied

    def is_leader(self) -> bool:
        return self.state is Role.LEADER

    def soft_state(self) -> SoftState:
        return SoftState(self.lead, self.role)

    def status(self) -> dict[str, object]:
        """A plain summary for logs and status commands."""
        return {
            "id": self.id,
            "term": self.term,
            "role": self.role.value,
            "leader": self.lead,
            "commit": self.log.committed,
            "applied": self.log.applied,
            "last_index": self.log.last_index(),
            "voters": sorted(self.voters),
            "learners": sorted(self.learners),
            "progress": {i: repr(p) for i, p in sorted(self.prs.items())},
            "rejected_messages": self.rejected_messages,
        }

    # ------------------------------------------------------------------ inputs

    def tick(self) -> None:
        """One unit of logical time."""
        self.now += 1
        if self.state is Role.LEADER:
            self._tick_leader()
            return
        self.election_elapsed += 1
        if self._promotable() and (
            self.election_elapsed >= self.randomized_election_timeout
            # The only voter, knowing no leader: there is no one to wait for or to
            # disrupt, so a one-node cluster (re)starts serving without an election timeout.
            or (not self.lead and len(self.voters) == 1)
        ):
            self.election_elapsed = 0
            self.campaign()

    def pass_time(self, ticks: int) -> None:
        """`ticks` that passed while the driver could not run (its loop stalled): they
        count for the leader's lease and the vote lease after a restart (`now`: real
        time), not for the election timer or check-quorum, which would fire on the
        stall alone, before the messages that came meanwhile are stepped (Go's ticker,
        which etcd's Raft runs on, drops the ticks a slow receiver missed)."""
        if ticks > 0:
            self.now += ticks

    def step(self, m: Message) -> None:
        """Handle one message from a peer. One outside what a correct peer can send
        (dengine.raft.limits) is dropped and counted in `rejected_messages`."""
        if m.from_id == self.id or (m.to_id and m.to_id != self.id):
            return
        if message_problem(m):
            self.rejected_messages += 1
            return
        t = m.type
        if m.term > self.term:
            if (
                t in (MSG_VOTE, MSG_PRE_VOTE)
                and m.context != TRANSFER_CONTEXT
                and self._in_vote_lease()
            ):
                return  # we hear from a live leader: do not let a rejoining node disrupt it
            if t == MSG_PRE_VOTE or (t == MSG_PRE_VOTE_RESPONSE and not m.reject):
                pass  # pre-votes use a future term without anyone adopting it
            elif t in (MSG_APPEND, MSG_HEARTBEAT, MSG_SNAPSHOT):
                self._become_follower(m.term, m.from_id)
            else:
                self._become_follower(m.term, 0)
        elif m.term < self.term:
            if (t in (MSG_APPEND, MSG_HEARTBEAT)) and (
                self.cfg.check_quorum or self.cfg.pre_vote
            ):
                # A stale leader (partitioned, or its term was overtaken by a pre-vote-less
                # node) learns our term from this and steps down.
                self._send(MSG_APPEND_RESPONSE, m.from_id)
            elif t == MSG_PRE_VOTE:
                self._send(MSG_PRE_VOTE_RESPONSE, m.from_id, reject=True)
            return

        if t in (MSG_VOTE, MSG_PRE_VOTE):
            self._handle_vote_request(m)
        elif self.state is Role.LEADER:
            self._step_leader(m)
        elif self.state is Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def learn_commit(self, index: int, term: int) -> bool:
        """A follower learns that the entry at `index` is committed (the leader's answer
        to a write it forwarded; `term`: the leader's term when it answered, so `index`
        was known committed at that term) and commits up to it now, without waiting for
        the next append or heartbeat. True if the commit index moved.

        Only when our entry at `index` has that very term: no log holds an entry of such
        a term at a committed index other than the committed entry (every leader of that
        term or later holds the committed one: Leader Completeness), so by Log Matching
        our log equals the leader's up to `index`. Otherwise (the entry not here yet, or
        of another term) nothing changes and the next append brings the commit. A leader
        commits only through its quorum."""
        log = self.log
        if self.state is Role.LEADER or index <= log.committed:
            return False
        if not log.match_term(index, term):
            return False
        return log.commit_to(index)

    # ------------------------------------------------------------------ output

    def has_ready(self) -> bool:
        log = self.log
        if (
            self._msgs
            or self._read_states
            or self._needs_bcast
            or self.readonly.unsent
            or log.has_unsent_entries()
            or (log.pending_snapshot is not None and not log.snapshot_in_progress)
            or (self.term, self.vote, log.committed) != self._prev_hs
            or self.lead != self._prev_soft.leader_id
            or self.role is not self._prev_soft.role
        ):
            return True
        return log.pending_snapshot is None and log.committed > max(log.applied, self._applying)

    def ready(self) -> Ready:
        """Collect everything to persist, send, apply and serve; see the driver contract."""
        if self.state is Role.LEADER:
            if self._needs_bcast:
                self._needs_bcast = False
                self._bcast_append()
            if self.readonly.unsent:
                self._start_read_round()
        log = self.log
        hs_key = (self.term, self.vote, log.committed)
        hard_state = None
        if hs_key != self._prev_hs:
            self._prev_hs = hs_key
            hard_state = HardState(term=self.term, voted_for=self.vote, commit=log.committed)
        current = self.soft_state()
        soft = None
        if current != self._prev_soft:
            soft = self._prev_soft = current
        snapshot = None
        if log.pending_snapshot is not None and not log.snapshot_in_progress:
            snapshot = log.pending_snapshot
            log.snapshot_in_progress = True
        committed: list[Entry] = []
        if log.pending_snapshot is None:
            lo = max(log.applied, self._applying) + 1
            hi = min(log.committed, lo + self.cfg.max_apply_entries - 1)
            if hi >= lo:
                committed = log.entries(lo, hi + 1)
                self._applying = hi
        msgs, self._msgs = self._msgs, []
        reads, self._read_states = self._read_states, []
        return Ready(
            soft_state=soft,
            hard_state=hard_state,
            entries=log.take_unstable(),
            messages=msgs,
            committed_entries=committed,
            read_states=reads,
            snapshot=snapshot,
        )

    def advance(self, rd: Ready) -> None:
        """`rd` was persisted, sent and applied: its entries now count as durable."""
        log = self.log
        if rd.snapshot is not None:
            log.snapshot_stable(rd.snapshot)
            self._applying = max(self._applying, log.applied)
        if rd.entries:
            last = rd.entries[-1]
            if log.stable_to(last.index, last.term) and self.state is Role.LEADER:
                own = self.prs.get(self.id)
                if own is not None and own.maybe_update(last.index) and self._maybe_commit():
                    self._on_commit()
        if rd.committed_entries:
            log.applied = max(log.applied, rd.committed_entries[-1].index)
            self._prune_configs()

    # ------------------------------------------------------------------ dispatch by role

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_tick:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                active = {i for i, pr in self.prs.items() if pr.recent_active or i == self.id}
                if not has_quorum(self.voters, active):
                    self._become_follower(self.term, 0)
                    return
                for i, pr in self.prs.items():
                    pr.recent_active = i == self.id
            self.lead_transferee = 0
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self._start_read_round()
        self.readonly.forget_rounds_before(self.now - self.cfg.lease_ticks)

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t == MSG_APPEND_RESPONSE:
            self._handle_append_response(m)
        elif t == MSG_HEARTBEAT_RESPONSE:
            self._handle_heartbeat_response(m)
        elif t == MSG_READ_INDEX:
            if m.from_id in self.prs:
                self._leader_read(m.context, m.from_id)
        elif t == MSG_TRANSFER_LEADER and int(m.index) in self.voters:
            self.transfer_leadership(int(m.index))

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == MSG_APPEND:
            self.election_elapsed = 0
            self.lead = m.from_id
            self._handle_append(m)
        elif t == MSG_HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.from_id
            if m.commit > self.log.committed:
                self.log.commit_to(min(int(m.commit), self.log.last_index()))
            self._send(MSG_HEARTBEAT_RESPONSE, m.from_id, context=m.context)
        elif t == MSG_SNAPSHOT:
            self.election_elapsed = 0
            self.lead = m.from_id
            self._handle_snapshot(m)
        elif t == MSG_TIMEOUT_NOW:
            if self._promotable():
                self._campaign(pre=False, transfer=True)
        elif t == MSG_READ_INDEX_RESPONSE:
            self._read_states.append(ReadState(m.context, int(m.index)))
        elif t == MSG_TRANSFER_LEADER and self.lead:
            self._send(MSG_TRANSFER_LEADER, self.lead, index=m.index)

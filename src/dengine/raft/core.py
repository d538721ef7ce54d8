"""The sans-I/O Raft consensus core: inputs in, one `Ready` batch of outputs out.

`RaftCore` never reads a clock (time is `tick()` calls), never touches a file or a socket,
and draws randomness only from the `random.Random` it is given, so a cluster of cores can
be simulated deterministically and every scenario replayed.

Inputs: `tick()`, `step(message)`, `propose(commands)`, `propose_membership(membership)`,
`read_index(ctx, lease=False)`, `transfer_leadership(to)`, `campaign()`,
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

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from dengine.errors import (
    ConfigError,
    DengineError,
    InvalidRequest,
    NotLeader,
    StorageError,
    Unavailable,
)
from dengine.proto import (
    Entry,
    HardState,
    LogId,
    Membership,
    Message,
    MessageType,
    SnapshotMetadata,
)
from dengine.raft.log import RaftLog
from dengine.raft.progress import Progress, ProgressState
from dengine.raft.quorum import has_quorum, quorum_size, quorum_value
from dengine.raft.readonly import ReadOnly, ReadState, decode_round, encode_round
from dengine.storage.log_api import LogCompacted, LogStorage

MSG_APPEND = MessageType.MSG_APPEND
MSG_APPEND_RESPONSE = MessageType.MSG_APPEND_RESPONSE
MSG_VOTE = MessageType.MSG_VOTE
MSG_VOTE_RESPONSE = MessageType.MSG_VOTE_RESPONSE
MSG_PRE_VOTE = MessageType.MSG_PRE_VOTE
MSG_PRE_VOTE_RESPONSE = MessageType.MSG_PRE_VOTE_RESPONSE
MSG_HEARTBEAT = MessageType.MSG_HEARTBEAT
MSG_HEARTBEAT_RESPONSE = MessageType.MSG_HEARTBEAT_RESPONSE
MSG_SNAPSHOT = MessageType.MSG_SNAPSHOT
MSG_TIMEOUT_NOW = MessageType.MSG_TIMEOUT_NOW
MSG_READ_INDEX = MessageType.MSG_READ_INDEX
MSG_READ_INDEX_RESPONSE = MessageType.MSG_READ_INDEX_RESPONSE
MSG_TRANSFER_LEADER = MessageType.MSG_TRANSFER_LEADER

# Vote requests of a leadership transfer carry this context: voters grant them even while
# they still hear from the current leader (it asked for the transfer).
TRANSFER_CONTEXT = b"transfer"

# Heartbeat rounds a follower in SNAPSHOT state may answer without progress before the
# leader assumes the snapshot was lost and probes again, in election timeouts.
SNAPSHOT_STALL_TIMEOUTS = 4


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"
    LEARNER = "learner"  # a follower that is a non-voting member


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state the driver may want to observe: who leads, and our role."""

    leader_id: int
    role: Role


@dataclass(slots=True)
class Ready:
    """One batch of outputs; see the driver contract in the module docstring."""

    soft_state: SoftState | None  # None when unchanged since the last Ready
    hard_state: HardState | None  # None when unchanged since the last Ready
    entries: list[Entry]
    messages: list[Message]
    committed_entries: list[Entry]
    read_states: list[ReadState]
    snapshot: SnapshotMetadata | None


class _ProposedBatch:
    """The entries of the leader's last `propose_batch`, held in one Message.

    Copying N entries into each follower's append costs ~0.7 µs per entry and follower;
    parsing their encoding (made once, shared by every follower) costs ~0.1. By the Log
    Matching property, log entries at `first` .. `last` whose last one has `term` are these.
    """

    __slots__ = ("_encoded", "_holder", "first", "last", "term")

    def __init__(self, first: int, last: int, term: int, holder: Message) -> None:
        self.first = first
        self.last = last
        self.term = term
        self._holder = holder
        self._encoded: bytes | None = None

    def encoded(self) -> bytes:
        """The entries as the `entries` field of a Message, ready to merge into one."""
        if self._encoded is None:
            self._encoded = self._holder.SerializeToString()
        return self._encoded


@dataclass
class RaftConfig:
    """Tuning of one core. Times are in ticks."""

    id: int
    election_tick: int = 10
    heartbeat_tick: int = 1
    max_entries_per_msg: int = 4096
    max_bytes_per_msg: int = 4 * 1024 * 1024
    max_inflight_msgs: int = 64
    pre_vote: bool = True
    check_quorum: bool = True
    # Lease reads are served for lease_ticks after a quorum-acked heartbeat was sent;
    # 0 disables them. Must stay below election_tick (the margin is the clock-drift bound).
    lease_ticks: int = 0
    lease_read: bool = True
    # Index the state machine has applied (restart): committed entries above it are re-applied.
    applied: int = 0
    # First boot only, when no `bootstrap` Membership is given: the initial voter ids.
    peers: list[int] = field(default_factory=list)
    max_apply_entries: int = 16384

    def validate(self) -> RaftConfig:
        if self.id <= 0:
            raise ConfigError(f"raft node id must be positive, got {self.id}")
        if self.heartbeat_tick <= 0 or self.election_tick <= self.heartbeat_tick:
            raise ConfigError(
                f"need 0 < heartbeat_tick ({self.heartbeat_tick}) < election_tick "
                f"({self.election_tick})"
            )
        for name in ("max_entries_per_msg", "max_bytes_per_msg", "max_inflight_msgs",
                     "max_apply_entries"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.lease_ticks < self.election_tick:
            raise ConfigError(
                f"lease_ticks ({self.lease_ticks}) must be in [0, election_tick "
                f"({self.election_tick})): a lease must end before another leader can exist"
            )
        if self.applied < 0:
            raise ConfigError(f"applied must be >= 0, got {self.applied}")
        return self


def _validate_membership(m: Membership) -> None:
    ids = [x.id for x in m.voters] + [x.id for x in m.learners]
    if any(i <= 0 for i in ids):
        raise InvalidRequest(f"member ids must be positive, got {sorted(ids)}")
    if len(set(ids)) != len(ids):
        raise InvalidRequest(f"a node appears twice in the membership {sorted(ids)}")
    if not m.voters:
        raise InvalidRequest("a membership needs at least one voter")


class RaftCore:
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
    LEARNER; see `role`), `log` (RaftLog: `committed`, `applied`, `last_index()`,
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
        self.log = RaftLog(log)
        hs = log.hard_state()
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
                _validate_membership(bootstrap)
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

    def membership_at(self, index: int) -> Membership:
        """The membership in effect at `index` (valid for index >= the applied index)."""
        m = self._base_membership
        for conf_index, conf in self._configs:
            if conf_index > index:
                break
            m = conf
        return m

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

    def campaign(self) -> None:
        """Start an election now, as if the election timeout had passed (pre-vote first)."""
        if self.state is Role.LEADER or not self._promotable():
            return
        self._campaign(pre=self.cfg.pre_vote, transfer=False)

    def propose(self, commands: list[bytes]) -> list[LogId]:
        """Append commands as entries of the current term; NotLeader on a non-leader."""
        term, first = self.propose_batch(commands)
        return [LogId(term=term, index=i) for i in range(first, first + len(commands))]

    def propose_batch(self, commands: list[bytes]) -> tuple[int, int]:
        """`propose` without a LogId per command (the node's hot path): returns the term
        and the index of the first entry; the commands take consecutive indexes."""
        if self.state is not Role.LEADER:
            raise NotLeader(leader_id=self.lead)
        if self.lead_transferee:
            raise Unavailable(
                f"leadership is being transferred to node {self.lead_transferee}; retry shortly"
            )
        first = index = self.log.last_index() + 1
        term = self.term
        if not commands:
            return term, first
        # The entries are built inside one Message so that the append messages for them
        # can be made from its encoding (see _ProposedBatch) rather than by copying each.
        holder = Message()
        add = holder.entries.add
        for command in commands:
            add(index=index, term=term).payload.command = command
            index += 1
        self.log.append(list(holder.entries))
        self._batch = _ProposedBatch(first, index - 1, term, holder)
        self._needs_bcast = True
        return term, first

    def propose_membership(self, membership: Membership) -> LogId:
        """Append a config entry changing at most one voter; effective once appended."""
        if self.state is not Role.LEADER:
            raise NotLeader(leader_id=self.lead)
        if self.lead_transferee:
            raise Unavailable("leadership transfer in progress; retry the membership change")
        if not self.term_committed:
            raise Unavailable(
                "the leader has not committed an entry of its term yet; retry the "
                "membership change shortly"
            )
        pending = self._configs[-1][0] if self._configs else 0
        if pending > self.log.committed:
            raise Unavailable(
                f"membership change at index {pending} is not committed yet; one change at a time"
            )
        _validate_membership(membership)
        old = set(self.voters)
        new = {m.id for m in membership.voters}
        if len(old ^ new) > 1:
            raise InvalidRequest(
                f"voters {sorted(old)} -> {sorted(new)} changes more than one voter; "
                "add or remove one voter per change"
            )
        entry = Entry(index=self.log.last_index() + 1, term=self.term)
        entry.payload.config.CopyFrom(membership)
        self._append_as_leader([entry])
        return LogId(term=self.term, index=entry.index)

    def read_index(self, ctx: bytes, lease: bool = False) -> None:
        """Ask for a linearizable read point; the answer arrives as a ReadState(ctx, index).

        With `lease=True` a leader holding a valid lease answers at once; otherwise (and on
        followers, which ask the leader) a heartbeat round confirms leadership first.
        Unavailable when no leader is known.
        """
        if self.state is Role.LEADER:
            if lease and self._lease_valid():
                self._read_states.append(ReadState(ctx, self.log.committed))
                return
            self._leader_read(ctx, self.id)
            return
        if not self.lead:
            raise Unavailable(f"node {self.id} knows no leader to confirm a read")
        self._send(MSG_READ_INDEX, self.lead, context=ctx)

    def transfer_leadership(self, to: int) -> None:
        """Hand leadership to voter `to`: catch it up, then tell it to campaign at once."""
        if self.state is not Role.LEADER:
            if not self.lead:
                raise Unavailable(f"node {self.id} knows no leader to transfer leadership from")
            self._send(MSG_TRANSFER_LEADER, self.lead, index=to)
            return
        if to == self.id:
            self.lead_transferee = 0
            return
        if to not in self.voters or to not in self.prs:
            raise InvalidRequest(f"cannot transfer leadership to node {to}: not a voter")
        if self.lead_transferee == to:
            return
        self.lead_transferee = to
        self.election_elapsed = 0  # the transfer is abandoned after one election timeout
        if self.prs[to].match == self.log.last_index():
            self._send_timeout_now(to)
        else:
            self._send_append(to)

    def report_unreachable(self, peer: int) -> None:
        """The transport could not reach `peer`: stop pipelining to it."""
        pr = self.prs.get(peer)
        if self.state is Role.LEADER and pr is not None and pr.state is ProgressState.REPLICATE:
            pr.become_probe()

    def report_snapshot(self, peer: int, ok: bool) -> None:
        """The snapshot transfer to `peer` finished (`ok`) or failed; resume probing."""
        pr = self.prs.get(peer)
        if self.state is not Role.LEADER or pr is None or pr.state is not ProgressState.SNAPSHOT:
            return
        if not ok:
            pr.pending_snapshot = 0
        pr.become_probe()
        pr.probe_sent = True  # wait for the next heartbeat response before probing

    def step(self, m: Message) -> None:
        """Handle one message from a peer."""
        if m.from_id == self.id or (m.to_id and m.to_id != self.id):
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

    # ------------------------------------------------------------------ overridable rules

    def _maybe_commit(self) -> bool:
        """Commit the highest index a majority of voters holds, if it is of our term (§5.4.2)."""
        prs = self.prs
        index = quorum_value(self.voters, {v: prs[v].match for v in self.voters if v in prs})
        if index > self.log.committed and self.log.term(index) == self.term:
            return self.log.commit_to(index)
        return False

    def _can_grant_vote(self, m: Message) -> bool:
        """One vote per term, and only for a log at least as up to date as ours (§5.2, §5.4.1)."""
        can_vote = (
            self.vote == m.from_id
            or (self.vote == 0 and self.lead == 0)
            or (m.type == MSG_PRE_VOTE and m.term > self.term)
        )
        return can_vote and self.log.is_up_to_date(m.index, m.log_term)

    def _lease_valid(self) -> bool:
        """Whether a lease read may be served now (see the class docstring)."""
        start = self.readonly.lease_start
        return (
            self.state is Role.LEADER
            and self.cfg.check_quorum
            and self.cfg.lease_read
            and self.cfg.lease_ticks > 0
            and self.term_committed
            and not self.lease_revoked
            and not self.lead_transferee
            and start is not None
            and self.now - start < self.cfg.lease_ticks
        )

    # ------------------------------------------------------------------ roles

    def _promotable(self) -> bool:
        return self.id in self.voters

    def _in_vote_lease(self) -> bool:
        """Whether we heard from a leader within the election timeout (and must not vote)."""
        if not self.cfg.check_quorum or self.election_elapsed >= self.cfg.election_tick:
            return False
        return bool(self.lead) or (self._restarted and self.now < self.cfg.election_tick)

    def _reset_election_timeout(self) -> None:
        e = self.cfg.election_tick
        self.randomized_election_timeout = self.rng.randrange(e, 2 * e)

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = 0
        self.lead = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_election_timeout()
        self.votes = {}
        self.lead_transferee = 0
        self.prs = {}
        self.readonly = ReadOnly()
        self.term_committed = False
        self.lease_revoked = False
        self._needs_bcast = False
        self._batch = None

    def _become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.lead = lead
        self.state = Role.FOLLOWER

    def _campaign(self, pre: bool, transfer: bool) -> None:
        if pre:
            self._reset(self.term)
            self.state = Role.PRE_CANDIDATE
            vote_term = self.term + 1
            msg_type = MSG_PRE_VOTE
        else:
            self._reset(self.term + 1)
            self.vote = self.id
            self.state = Role.CANDIDATE
            vote_term = self.term
            msg_type = MSG_VOTE
        if self._poll(self.id, True):
            return
        last_index = self.log.last_index()
        last_term = self.log.last_term()
        for v in sorted(self.voters):
            if v != self.id:
                self._msgs.append(
                    Message(
                        type=msg_type,
                        to_id=v,
                        from_id=self.id,
                        term=vote_term,
                        index=last_index,
                        log_term=last_term,
                        context=TRANSFER_CONTEXT if transfer else b"",
                    )
                )

    def _poll(self, voter: int, granted: bool) -> bool:
        """Record a vote; act on the outcome. True when the election was decided."""
        if voter in self.voters:
            self.votes.setdefault(voter, granted)
        yes = sum(1 for v, g in self.votes.items() if g)
        no = len(self.votes) - yes
        if yes >= quorum_size(self.voters):
            if self.state is Role.PRE_CANDIDATE:
                self._campaign(pre=False, transfer=False)
            else:
                self._become_leader()
            return True
        if len(self.voters) - no < quorum_size(self.voters):
            self._become_follower(self.term, 0)
            return True
        return False

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.state = Role.LEADER
        self.lead = self.id
        next_index = self.log.last_index() + 1
        for member in (*self.membership.voters, *self.membership.learners):
            self._add_progress(member.id, next_index)
        own = self._add_progress(self.id, next_index)
        own.match = self.log.stable_last_index()
        own.become_replicate()
        own.recent_active = True
        noop = Entry(index=next_index, term=self.term)
        noop.payload.noop.SetInParent()
        entries = [noop]
        if self._base_from_bootstrap and not self._configs:
            conf = Entry(index=next_index + 1, term=self.term)
            conf.payload.config.CopyFrom(self._base_membership)
            entries.append(conf)
        self._append_as_leader(entries)

    def _add_progress(self, peer: int, next_index: int) -> Progress:
        pr = self.prs.get(peer)
        if pr is None:
            pr = self.prs[peer] = Progress(next_index, self.cfg.max_inflight_msgs)
        return pr

    # ------------------------------------------------------------------ leader

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

    def _append_as_leader(self, entries: list[Entry]) -> None:
        self.log.append(entries)
        self._config_appended(entries)
        self._needs_bcast = True
        if self._maybe_commit():  # a removed voter may have been all that held commit back
            self._on_commit()

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

    def _handle_append_response(self, m: Message) -> None:
        pr = self.prs.get(m.from_id)
        if pr is None:
            return
        pr.recent_active = True
        if m.reject:
            self._handle_reject(m, pr)
            return
        was_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT:
            if pr.match >= pr.pending_snapshot or pr.match + 1 >= self.log.first_index():
                pr.become_probe()
                pr.become_replicate()
        else:
            pr.free_inflight_to(m.index)
        if self._maybe_commit():
            self._on_commit()
        elif was_paused or pr.state is ProgressState.REPLICATE:
            self._send_append(m.from_id)
        if (
            m.from_id == self.lead_transferee
            and pr.match == self.log.last_index()
            and self.state is Role.LEADER
        ):
            self._send_timeout_now(m.from_id)

    def _handle_reject(self, m: Message, pr: Progress) -> None:
        rejected = int(m.index)
        if pr.state is ProgressState.REPLICATE:
            if rejected <= pr.match:
                return  # stale: answers an append sent before a later success
        elif pr.state is ProgressState.PROBE:
            if rejected != pr.next - 1:
                return  # stale: not the probe we are waiting for
        else:
            return
        if m.hint_term == 0:
            candidate = int(m.reject_hint) + 1  # the follower's log ends at reject_hint
        else:
            ours = self.log.last_index_of_term(int(m.hint_term), rejected)
            candidate = ours + 1 if ours else int(m.reject_hint)
        pr.become_probe()
        pr.next = max(min(candidate, rejected), pr.match + 1)
        self._send_append(m.from_id)

    def _handle_heartbeat_response(self, m: Message) -> None:
        pr = self.prs.get(m.from_id)
        if pr is None:
            return
        pr.recent_active = True
        pr.probe_sent = False
        last = self.log.last_index()
        if pr.match < last:
            pr.stalled_rounds += 1
            if pr.state is ProgressState.REPLICATE:
                if pr.stalled_rounds >= 2:
                    pr.become_probe()  # appends were lost: resend from the match point
                elif len(pr.inflight) >= pr.max_inflight:
                    pr.inflight.popleft()
            elif pr.state is ProgressState.SNAPSHOT and pr.stalled_rounds >= (
                SNAPSHOT_STALL_TIMEOUTS * self.cfg.election_tick // self.cfg.heartbeat_tick
            ):
                pr.become_probe()  # the snapshot was lost and nobody reported it
            # A probing peer gets a probe even when its next index is past our log (after a
            # lost snapshot of our last index): its answer tells us where it really is.
            self._send_append(m.from_id, allow_empty=pr.state is ProgressState.PROBE)
        round_id = decode_round(m.context)
        if round_id > pr.acked_round:
            pr.acked_round = round_id
            self._check_read_quorum()

    def _on_commit(self) -> None:
        """The commit index moved on the leader: release reads, tell followers, maybe retire."""
        if not self.term_committed and self.log.term(self.log.committed) == self.term:
            self.term_committed = True
            ro = self.readonly
            for ctx, requester in ro.waiting_commit:
                ro.unsent.append((ctx, self.log.committed, requester))
            ro.waiting_commit.clear()
        self._needs_bcast = True
        conf_index = self._configs[-1][0] if self._configs else 0
        if self.id not in self.voters and conf_index <= self.log.committed:
            self._bcast_append()  # let the others learn the commit before we go quiet
            self._become_follower(self.term, 0)

    def _bcast_append(self) -> None:
        for peer in self.prs:
            if peer != self.id:
                self._send_append(peer, allow_empty=True)

    def _send_append(self, to: int, allow_empty: bool = False) -> bool:
        """Send what `to` is missing (pipelined within its window); False if nothing went."""
        pr = self.prs[to]
        log = self.log
        cfg = self.cfg
        sent = False
        while not pr.is_paused():
            prev = pr.next - 1
            last = log.last_index()
            try:
                prev_term = log.term(prev)
                entries = (
                    log.entries(pr.next, min(last + 1, pr.next + cfg.max_entries_per_msg))
                    if pr.next <= last
                    else []
                )
            except LogCompacted:
                self._send_snapshot(to, pr)
                return True
            if not entries and not allow_empty:
                break
            msg = Message(
                type=MSG_APPEND,
                to_id=to,
                from_id=self.id,
                term=self.term,
                index=prev,
                log_term=prev_term,
                commit=log.committed,
            )
            batch = self._batch
            if (
                batch is not None
                and entries
                and entries[0].index == batch.first
                and entries[-1].index == batch.last
                and entries[-1].term == batch.term
            ):
                msg.MergeFromString(batch.encoded())
            else:
                msg.entries.extend(entries)
            if len(entries) > 1 and msg.ByteSize() > cfg.max_bytes_per_msg:
                entries = _within_bytes(entries, cfg.max_bytes_per_msg)
                del msg.entries[len(entries) :]
            self._msgs.append(msg)
            pr.sent(prev + len(entries), len(entries))
            sent = True
            allow_empty = False
            if not entries or pr.state is not ProgressState.REPLICATE:
                break
        return sent

    def _send_snapshot(self, to: int, pr: Progress) -> None:
        snap = self.log.storage.snapshot_metadata()
        if snap is None:
            raise DengineError(
                f"entries below {self.log.first_index()} were compacted without a snapshot"
            )
        self._msgs.append(
            Message(type=MSG_SNAPSHOT, to_id=to, from_id=self.id, term=self.term, snapshot=snap)
        )
        pr.become_snapshot(int(snap.last_included.index))

    def _send_timeout_now(self, to: int) -> None:
        # The target will win an election that ignores our followers' vote lease: our own
        # lease can no longer be trusted for the rest of this term.
        self.lease_revoked = True
        self._send(MSG_TIMEOUT_NOW, to)

    def _start_read_round(self) -> None:
        """Send a heartbeat round (carrying the round id) to every peer."""
        ro = self.readonly
        round_id = ro.start_round(self.now)
        own = self.prs.get(self.id)
        if own is not None:
            own.acked_round = round_id
        context = encode_round(round_id)
        committed = self.log.committed
        for peer, pr in self.prs.items():
            if peer != self.id:
                self._msgs.append(
                    Message(
                        type=MSG_HEARTBEAT,
                        to_id=peer,
                        from_id=self.id,
                        term=self.term,
                        commit=min(pr.match, committed),
                        context=context,
                    )
                )
        self._check_read_quorum()

    def _check_read_quorum(self) -> None:
        prs = self.prs
        acked = quorum_value(self.voters, {v: prs[v].acked_round for v in self.voters if v in prs})
        for ctx, index, requester in self.readonly.quorum_acked(acked):
            if requester == self.id:
                self._read_states.append(ReadState(ctx, index))
            else:
                self._send(MSG_READ_INDEX_RESPONSE, requester, index=index, context=ctx)

    def _leader_read(self, ctx: bytes, requester: int) -> None:
        if self.term_committed:
            self.readonly.unsent.append((ctx, self.log.committed, requester))
        else:
            self.readonly.waiting_commit.append((ctx, requester))

    # ------------------------------------------------------------------ followers, candidates

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        if t in (MSG_APPEND, MSG_HEARTBEAT, MSG_SNAPSHOT):
            self._become_follower(self.term, m.from_id)
            self._step_follower(m)
        elif (t == MSG_PRE_VOTE_RESPONSE and self.state is Role.PRE_CANDIDATE) or (
            t == MSG_VOTE_RESPONSE and self.state is Role.CANDIDATE
        ):
            if t == MSG_PRE_VOTE_RESPONSE and not m.reject and m.term != self.term + 1:
                return  # a grant from an earlier pre-campaign
            self._poll(m.from_id, not m.reject)

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

    def _handle_vote_request(self, m: Message) -> None:
        pre = m.type == MSG_PRE_VOTE
        resp = MSG_PRE_VOTE_RESPONSE if pre else MSG_VOTE_RESPONSE
        if self._can_grant_vote(m):
            self._msgs.append(
                Message(type=resp, to_id=m.from_id, from_id=self.id, term=m.term)
            )
            if not pre:
                self.election_elapsed = 0
                self.vote = m.from_id
        else:
            self._send(resp, m.from_id, reject=True)

    def _handle_append(self, m: Message) -> None:
        log = self.log
        prev = int(m.index)
        if prev < log.committed:
            self._send(MSG_APPEND_RESPONSE, m.from_id, index=log.committed)
            return
        if not log.match_term(prev, m.log_term):
            hint, hint_term = log.find_conflict_hint(prev)
            self._send(
                MSG_APPEND_RESPONSE,
                m.from_id,
                index=prev,
                reject=True,
                reject_hint=hint,
                hint_term=hint_term,
            )
            return
        entries = m.entries
        last_new = prev + len(entries)
        if entries:
            conflict = self._find_conflict(entries)
            if conflict:
                new = entries[conflict - prev - 1 :]
                truncating = conflict <= log.last_index()
                log.truncate_and_append(new)
                if truncating:
                    self._config_truncated(conflict)
                self._config_appended(new)
        log.commit_to(min(int(m.commit), last_new))
        self._send(MSG_APPEND_RESPONSE, m.from_id, index=last_new)

    def _find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first entry we lack or hold with another term; 0 if we hold them all."""
        log = self.log
        last = log.last_index()
        if entries[0].index > last:
            return int(entries[0].index)
        first = log.first_index()
        for e in entries:
            i = int(e.index)
            if i > last:
                return i
            if i >= first and log.term(i) != e.term:
                return i
        return 0

    def _handle_snapshot(self, m: Message) -> None:
        log = self.log
        snap = m.snapshot
        index = int(snap.last_included.index)
        if index <= log.committed:
            self._send(MSG_APPEND_RESPONSE, m.from_id, index=log.committed)
            return
        if log.match_term(index, int(snap.last_included.term)):
            log.commit_to(index)  # we already hold it: just learn that it is committed
            self._send(MSG_APPEND_RESPONSE, m.from_id, index=index)
            return
        log.restore(snap)
        self._base_membership = snap.membership
        self._base_from_bootstrap = False
        self._configs = []
        self._set_membership(snap.membership)
        self._send(MSG_APPEND_RESPONSE, m.from_id, index=index)

    # ------------------------------------------------------------------ membership

    def _scan_configs(self) -> list[tuple[int, Membership]]:
        """Config entries in the log, newest last, back to the latest committed one.

        Only those entries are read: the log knows where they are, so a restart with a
        long log does not decode every entry to find them."""
        storage = self.log.storage
        found: list[tuple[int, Membership]] = []
        for index in reversed(storage.config_indexes()):
            found.append((index, storage.entries(index, index + 1)[0].payload.config))
            if index <= self.log.committed:
                break
        found.reverse()
        return found

    def _config_appended(self, entries: list[Entry]) -> None:
        changed = False
        for e in entries:
            if e.payload.HasField("config"):
                self._configs.append((int(e.index), e.payload.config))
                changed = True
        if changed:
            self._set_membership(self._configs[-1][1])

    def _config_truncated(self, index: int) -> None:
        configs = self._configs
        if configs and configs[-1][0] >= index:
            while configs and configs[-1][0] >= index:
                configs.pop()
            self._set_membership(configs[-1][1] if configs else self._base_membership)

    def _prune_configs(self) -> None:
        """Forget config entries superseded by a later one at or below the applied index."""
        configs = self._configs
        applied = self.log.applied
        while len(configs) > 1 and configs[1][0] <= applied:
            configs.pop(0)

    def _set_membership(self, membership: Membership) -> None:
        self.membership = membership
        self.voters = frozenset(m.id for m in membership.voters)
        self.learners = frozenset(m.id for m in membership.learners)
        if self.state is Role.LEADER:
            next_index = self.log.last_index() + 1
            members = self.voters | self.learners
            for peer in members:
                self._add_progress(peer, next_index)
            for peer in [p for p in self.prs if p not in members and p != self.id]:
                del self.prs[peer]
            if self.lead_transferee and self.lead_transferee not in self.voters:
                self.lead_transferee = 0
        elif self.state is not Role.FOLLOWER and not self._promotable():
            self._become_follower(self.term, 0)

    # ------------------------------------------------------------------ helpers

    def _send(
        self,
        msg_type: MessageType,
        to: int,
        *,
        index: int = 0,
        reject: bool = False,
        reject_hint: int = 0,
        hint_term: int = 0,
        context: bytes = b"",
    ) -> None:
        self._msgs.append(
            Message(
                type=msg_type,
                to_id=to,
                from_id=self.id,
                term=self.term,
                index=index,
                reject=reject,
                reject_hint=reject_hint,
                hint_term=hint_term,
                context=context,
            )
        )


def _within_bytes(entries: list[Entry], max_bytes: int) -> list[Entry]:
    """The longest prefix of `entries` within `max_bytes` (at least one entry)."""
    size = 0
    for n, e in enumerate(entries):
        size += e.ByteSize()
        if size > max_bytes and n > 0:
            return entries[:n]
    return entries


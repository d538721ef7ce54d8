"""The core's vocabulary: roles, the `Ready` output batch, configuration, message types."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from dengine.errors import ConfigError
from dengine.proto import Entry, HardState, Message, MessageType, SnapshotMetadata

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


@dataclass(frozen=True, slots=True)
class ReadState:
    """A read request `ctx` may be served once the local applied index reaches `index`."""

    ctx: bytes
    index: int


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
    """One batch of outputs; see the driver contract in `dengine.raft.core`."""

    soft_state: SoftState | None  # None when unchanged since the last Ready
    hard_state: HardState | None  # None when unchanged since the last Ready
    entries: list[Entry]
    messages: list[Message]
    committed_entries: list[Entry]
    read_states: list[ReadState]
    snapshot: SnapshotMetadata | None


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

"""What every concern of the core shares: its state, and the calls that cross concerns.

`RaftCore` (core.py) is assembled from one mixin per concern: elections and votes
(election.py), log replication and commit (replication.py), membership changes
(confchange.py) and reads (readonly.py). Each mixin derives from `CoreState`, which
declares the state they share (set up by `RaftCore.__init__`) and, abstract here, the
methods one concern calls in another, so that each file reads and type-checks on its own.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from dengine.proto import Entry, Membership, Message, MessageType
from dengine.raft.log import LogView
from dengine.raft.progress import Progress
from dengine.raft.types import RaftConfig, ReadState, Role

if TYPE_CHECKING:
    from dengine.raft.readonly import ReadOnly
    from dengine.raft.replication import _ProposedBatch


class CoreState(ABC):
    """The state of one core (see `RaftCore` for what each field means to tests)."""

    cfg: RaftConfig
    id: int
    rng: random.Random
    log: LogView
    term: int
    vote: int
    lead: int  # the leader we follow (our own id when leading), 0 when unknown
    state: Role  # never LEARNER; see RaftCore.role
    now: int  # ticks since this core started
    rejected_messages: int  # peer messages dropped (out of bounds, or absurd for our state)
    # Elections.
    votes: dict[int, bool]
    election_elapsed: int
    heartbeat_elapsed: int
    randomized_election_timeout: int
    lead_transferee: int
    _restarted: bool
    # Leader: per-peer replication state, reads, the last proposed batch.
    prs: dict[int, Progress]
    readonly: ReadOnly
    term_committed: bool  # an entry of the current term has committed
    lease_revoked: bool  # sent TimeoutNow in this term
    _needs_bcast: bool
    _batch: _ProposedBatch | None
    # Membership: the base (snapshot or bootstrap) and the config entries since.
    membership: Membership
    voters: frozenset[int]
    learners: frozenset[int]
    _base_membership: Membership
    _base_from_bootstrap: bool
    _configs: list[tuple[int, Membership]]
    # Outputs collected for the next Ready.
    _msgs: list[Message]
    _read_states: list[ReadState]

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

    # ------------------------------------------------------------------ across concerns

    @abstractmethod
    def _become_follower(self, term: int, lead: int) -> None:
        """election.py"""

    @abstractmethod
    def _promotable(self) -> bool:
        """election.py"""

    @abstractmethod
    def _send_timeout_now(self, to: int) -> None:
        """election.py"""

    @abstractmethod
    def _add_progress(self, peer: int, next_index: int) -> Progress:
        """replication.py"""

    @abstractmethod
    def _append_as_leader(self, entries: list[Entry]) -> None:
        """replication.py"""

    @abstractmethod
    def _send_append(self, to: int, allow_empty: bool = False) -> bool:
        """replication.py"""

    @abstractmethod
    def _config_appended(self, entries: list[Entry]) -> None:
        """confchange.py"""

    @abstractmethod
    def _config_truncated(self, index: int) -> None:
        """confchange.py"""

    @abstractmethod
    def _set_membership(self, membership: Membership) -> None:
        """confchange.py"""

    @abstractmethod
    def _check_read_quorum(self) -> None:
        """readonly.py"""

    @abstractmethod
    def _step_follower(self, m: Message) -> None:
        """core.py"""

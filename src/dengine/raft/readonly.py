"""Linearizable reads without writing to the log: ReadIndex batched per heartbeat round, leases.

Every heartbeat the leader sends carries a round number (in `Message.context`). A read is
tagged with the next round to be sent and with the commit index at the time it arrived;
once a quorum of voters has acknowledged that round (or a later one) the leader knows it
was still the leader when the read arrived, and the read may be served at that index.
All reads that arrive between two rounds share one round: one heartbeat for the batch.

A lease is the send tick of the latest round a quorum acknowledged: followers that
acknowledged it refuse votes for a full election timeout after receiving it, so no other
leader can exist before send tick + election timeout.
"""

from __future__ import annotations

from collections import deque

from dengine.errors import InvalidRequest, Unavailable
from dengine.proto import Message
from dengine.raft.limits import MAX_CONTEXT_BYTES
from dengine.raft.quorum import quorum_value
from dengine.raft.state import CoreState
from dengine.raft.types import (
    MSG_HEARTBEAT,
    MSG_READ_INDEX,
    MSG_READ_INDEX_RESPONSE,
    ReadState,
    Role,
)

ROUND_BYTES = 8


def encode_round(round_id: int) -> bytes:
    return round_id.to_bytes(ROUND_BYTES, "big")


def decode_round(context: bytes) -> int:
    """The round number carried by a heartbeat (response); 0 for anything else."""
    return int.from_bytes(context, "big") if len(context) == ROUND_BYTES else 0


class ReadOnly:
    """The leader's pending ReadIndex requests and lease bookkeeping for one term."""

    def __init__(self) -> None:
        self.round = 0  # last heartbeat round started
        self.acked_round = 0  # highest round a quorum of voters acknowledged
        # Reads that arrived before the leader committed an entry of its term: (ctx, from).
        self.waiting_commit: list[tuple[bytes, int]] = []
        # Reads that wait for the next round to be sent: (ctx, index, from).
        self.unsent: list[tuple[bytes, int, int]] = []
        # Reads sent in a round and not yet confirmed: (round, ctx, index, from).
        self.pending: deque[tuple[int, bytes, int, int]] = deque()
        self.round_ticks: dict[int, int] = {}  # round -> tick it was sent at
        self.lease_start: int | None = None  # send tick of the latest quorum-acked round

    def start_round(self, now: int) -> int:
        """Open a new heartbeat round at tick `now`; unsent reads join it."""
        self.round += 1
        self.round_ticks[self.round] = now
        for ctx, index, requester in self.unsent:
            self.pending.append((self.round, ctx, index, requester))
        self.unsent.clear()
        return self.round

    def quorum_acked(self, round_id: int) -> list[tuple[bytes, int, int]]:
        """A quorum acknowledged `round_id`: extend the lease, return the reads it confirms."""
        if round_id <= self.acked_round:
            return []
        self.acked_round = round_id
        sent_at = self.round_ticks.get(round_id)
        if sent_at is not None and (self.lease_start is None or sent_at > self.lease_start):
            self.lease_start = sent_at
        for r in [r for r in self.round_ticks if r <= round_id]:
            del self.round_ticks[r]
        out: list[tuple[bytes, int, int]] = []
        pending = self.pending
        while pending and pending[0][0] <= round_id:
            _, ctx, index, requester = pending.popleft()
            out.append((ctx, index, requester))
        return out

    def forget_rounds_before(self, tick: int) -> None:
        """Drop send ticks too old to ever give a valid lease (bounds memory without quorum)."""
        ticks = self.round_ticks
        while ticks:
            oldest = next(iter(ticks))
            if ticks[oldest] >= tick:
                break
            del ticks[oldest]


class ReadIndexMixin(CoreState):
    """ReadIndex and lease reads of `RaftCore`."""

    def read_index(self, ctx: bytes, lease: bool = False) -> None:
        """Ask for a linearizable read point; the answer arrives as a ReadState(ctx, index).

        With `lease=True` a leader holding a valid lease answers at once; otherwise (and on
        followers, which ask the leader) a heartbeat round confirms leadership first.
        Unavailable when no leader is known; InvalidRequest when `ctx` is longer than
        MAX_CONTEXT_BYTES (the leader would drop the request).
        """
        if len(ctx) > MAX_CONTEXT_BYTES:
            raise InvalidRequest(
                f"read context of {len(ctx)} bytes (at most {MAX_CONTEXT_BYTES})"
            )
        if self.state is Role.LEADER:
            if lease and self._lease_valid():
                self._read_states.append(ReadState(ctx, self.log.committed))
                return
            self._leader_read(ctx, self.id)
            return
        if not self.lead:
            raise Unavailable(f"node {self.id} knows no leader to confirm a read")
        self._send(MSG_READ_INDEX, self.lead, context=ctx)

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

    def _leader_read(self, ctx: bytes, requester: int) -> None:
        if self.term_committed:
            self.readonly.unsent.append((ctx, self.log.committed, requester))
        else:
            self.readonly.waiting_commit.append((ctx, requester))

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

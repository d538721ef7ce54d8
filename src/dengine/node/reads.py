"""The read path: ReadIndex rounds, lease reads, and reads waiting for their index to apply.

Linearizable and lease reads queued in one loop turn share one round per mode: one
`core.read_index` call (a leader confirms its leadership with a heartbeat round, or by
its lease for lease reads; a follower asks the leader). When the core reports the
round's `ReadState`, its reads wait in `ready` until the state machine has applied the
read index (`serve_ready`, called after each apply and each Ready), then are answered
from the state machine. A leader asks again for rounds unanswered after an election
timeout (lost heartbeats; check-quorum deposes it if no quorum answers); a follower fails
their reads with a retryable NotLeader naming the leader (it may be unable to reach it:
asking again would hold every read until its deadline). A new leader is asked again for
every unanswered round at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from dengine.errors import DengineError, NotLeader, Unavailable
from dengine.node.pending import Read, expire_read
from dengine.raft import RaftCore, ReadState
from dengine.storage.state_machine import StateMachine


class ReadRound:
    """Reads sharing one ReadIndex request (all reads of one mode in one loop turn)."""

    __slots__ = ("issued_tick", "lease", "reads")

    def __init__(self, reads: list[Read], lease: bool, issued_tick: int) -> None:
        self.reads = reads
        self.lease = lease
        self.issued_tick = issued_tick


class ReadPath:
    """The reads between their ReadIndex request and their answer."""

    def __init__(self, node_id: int, sm: StateMachine) -> None:
        self._node_id = node_id
        self._sm = sm
        self.rounds: dict[bytes, ReadRound] = {}  # by ReadIndex context
        self.ready: list[tuple[int, Read]] = []  # (read index, read): waiting for apply
        self.rounds_started = 0

    def start_round(
        self, core: RaftCore, reads: list[Read], lease: bool, leader: bool, tick: int
    ) -> None:
        """Ask the core for one read index for `reads` (a lease read if `lease` and we lead)."""
        self.rounds_started += 1
        ctx = self.rounds_started.to_bytes(8, "big")
        try:
            core.read_index(ctx, lease=lease and leader)
        except DengineError as e:
            error = e if not isinstance(e, NotLeader) else Unavailable(
                f"node {self._node_id} knows no leader to confirm a read"
            )
            for r in reads:
                if not r.future.done():
                    r.future.set_exception(error)
            return
        self.rounds[ctx] = ReadRound(reads, lease, tick)

    def retry_stale(
        self, core: RaftCore, leader: bool, tick: int, election_ticks: int | None,
        unanswered: Callable[[], DengineError] | None = None,
    ) -> None:
        """Rounds unanswered after an election timeout: a leader asks again (lost
        heartbeats); a follower fails their reads with `unanswered()` when given (its
        leader did not answer: the follower's links to it may be cut, so the client had
        better ask another node; issue 14), else asks again. Every unanswered round is
        asked again when `election_ticks` is None (the leader changed: the old one will
        not answer)."""
        if election_ticks is None:
            stale = list(self.rounds)
        else:
            limit = tick - election_ticks
            stale = [ctx for ctx, rnd in self.rounds.items() if rnd.issued_tick < limit]
        if not stale:
            return
        error = None
        if unanswered is not None and election_ticks is not None and not leader:
            error = unanswered()
        for ctx in stale:
            rnd = self.rounds.pop(ctx)
            alive = [r for r in rnd.reads if not r.future.done()]
            if error is not None:
                for r in alive:
                    r.future.set_exception(error)
            elif alive:
                self.start_round(core, alive, rnd.lease, leader, tick)

    def on_read_states(self, read_states: Iterable[ReadState]) -> None:
        """The core answered rounds: their reads now wait for their index to be applied."""
        rounds, ready = self.rounds, self.ready
        for rs in read_states:
            rnd = rounds.pop(rs.ctx, None)
            if rnd is not None:
                for r in rnd.reads:
                    ready.append((rs.index, r))

    def serve_ready(self, applied: int) -> None:
        """Answer the reads whose read index is applied (`applied`)."""
        pending = []
        serve = self.serve
        for index, r in self.ready:
            if index <= applied:
                serve(r)
            else:
                pending.append((index, r))
        self.ready = pending

    def serve(self, r: Read) -> None:
        """Answer `r` from the state machine as it is now."""
        if r.future.done():
            return
        if r.query is not None:
            try:
                result = self._sm.read(r.query)
            except Exception as e:  # the query's own error (e.g. a compacted revision)
                r.future.set_exception(e)
            else:
                r.future.set_result(result)
            return
        get = self._sm.get
        r.future.set_result([get(k) for k in r.keys])

    def expire(self, now: int) -> None:
        for rnd in self.rounds.values():
            for r in rnd.reads:
                expire_read(r, now)
        for _, r in self.ready:
            expire_read(r, now)

    def fail_unconfirmed(self, error: DengineError) -> None:
        """Leadership lost: fail the reads whose round this node had not confirmed yet
        (never served, so retryable elsewhere). Reads given a read index while it led wait
        for their apply as before: that index was confirmed."""
        for rnd in self.rounds.values():
            for r in rnd.reads:
                if not r.future.done():
                    r.future.set_exception(error)
        self.rounds.clear()

    def fail(self, why: str) -> None:
        """Fail every read in progress with Unavailable(why) (the node stops)."""
        reads = [r for rnd in self.rounds.values() for r in rnd.reads]
        reads += [r for _, r in self.ready]
        for r in reads:
            if not r.future.done():
                r.future.set_exception(Unavailable(why))
        self.rounds.clear()
        self.ready = []

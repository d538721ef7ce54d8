"""What the leader knows about each follower's log, and how fast it may send to it.

A follower starts in PROBE (one append in flight until it answers, to find where the
logs agree), moves to REPLICATE once an append is accepted (appends are pipelined up
to `max_inflight` unacknowledged messages), and sits in SNAPSHOT while it is sent a
snapshot because the entries it needs were compacted away.
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    """Replication state of one peer as seen by the leader."""

    __slots__ = (
        "acked_round",
        "inflight",
        "match",
        "max_inflight",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "retry_tick",
        "stalled_rounds",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.recent_active = False
        self.max_inflight = max_inflight
        # Last index of each unacknowledged append, oldest first (REPLICATE only).
        self.inflight: deque[int] = deque()
        # Highest heartbeat round this peer acknowledged (ReadIndex / lease).
        self.acked_round = 0
        # Heartbeat intervals answered while `match` stood still behind the leader's log.
        self.stalled_rounds = 0
        # Tick before which a heartbeat response triggers no resend (one per interval).
        self.retry_tick = 0

    def __repr__(self) -> str:
        return (
            f"Progress(match={self.match}, next={self.next}, state={self.state.value}, "
            f"inflight={len(self.inflight)}, pending_snapshot={self.pending_snapshot})"
        )

    def become_probe(self) -> None:
        """Stop pipelining: send one append at a time until the follower answers."""
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflight.clear()
        self.stalled_rounds = 0

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflight.clear()
        self.stalled_rounds = 0

    def become_snapshot(self, snapshot_index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = snapshot_index
        self.probe_sent = False
        self.inflight.clear()
        self.stalled_rounds = 0

    def is_paused(self) -> bool:
        """Whether the leader must not send another append now."""
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflight) >= self.max_inflight
        return True

    def maybe_update(self, index: int) -> bool:
        """Record that the follower's log matches ours up to `index`; False if stale."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
            self.stalled_rounds = 0
        if self.next < index + 1:
            self.next = index + 1
        return updated

    def sent(self, last_index: int, n_entries: int) -> None:
        """Record that an append ending at `last_index` carrying `n_entries` went out."""
        if self.state is ProgressState.REPLICATE:
            if n_entries:
                self.next = last_index + 1
                self.inflight.append(last_index)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def free_inflight_to(self, index: int) -> None:
        """Acknowledged appends ending at or below `index` no longer count against the window."""
        inflight = self.inflight
        while inflight and inflight[0] <= index:
            inflight.popleft()

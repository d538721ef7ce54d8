"""Timings the node keeps for its metrics (`dengine.server.metrics` turns them into
Prometheus histograms at each scrape): how long the Raft log's durable writes take, and the
round trip of the leader's heartbeats to each peer. Plain counters, no I/O."""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence

from dengine.proto import Message, MessageType

# Upper bounds in seconds (etcd's disk and peer histograms span about the same).
BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512,
           1.024, 2.048, 4.096, 8.192)
# A heartbeat without its answer after this long was lost: the next one is timed instead.
RTT_GIVE_UP_S = 2.0
# (protobuf's enum wrapper looks a name up in Python, ~1 µs: once, not per message)
_MSG_HEARTBEAT_RESPONSE = MessageType.MSG_HEARTBEAT_RESPONSE


class DurationHistogram:
    """Counts of durations by bucket (`counts[i]`: at most BUCKETS[i], the last: above
    them all), their sum and number."""

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus' buckets: (upper bound, observations up to it), "+Inf" last."""
        out, total = [], 0
        for bound, n in zip((*map(str, BUCKETS), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


class PeerRtt:
    """The round trip of a heartbeat to each peer (sent by the leader, answered by the
    follower): the first heartbeat without an answer is timed, until its answer comes."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._sent: dict[int, float] = {}
        self.by_peer: dict[int, DurationHistogram] = {}

    def sent(self, peer: int) -> None:
        now = self._clock()
        since = self._sent.get(peer)
        if since is None or now - since > RTT_GIVE_UP_S:
            self._sent[peer] = now

    def received(self, peer: int, messages: Sequence[Message]) -> None:
        """Messages from `peer` arrived: a heartbeat's answer among them ends its trip."""
        if any(m.type == _MSG_HEARTBEAT_RESPONSE for m in messages):
            self.answered(peer)

    def answered(self, peer: int) -> None:
        since = self._sent.pop(peer, None)
        if since is not None:
            self.by_peer.setdefault(peer, DurationHistogram()).observe(self._clock() - since)

"""The node's metric timings: histogram buckets as Prometheus' cumulative counts, and a
heartbeat round trip timed from its send to its answer (a lost one replaced)."""

from __future__ import annotations

from dengine.node.timing import BUCKETS, RTT_GIVE_UP_S, DurationHistogram, PeerRtt


def test_histogram_buckets_are_cumulative() -> None:
    h = DurationHistogram()
    for seconds in (0.0001, 0.0005, 0.003, 100.0):
        h.observe(seconds)
    buckets = dict(h.cumulative())
    assert buckets[str(BUCKETS[0])] == 2  # at most the bound counts in
    assert buckets["0.004"] == 3 and buckets[str(BUCKETS[-1])] == 3
    assert buckets["+Inf"] == h.count == 4 and round(h.sum, 4) == 100.0036


def test_round_trip_from_the_first_unanswered_heartbeat() -> None:
    now = [0.0]
    rtt = PeerRtt(clock=lambda: now[0])
    rtt.sent(2)
    now[0] = 0.01
    rtt.sent(2)  # still waiting for the first one's answer: not timed again
    now[0] = 0.03
    rtt.answered(2)
    rtt.answered(2)  # an answer with nothing outstanding is not timed
    assert rtt.by_peer[2].count == 1 and round(rtt.by_peer[2].sum, 6) == 0.03
    rtt.sent(3)  # lost: after RTT_GIVE_UP_S the next heartbeat is timed instead
    now[0] += RTT_GIVE_UP_S + 1
    rtt.sent(3)
    now[0] += 0.005
    rtt.answered(3)
    assert round(rtt.by_peer[3].sum, 6) == 0.005

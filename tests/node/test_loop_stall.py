"""A node whose event loop stalls (a long GC pause, a slow synchronous call, a loaded host)
keeps its leader: the ticks owed for the stall count for the lease, not for elections.

The driver used to tick once per tick owed before stepping the messages that had waited
in the sockets meanwhile: after a stall longer than the election timeout, the leader's
check-quorum saw no peer active and stepped down, and every follower campaigned (seen as
a lost leader under a 1M-key load, where a checkpoint's start stalled the loop). Go's
ticker, which etcd's Raft runs on, drops the ticks a slow receiver missed.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from node_helpers import Cluster, run


def test_a_stalled_loop_keeps_the_leader_and_the_term(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = Cluster(tmp_path)  # election timeout 100 ms
        await cluster.start_all()
        try:
            leader = await cluster.leader()
            await leader.put(b"k", b"v0")
            term = leader.status().term
            for i in range(3):
                time.sleep(0.5)  # every node of this process stalls 5 election timeouts
                await leader.put(b"k", b"v%d" % (i + 1))
                await asyncio.sleep(0.3)
            assert sorted((e.node_id, e.status().term, e.leader_id) for e in
                          cluster.engines.values()) == [
                (i, term, leader.node_id) for i in sorted(cluster.engines)]
        finally:
            await cluster.stop_all()

    run(main())

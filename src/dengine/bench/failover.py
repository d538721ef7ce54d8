"""`dengine bench failover`: leader kill -9 to the first successful write, over N trials.

A 3-node subprocess cluster (election timeout 150-300 ms by default). Each trial: make
sure every node is up and caught up, write once through the client (so it knows the
leader), kill -9 the leader, then time until a write through the same client succeeds
(the client's own retries and backoff included, as a user would see it). The killed node
is restarted before the next trial.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from dengine.bench.cluster import LocalCluster
from dengine.bench.runner import NoProgress, Progress
from dengine.errors import DengineError, InvalidRequest, Unavailable

CATCH_UP_TIMEOUT_S = 30.0


@dataclass
class FailoverResult:
    nodes: int
    election_timeout_ms: int
    times: list[float] = field(default_factory=list)  # seconds, one per trial
    failed_writes: int = 0  # attempts that ended in an error before the first success
    error_kinds: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)  # the first few messages

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else 0.0

    @property
    def maximum(self) -> float:
        return max(self.times) if self.times else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "trials": len(self.times),
            "nodes": self.nodes,
            "election_timeout_ms": [self.election_timeout_ms, 2 * self.election_timeout_ms],
            "times_ms": [round(t * 1000, 1) for t in self.times],
            "median_ms": round(self.median * 1000, 1),
            "max_ms": round(self.maximum * 1000, 1),
            "failed_writes": self.failed_writes,
            "error_kinds": self.error_kinds,
            "error_samples": self.error_samples,
        }


async def run_failover(
    trials: int, *, nodes: int = 3, settings: dict[str, Any] | None = None,
    write_timeout: float = 10.0, progress: Progress | None = None,
) -> FailoverResult:
    """Kill the leader `trials` times; see the module docstring."""
    if trials < 1:
        raise InvalidRequest(f"trials must be positive, got {trials}")
    if nodes < 3:
        raise InvalidRequest(f"failover needs at least 3 nodes, got {nodes}")
    progress = progress or NoProgress()
    progress.phase(f"starting a {nodes}-node cluster", None)
    async with LocalCluster(nodes, settings=settings) as cluster:
        result = FailoverResult(nodes, int(cluster.settings["election_timeout_ms"]))
        # A short per-call deadline would turn one slow election into errors; the client
        # retries within it, so one call is one attempt as a user makes it.
        async with cluster.client(timeout=write_timeout) as client:
            progress.phase("kill -9 the leader, write", trials)
            began = time.monotonic()
            for trial in range(trials):
                await _wait_caught_up(cluster)
                await client.put(b"failover", b"before %d" % trial)
                victim = cluster.processes[(await client.leader()).id]
                victim.kill()
                killed = time.perf_counter()
                while True:
                    try:
                        await client.put(b"failover", b"after %d" % trial)
                        break
                    except DengineError as e:
                        result.failed_writes += 1
                        result.error_kinds[e.code] = result.error_kinds.get(e.code, 0) + 1
                        if len(result.error_samples) < 5:
                            result.error_samples.append(f"{e.code}: {e.message}")
                        if time.perf_counter() - killed > 6 * write_timeout:
                            raise Unavailable(
                                f"no write succeeded {6 * write_timeout:g}s after killing "
                                f"node {victim.node_id}"
                            ) from None
                result.times.append(time.perf_counter() - killed)
                victim.start()
                progress.update(trial + 1, time.monotonic() - began)
            await _wait_caught_up(cluster)
    return result


async def _wait_caught_up(cluster: LocalCluster) -> None:
    """Until every node answers and has applied the leader's commit index."""
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    async with cluster.client(timeout=2.0) as client:
        while True:
            statuses = await client.status_all(timeout=1.0)
            ok = [s for s in statuses.values() if not isinstance(s, DengineError)]
            leaders = [s for s in ok if s.role == "leader"]
            if len(ok) == len(statuses) and leaders and all(
                s.applied_index >= leaders[0].commit_index for s in ok
            ):
                return
            if time.monotonic() >= deadline:
                raise Unavailable(f"cluster did not catch up within {CATCH_UP_TIMEOUT_S:g}s: "
                                  f"{statuses}")
            await asyncio.sleep(0.05)

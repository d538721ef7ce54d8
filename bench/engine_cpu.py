"""The engine's CPU per etcd Put, without gRPC: what `etcdctl check perf` costs a dengine
cluster beyond its gRPC front end.

    .venv/bin/python bench/engine_cpu.py --target follower     # a follower's clients
    .venv/bin/python bench/engine_cpu.py --target leader       # the leader's

Three nodes in this process (real engines, disks and sockets; followers forward over the
native protocol, as `dengine serve` does), `--concurrency` callers sending etcd
PutRequests (1 KiB values, as etcdctl's load generator) straight to one member's KV Put
handler, as grpc.aio would call it; the event loop and the collector's thresholds are
`dengine serve`'s. Prints the process CPU (user + system) per write of
each round, the engine work of the three nodes summed: the handler, forwarding, Raft,
persistence and apply. A steadier figure than a cluster's on a shared machine (one
process; no gRPC, no etcdctl).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "server"))
from test_etcd_api import cluster, follower_of, leader_of

from dengine.proto.etcd import rpc_pb2
from dengine.server.process import _loop_factory, tune_gc


class _Context:
    """What the KV handlers ask of a grpc.aio call's context."""

    def __init__(self, timeout: float) -> None:
        self._deadline = time.monotonic() + timeout

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def time_remaining(self) -> float:
        return self._deadline - time.monotonic()

    async def abort(self, code: Any, message: str) -> None:
        raise RuntimeError(f"{code}: {message}")

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    def auth_context(self) -> dict[str, Any]:
        return {}


async def main(target: str, writes: int, concurrency: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with cluster(Path(tmp), native=True) as members:
            member = follower_of(members) if target == "follower" else leader_of(members)
            put = member.etcd.kv.handlers()["Put"]
            requests = [rpc_pb2.PutRequest(key=b"k%06d" % (i % 10_000), value=b"v" * 1024)
                        .SerializeToString() for i in range(writes)]

            async def caller(first: int) -> None:
                for i in range(first, writes, concurrency):
                    await put(requests[i], _Context(30.0))

            async def one_round() -> tuple[float, float]:
                cpu, wall = time.process_time(), time.monotonic()
                await asyncio.gather(*(caller(c) for c in range(concurrency)))
                return time.process_time() - cpu, time.monotonic() - wall

            await one_round()  # warm-up
            per_write = []
            for n in range(rounds):
                cpu, wall = await one_round()
                per_write.append(cpu * 1e6 / writes)
                print(f"{target} round {n}: {per_write[-1]:.1f} us CPU per write, "
                      f"{writes / wall:,.0f} writes/s", flush=True)
            print(f"{target}: median {statistics.median(per_write):.1f} us CPU per write")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=("follower", "leader"), default="follower")
    parser.add_argument("--writes", type=int, default=20_000, help="per round")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    tune_gc()  # as `dengine serve` runs: its collector thresholds, and uvloop
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(main(args.target, args.writes, args.concurrency, args.rounds))

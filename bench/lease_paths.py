"""Lease grants and keep-alives through the leader and through a follower, A/B of running
clusters (session 15: a follower's lease calls over the leader's native port).

    # two 3-node clusters already up (`dengine cluster up --nodes 3 --base-dir DIR
    # --client-port PORT ...`, one per tree, e.g. PYTHONPATH=<tree>/src), then:
    .venv/bin/python bench/lease_paths.py --rounds 3 --leases 3000 \\
        base=23500:/tmp/lp/base/cluster new=23600:/tmp/lp/new/cluster

For each round and cluster in turn, through its leader and then one follower (found with
`etcdctl endpoint status`): one aetcd client grants `--leases` leases (TTL 600, 32 calls
in flight), then renews each twice with `refresh_lease` (a LeaseKeepAlive stream per
renewal, as aetcd does). Prints one JSON line per measurement: ops/s, and the CPU time
(user + system, /proc) of the cluster's three members per operation. Not in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import time
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK")


def cpu(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def leader_and_follower(base: int) -> tuple[str, str]:
    endpoints = ",".join(f"127.0.0.1:{base + i}" for i in range(3))
    out = subprocess.run(["etcdctl", "--endpoints", endpoints, "endpoint", "status", "-w",
                          "json"], capture_output=True, text=True, check=True,
                         env={**os.environ, "ETCDCTL_API": "3"}).stdout
    status = json.loads(out)
    leader = next(s["Endpoint"] for s in status
                  if s["Status"]["leader"] == s["Status"]["header"]["member_id"])
    return leader, next(s["Endpoint"] for s in status if s["Endpoint"] != leader)


async def measure(endpoint: str, n: int, pids: list[int]) -> dict[str, Any]:
    import aetcd

    host, port = endpoint.rsplit(":", 1)
    async with aetcd.Client(host, int(port), timeout=30) as client:
        gate = asyncio.Semaphore(32)

        async def limited(coro: Any) -> Any:
            async with gate:
                return await coro

        before, began = cpu(pids), time.perf_counter()
        leases = await asyncio.gather(*(limited(client.lease(600)) for _ in range(n)))
        grants = (n / (time.perf_counter() - began), (cpu(pids) - before) * 1e6 / n)
        before, began = cpu(pids), time.perf_counter()
        for _ in range(2):
            await asyncio.gather(*(limited(client.refresh_lease(lease.id))
                                   for lease in leases))
        renewals = (2 * n / (time.perf_counter() - began), (cpu(pids) - before) * 1e6 / (2 * n))
    return {"grants_per_s": round(grants[0]), "grant_server_us": round(grants[1]),
            "keepalives_per_s": round(renewals[0]),
            "keepalive_server_us": round(renewals[1])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("clusters", nargs="+", help="NAME=CLIENT_PORT:BASE_DIR (node<N>.pid)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--leases", type=int, default=3000)
    args = p.parse_args()
    clusters = []
    for spec in args.clusters:
        name, rest = spec.split("=", 1)
        port, base_dir = rest.split(":", 1)
        clusters.append((name, int(port), base_dir))
    for r in range(args.rounds):
        for name, port, base_dir in clusters:
            pids = []
            for i in (1, 2, 3):
                with open(f"{base_dir}/node{i}.pid") as f:
                    pids.append(int(f.read()))
            leader, follower = leader_and_follower(port)
            for via, endpoint in (("leader", leader), ("follower", follower)):
                line: dict[str, Any] = {"round": r, "tree": name, "via": via}
                try:
                    line.update(asyncio.run(measure(endpoint, args.leases, pids)))
                except Exception as e:  # (a leader change under load: reported, not fatal)
                    line["error"] = repr(e)[:100]
                line["load"] = os.getloadavg()[0]
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()

"""Put latency at 1 in flight through aetcd, to each member of a fresh 3-node dengine
cluster (bench/etcd_perf.py's), leader and followers apart; each member's serializable
read after its last put must see it (read-your-writes on that member).

    .venv/bin/python bench/etcd_latency.py [--seconds 3]

Prints {member(role): p50 ms}. Not part of CI.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import aetcd
from aetcd import rpc
from etcd_perf import dengine_cluster


async def measure(endpoints: list[str], seconds: float) -> dict[str, float]:
    out = {}
    for i, endpoint in enumerate(endpoints, 1):
        host, port = endpoint.rsplit(":", 1)
        async with aetcd.Client(host, int(port), timeout=10) as client:
            await client.connect()
            status = await client.maintenancestub.Status(rpc.StatusRequest())
            role = "leader" if status.leader == status.header.member_id else "follower"
            kv = client.kvstub
            for _ in range(20):  # warm up
                await kv.Put(rpc.PutRequest(key=b"warm", value=b"x"))
            latencies = []
            stop = time.perf_counter() + seconds
            n = 0
            while time.perf_counter() < stop:
                t = time.perf_counter()
                await kv.Put(rpc.PutRequest(key=b"k%d" % (n % 100), value=b"v" * 64))
                latencies.append(time.perf_counter() - t)
                n += 1
            put = await kv.Put(rpc.PutRequest(key=b"ryw", value=b"%d" % n))
            got = await kv.Range(rpc.RangeRequest(key=b"ryw", serializable=True))
            if got.kvs[0].value != b"%d" % n or got.header.revision < put.header.revision:
                raise RuntimeError(f"member {i} did not read its own write")
            out[f"node{i}({role})"] = round(statistics.median(latencies) * 1000, 2)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="etcd-latency-") as tmp, \
            dengine_cluster(Path(tmp)) as endpoints:
        print(asyncio.run(measure(endpoints, args.seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

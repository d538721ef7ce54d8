"""Transactions and large ranges through one Python etcd client (aetcd), etcd vs dengine.

    .venv/bin/python bench/etcd_kv_bench.py                          # 1M keys, both systems
    .venv/bin/python bench/etcd_kv_bench.py --keys 100000 --systems dengine --duration 5

For each system a fresh 3-node cluster (bench/etcd_perf.py's: Debian's etcd 3.4 with its
defaults, or `dengine cluster up --nodes 3`), then through aetcd's gRPC stubs, every call
sent to the first endpoint:

- load: `--keys` keys `k/%08d` of `--value-size` bytes, in txns of 128 puts (etcd's
  default op limit), 8 in flight;
- range: a linearizable Range of 1,000 consecutive keys at a random start, for
  `--duration` s at each `--concurrency` (ops/s, p50 and p99 latency);
- txn: compare-and-swap per txn (`mod_revision(key) == last` then put; each worker its
  own keys, so every txn succeeds), for `--duration` s at each concurrency.

Prints one table and writes JSON with `--json`. Not part of CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import aetcd
from aetcd import rpc
from etcd_perf import dengine_cluster, etcd_cluster

RANGE_KEYS = 1000
TXN_OPS = 128
CAS_KEYS_PER_WORKER = 4


def key(i: int) -> bytes:
    return b"k/%08d" % i


async def load(kv: Any, n: int, value: bytes) -> float:
    """Put n keys in txns of TXN_OPS puts, 8 in flight; seconds taken."""
    sem = asyncio.Semaphore(8)

    async def batch(start: int) -> None:
        async with sem:
            ops = [rpc.RequestOp(request_put=rpc.PutRequest(key=key(i), value=value))
                   for i in range(start, min(start + TXN_OPS, n))]
            await kv.Txn(rpc.TxnRequest(success=ops), timeout=60)

    t0 = time.perf_counter()
    await asyncio.gather(*(batch(s) for s in range(0, n, TXN_OPS)))
    return time.perf_counter() - t0


async def closed_loop(call: Any, concurrency: int, seconds: float) -> dict[str, float]:
    """Run `call(worker)` back to back in `concurrency` workers for `seconds`."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        while time.perf_counter() < stop:
            t = time.perf_counter()
            await call(w)
            latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - t0
    latencies.sort()
    return {
        "ops_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 3),
        "ops": len(latencies),
    }


async def measure(endpoint: str, args: argparse.Namespace) -> dict[str, Any]:
    host, port = endpoint.rsplit(":", 1)
    out: dict[str, Any] = {}
    async with aetcd.Client(host, int(port), timeout=60) as client:
        await client.connect()
        kv = client.kvstub
        out["load_s"] = round(await load(kv, args.keys, b"v" * args.value_size), 1)
        rng = random.Random(1)

        async def one_range(_: int) -> None:
            start = rng.randrange(0, args.keys - RANGE_KEYS)
            req = rpc.RangeRequest(key=key(start), range_end=key(start + RANGE_KEYS))
            resp = await kv.Range(req)
            if len(resp.kvs) != RANGE_KEYS:
                raise RuntimeError(f"range returned {len(resp.kvs)} keys, not {RANGE_KEYS}")

        for c in args.concurrency:
            out[f"range_c{c}"] = await closed_loop(one_range, c, args.duration)

        for c in args.concurrency:
            last: dict[bytes, int] = {}
            for w in range(c):
                for j in range(CAS_KEYS_PER_WORKER):
                    k = b"cas/%d/%d/%d" % (c, w, j)
                    resp = await kv.Put(rpc.PutRequest(key=k, value=b"0"))
                    last[k] = resp.header.revision
            turn = [0] * c

            async def one_cas(
                w: int, c: int = c, last: dict[bytes, int] = last, turn: list[int] = turn
            ) -> None:
                k = b"cas/%d/%d/%d" % (c, w, turn[w] % CAS_KEYS_PER_WORKER)
                turn[w] += 1
                resp = await kv.Txn(rpc.TxnRequest(
                    compare=[rpc.Compare(key=k, target=rpc.Compare.MOD,
                                         result=rpc.Compare.EQUAL, mod_revision=last[k])],
                    success=[rpc.RequestOp(
                        request_put=rpc.PutRequest(key=k, value=b"%d" % turn[w]))],
                ))
                if not resp.succeeded:
                    raise RuntimeError(f"CAS on {k!r} failed: mod_revision was not {last[k]}")
                last[k] = resp.header.revision

            out[f"txn_c{c}"] = await closed_loop(one_cas, c, args.duration)
    return out


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", default="etcd,dengine")
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--value-size", type=int, default=256)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--concurrency", default="1,32")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    results: dict[str, Any] = {}
    for system in args.systems.split(","):
        start = etcd_cluster if system == "etcd" else dengine_cluster
        with tempfile.TemporaryDirectory(prefix=f"kvbench-{system}-") as tmp, \
                start(Path(tmp)) as endpoints:
            results[system] = asyncio.run(measure(endpoints[0], args))
        print(system, json.dumps(results[system]), flush=True)
    names = sorted({k for r in results.values() for k in r if k != "load_s"})
    print(f"\n{'workload':<12}" + "".join(f"{s:>28}" for s in results))
    print(f"{'load (s)':<12}" + "".join(f"{r['load_s']:>28}" for r in results.values()))
    for name in names:
        cells = [f"{r[name]['ops_s']:>10} ops/s p50 {r[name]['p50_ms']:>7} ms"
                 for r in results.values()]
        print(f"{name:<12}" + "".join(f"{c:>28}" for c in cells))
    if args.json:
        meta = vars(args) | {"json": str(args.json)}
        args.json.write_text(json.dumps({"args": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Watch fan-out through one Python etcd client (aetcd), etcd vs dengine.

    .venv/bin/python bench/watch_bench.py                       # both systems, defaults
    .venv/bin/python bench/watch_bench.py --watchers 1000 --rate 100 --duration 10

For each system a fresh 3-node cluster (bench/etcd_perf.py's: Debian's etcd 3.4 with its
defaults, or `dengine cluster up --nodes 3`), then:

- `--procs` watcher processes (aetcd, one client each, connected to the members in
  turn), together `--watchers` watches on one prefix (each client's watches share its one
  Watch stream, as aetcd does);
- one writer (aetcd, its own process: this one) puts keys under the prefix at `--rate`
  puts/s for `--duration` s (each put awaited before the next is due, as a paced client);
- every watch must get every put. Reported: events delivered per second (all watches
  together, from the first put to the last event), whether every watch got every event,
  and the delivery latency of a sample of watches (the first of each process): from the
  put's acknowledgement (after commit) to the event's arrival, p50/p99 (and from the
  put's send).

Prints one table and writes JSON with `--json`. Not part of CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
PREFIX = b"wb/"


# ---- a watcher process ---------------------------------------------------------------

async def watcher_main(endpoint: str, watchers: int, out: Path) -> None:
    import aetcd

    host, port = endpoint.rsplit(":", 1)
    counts = [0] * watchers
    sample: list[tuple[int, float]] = []
    first = last = 0.0
    async with aetcd.Client(host, int(port), timeout=60) as client:
        watches = [await client.watch_prefix(PREFIX) for _ in range(watchers)]

        async def consume(i: int, watch: Any) -> None:
            nonlocal first, last
            async for event in watch:
                now = time.time()
                if not first:
                    first = now
                last = now
                counts[i] += 1
                if i == 0:
                    sample.append((event.kv.mod_revision, now))

        tasks = [asyncio.ensure_future(consume(i, w)) for i, w in enumerate(watches)]
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
        for w in watches:
            await w.cancel()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    out.write_text(json.dumps({"counts": counts, "sample": sample, "first": first,
                               "last": last}))


# ---- the writer and the report --------------------------------------------------------

async def write(endpoint: str, rate: float, duration: float
                ) -> list[tuple[int, float, float]]:
    """(revision, sent, acknowledged) of every put, wall-clock times."""
    import aetcd

    host, port = endpoint.rsplit(":", 1)
    out: list[tuple[int, float, float]] = []
    async with aetcd.Client(host, int(port), timeout=60) as client:
        await client.put(PREFIX + b"warmup", b"x")  # (before the watches count)
        interval = 1.0 / rate
        end = time.monotonic() + duration
        next_t = time.monotonic()
        i = 0
        while time.monotonic() < end:
            next_t += interval
            sent = time.time()
            resp = await client.put(PREFIX + b"k%d" % (i % 100), b"v%d" % i)
            out.append((resp.header.revision, sent, time.time()))
            i += 1
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))
    return out


def measure(endpoints: list[str], args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    per = [args.watchers // args.procs + (i < args.watchers % args.procs)
           for i in range(args.procs)]
    procs = []
    for i, n in enumerate(per):
        out = tmp / f"watcher{i}.json"
        procs.append((subprocess.Popen(
            [sys.executable, __file__, "--role", "watcher", "--endpoint",
             endpoints[i % len(endpoints)], "--watchers", str(n), "--out", str(out)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True), out))
    try:
        for proc, _ in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"watcher process did not start: {line!r}")
        # the warm-up put is seen by every watch too (it counts as a write)
        puts = asyncio.run(write(endpoints[0], args.rate, args.duration))
        time.sleep(args.grace)
    finally:
        for proc, _ in procs:
            assert proc.stdin is not None
            proc.stdin.close()
        for proc, _ in procs:
            proc.wait(120)
    reports = [json.loads(out.read_text()) for _, out in procs]
    acks = {rev: (sent, acked) for rev, sent, acked in puts}
    counts = [c for r in reports for c in r["counts"]]
    total = sum(counts)
    start = min(sent for _, sent, _ in puts)
    last = max(r["last"] for r in reports)
    after_ack, after_send = [], []
    for r in reports:
        for rev, recv in r["sample"]:
            if rev in acks:
                after_send.append(recv - acks[rev][0])
                after_ack.append(recv - acks[rev][1])
    expected = len(puts) + 1  # + the warm-up put
    after_ack.sort()
    after_send.sort()

    def pct(xs: list[float], q: float) -> float:
        return round(xs[max(0, int(len(xs) * q) - 1)] * 1000, 2) if xs else float("nan")

    return {
        "puts": len(puts),
        "put_rate": round(len(puts) / args.duration, 1),
        "events_per_s": round(total / (last - start), 1) if last > start else 0.0,
        "events": total,
        "complete": all(c >= expected - 1 for c in counts),
        "min_events_per_watch": min(counts),
        "latency_after_commit_ms": {"p50": round(statistics.median(after_ack) * 1000, 2)
                                    if after_ack else None, "p99": pct(after_ack, 0.99)},
        "latency_after_send_ms": {"p50": round(statistics.median(after_send) * 1000, 2)
                                  if after_send else None, "p99": pct(after_send, 0.99)},
    }


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", default="etcd,dengine")
    p.add_argument("--watchers", type=int, default=1000)
    p.add_argument("--procs", type=int, default=4)
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--grace", type=float, default=5.0)
    p.add_argument("--json", type=Path)
    p.add_argument("--role", default="main", help=argparse.SUPPRESS)
    p.add_argument("--endpoint", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role == "watcher":
        asyncio.run(watcher_main(args.endpoint, args.watchers, args.out))
        return 0
    from etcd_perf import dengine_cluster, etcd_cluster

    results: dict[str, Any] = {}
    for system in args.systems.split(","):
        start = etcd_cluster if system == "etcd" else dengine_cluster
        with tempfile.TemporaryDirectory(prefix=f"watchbench-{system}-") as tmp, \
                start(Path(tmp)) as endpoints:
            results[system] = measure(endpoints, args, Path(tmp))
        print(system, json.dumps(results[system]), flush=True)
    print(f"\n{args.watchers} watches on one prefix, {args.rate:g} puts/s for "
          f"{args.duration:g} s (aetcd)")
    print(f"{'system':<10}{'events/s':>12}{'complete':>10}{'commit->event p50':>19}"
          f"{'p99 (ms)':>10}")
    for system, r in results.items():
        lat = r["latency_after_commit_ms"]
        print(f"{system:<10}{r['events_per_s']:>12}{r['complete']!s:>10}{lat['p50']!s:>19}"
              f"{lat['p99']!s:>10}")
    if args.json:
        meta = vars(args) | {"json": str(args.json)}
        args.json.write_text(json.dumps({"args": meta, "results": results}, indent=2,
                                        default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

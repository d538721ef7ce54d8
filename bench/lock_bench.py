"""Lock acquire/release cycles per second with 8 contenders, dengine vs etcd 3.4.

    .venv/bin/python bench/lock_bench.py                      # every driver, ~20 s each
    .venv/bin/python bench/lock_bench.py --seconds 10 --drivers dengine,aetcd

For every (system, driver) a fresh 3-node cluster on free 127.0.0.1 ports (Debian's etcd
3.4 with its defaults, or `dengine cluster up --nodes 3` with dengine's). Each of
`--contenders` contenders loops acquire -> release on one lock name for `--seconds`; the
result is the cycles completed per second in total, and the p50/p99 of one cycle as a
contender saw it (its wait for the others included). Drivers:

- `dengine`: dengine.Client's `lock()` (etcd's recipe: FIFO, fencing token); dengine only.
- `aetcd`: aetcd 1.0's `client.lock(name, ttl)` (its own recipe over KV/Lease/Watch), one
  aetcd client per contender; against both.
- `etcd3`: python3-etcd3 0.13's `client.lock(name, ttl)`, one client and thread per
  contender; against both.

Not part of CI. The numbers go to docs/performance.md with the command that made them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "etcd"))
from etcd_cluster import etcd_available
from etcd_perf import dengine_cluster, etcd_cluster

DRIVERS = ("dengine", "aetcd", "etcd3")
SYSTEMS = ("dengine", "etcd")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def run_dengine(endpoints: list[str], contenders: int, seconds: float, ttl: int
                      ) -> list[float]:
    import dengine

    cycles: list[float] = []
    async with dengine.Client(endpoints, timeout=10) as client:
        end = time.monotonic() + seconds

        async def contender() -> None:
            while time.monotonic() < end:
                t0 = time.monotonic()
                async with client.lock(b"bench-lock", ttl):
                    pass
                cycles.append(time.monotonic() - t0)

        await asyncio.gather(*(contender() for _ in range(contenders)))
    return cycles


async def run_aetcd(endpoints: list[str], contenders: int, seconds: float, ttl: int
                    ) -> list[float]:
    import aetcd

    cycles: list[float] = []
    end = time.monotonic() + seconds

    async def contender(i: int) -> None:
        host, port = endpoints[i % len(endpoints)].rsplit(":", 1)
        async with aetcd.Client(host=host, port=int(port)) as client:
            while time.monotonic() < end:
                t0 = time.monotonic()
                lock = client.lock(b"bench-lock", ttl=ttl)
                await lock.acquire(timeout=None)
                await lock.release()
                cycles.append(time.monotonic() - t0)

    await asyncio.gather(*(contender(i) for i in range(contenders)))
    return cycles


def run_etcd3(endpoints: list[str], contenders: int, seconds: float, ttl: int
              ) -> list[float]:
    import etcd3

    cycles: list[float] = []
    end = time.monotonic() + seconds
    errors: list[BaseException] = []

    def contender(i: int) -> None:
        host, port = endpoints[i % len(endpoints)].rsplit(":", 1)
        client = etcd3.client(host=host, port=int(port))
        try:
            while time.monotonic() < end:
                t0 = time.monotonic()
                lock = client.lock("bench-lock", ttl=ttl)
                lock.acquire(timeout=None)
                lock.release()
                cycles.append(time.monotonic() - t0)
        except BaseException as e:  # reported below
            errors.append(e)
        finally:
            client.close()

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return cycles


RUNNERS: dict[str, Callable[..., Any]] = {
    "dengine": lambda *a: asyncio.run(run_dengine(*a)),
    "aetcd": lambda *a: asyncio.run(run_aetcd(*a)),
    "etcd3": run_etcd3,
}


def child(driver: str, endpoints: str, contenders: int, seconds: float, ttl: int) -> int:
    """One driver in a process of its own (python3-etcd3 and aetcd cannot share one)."""
    t0 = time.monotonic()
    cycles = RUNNERS[driver](endpoints.split(","), contenders, seconds, ttl)
    print(json.dumps({"cycles": cycles, "elapsed": time.monotonic() - t0}))
    return 0


def run_child(driver: str, endpoints: list[str], contenders: int, seconds: float,
              ttl: int) -> tuple[list[float], float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", driver, ",".join(endpoints), str(contenders),
         str(seconds), str(ttl)], capture_output=True, text=True, timeout=seconds + 120,
        check=False)
    if done.returncode != 0:
        raise RuntimeError((done.stderr.strip().splitlines() or ["?"])[-1])
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return list(out["cycles"]), float(out["elapsed"])


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        driver, endpoints, contenders, seconds, ttl = sys.argv[2:7]
        return child(driver, endpoints, int(contenders), float(seconds), int(ttl))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--drivers", default=",".join(DRIVERS))
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--contenders", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--ttl", type=int, default=10)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    systems = [s for s in args.systems.split(",") if s]
    if "etcd" in systems and not etcd_available():
        print("etcd not installed: etcd skipped", file=sys.stderr)
        systems.remove("etcd")
    results = []
    base = Path(tempfile.mkdtemp(prefix="lock-bench-"))
    for driver in [d for d in args.drivers.split(",") if d]:
        for system in systems:
            if driver == "dengine" and system != "dengine":
                continue
            start = dengine_cluster if system == "dengine" else etcd_cluster
            workdir = base / f"{system}-{driver}"
            workdir.mkdir()
            row: dict[str, Any] = {"system": system, "driver": driver,
                                   "contenders": args.contenders}
            try:
                with start(workdir) as endpoints:
                    time.sleep(1.0)
                    cycles, elapsed = run_child(driver, endpoints, args.contenders,
                                                args.seconds, args.ttl)
                row.update(cycles=len(cycles), per_s=round(len(cycles) / elapsed, 1),
                           p50_ms=round(1000 * pct(cycles, 0.5), 1),
                           p99_ms=round(1000 * pct(cycles, 0.99), 1),
                           mean_ms=round(1000 * statistics.fmean(cycles), 1) if cycles
                           else None)
            except (RuntimeError, subprocess.TimeoutExpired) as e:  # reported, not fatal
                row["error"] = f"{type(e).__name__}: {e}"[:300]
            results.append(row)
            print(json.dumps(row), flush=True)
    print()
    print(f"{'system':8} {'driver':8} {'cycles/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for r in results:
        if "error" in r:
            print(f"{r['system']:8} {r['driver']:8} error: {r['error']}")
        else:
            print(f"{r['system']:8} {r['driver']:8} {r['per_s']:>9} {r['p50_ms']:>8} "
                  f"{r['p99_ms']:>8}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

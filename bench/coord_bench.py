"""Coordination primitives, dengine vs etcd 3.4 in one run, one client library (aetcd 1.0)
driving both (issue 17's benchmark list).

    .venv/bin/python bench/coord_bench.py                     # both systems, defaults
    .venv/bin/python bench/coord_bench.py --systems dengine --leases 2000 --json out.json

For each system one fresh 3-node cluster (bench/etcd_perf.py's: Debian's etcd 3.4 with
its defaults, or `dengine cluster up --nodes 3`), then in turn:

1. watch fan-out (bench/watch_bench.py's `measure`): `--watchers` aetcd watches on one
   prefix from `--watch-procs` processes while one aetcd writer puts at `--rate` puts/s
   for `--seconds`; events/s delivered to all watches together, whether every watch got
   every event, and the delivery latency after the put's acknowledgement (commit), p50
   and p99, on one watch per process;
2. a lock with `--contenders` contenders (bench/lock_bench.py's aetcd driver: aetcd's
   `client.lock(name, ttl)`, one client each): acquire/release cycles per second;
3. `--leases` leases (TTL 600) granted and then each kept alive `--rounds` times by one
   aetcd client (`refresh_lease`: one LeaseKeepAlive request on a stream of its own, as
   aetcd does; `--in-flight` at once); keep-alives/s and the CPU time (user + system,
   /proc) per keep-alive of the cluster's members together and of the client.

The table goes to stdout (and `--json`); `uptime`'s load average is printed with it: the
numbers of one run are comparable with each other, not with another day's. Not in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lock_bench  # (bench/ is no package: its modules by path)
import watch_bench
from etcd_perf import dengine_cluster, etcd_cluster

TICKS = os.sysconf("SC_CLK_TCK")
LEASE_TTL = 600  # none may expire while 10,000 are granted and renewed at a few 100/s


def cpu_s(pid: int) -> float:
    """User + system seconds of process `pid` (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def listeners(ports: set[int]) -> list[int]:
    """The pids of the processes listening on `ports` on this machine (/proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) in ports:
                    inodes.add(f"socket:[{cols[9]}]")
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in fds):
                pids.append(int(pid))
        except OSError:
            continue
    return pids


async def lease_keepalives(endpoint: str, n: int, rounds: int, in_flight: int,
                           servers: list[int]) -> dict[str, Any]:
    import aetcd

    host, port = endpoint.rsplit(":", 1)
    async with aetcd.Client(host, int(port), timeout=60) as client:
        gate = asyncio.Semaphore(in_flight)

        async def limited(coro: Any) -> Any:
            async with gate:
                return await coro

        began = time.perf_counter()
        leases = await asyncio.gather(*(limited(client.lease(LEASE_TTL)) for _ in range(n)))
        grants_per_s = n / (time.perf_counter() - began)
        server_before = sum(cpu_s(p) for p in servers)
        client_before = time.process_time()
        began = time.perf_counter()
        for _ in range(rounds):
            replies = await asyncio.gather(*(limited(client.refresh_lease(lease.id))
                                             for lease in leases))
            if min(r.TTL for r in replies) <= 0:
                raise RuntimeError("a lease was not renewed")
        seconds = time.perf_counter() - began
        total = n * rounds
        return {
            "leases": n, "keepalives": total, "grants_per_s": round(grants_per_s, 1),
            "keepalives_per_s": round(total / seconds, 1),
            "server_cpu_us": round((sum(cpu_s(p) for p in servers) - server_before)
                                   * 1e6 / total, 1),
            "client_cpu_us": round((time.process_time() - client_before) * 1e6 / total, 1),
        }


def measure(system: str, endpoints: list[str], args: argparse.Namespace, tmp: Path
            ) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while len(servers := listeners({int(e.rsplit(":", 1)[1]) for e in endpoints})) < len(
            endpoints):  # (a member may open its client port after the cluster is ready)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{system}: found server pids {servers} for {endpoints}")
        time.sleep(0.5)
    time.sleep(1.0)
    import aetcd

    parts = {
        "watch": lambda: watch_bench.measure(endpoints, argparse.Namespace(
            watchers=args.watchers, procs=args.watch_procs, rate=args.rate,
            duration=args.seconds, grace=args.grace), tmp),
        "lock": lambda: lock_cycles(endpoints, args),
        "leases": lambda: asyncio.run(lease_keepalives(
            endpoints[0], args.leases, args.rounds, args.in_flight, servers)),
    }
    out: dict[str, Any] = {}
    for part, run in parts.items():
        if part not in args.parts:
            continue
        try:
            out[part] = run()
        except (RuntimeError, subprocess.TimeoutExpired, aetcd.ClientError) as e:
            out[f"{part} error"] = f"{type(e).__name__}: {e}"[:300]  # reported, not fatal
        print(system, part, json.dumps(out.get(part) or out[f"{part} error"]), flush=True)
    return out


def lock_cycles(endpoints: list[str], args: argparse.Namespace) -> dict[str, Any]:
    cycles, elapsed = lock_bench.run_child("aetcd", endpoints, args.contenders,
                                           args.seconds, args.ttl)
    return {"cycles": len(cycles), "per_s": round(len(cycles) / elapsed, 1),
            "p50_ms": round(1000 * lock_bench.pct(cycles, 0.5), 1),
            "p99_ms": round(1000 * lock_bench.pct(cycles, 0.99), 1)}


def table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    rows = [
        ("watch", f"events/s to {args.watchers:,} watchers, {args.rate:g} puts/s",
         lambda r: f"{r['watch']['events_per_s']:,.0f} (writer: {r['watch']['put_rate']} "
         "puts/s" + ("" if r["watch"]["complete"] else ", incomplete") + ")"),
        ("watch", "watch delivery after commit, p50 / p99 ms",
         lambda r: "{p50} / {p99}".format(**r["watch"]["latency_after_commit_ms"])),
        ("leases", f"{args.leases:,} leases: grants/s",
         lambda r: f"{r['leases']['grants_per_s']:,.0f}"),
        ("leases", f"  kept alive by one client ({args.rounds} rounds): keep-alives/s",
         lambda r: f"{r['leases']['keepalives_per_s']:,.0f}"),
        ("leases", "  server CPU per keep-alive (3 members), us",
         lambda r: f"{r['leases']['server_cpu_us']:,.0f}"),
        ("leases", "  client CPU per keep-alive, us",
         lambda r: f"{r['leases']['client_cpu_us']:,.0f}"),
        ("lock", f"lock cycles/s, {args.contenders} contenders (p50 / p99 ms)",
         lambda r: "{per_s} ({p50_ms} / {p99_ms})".format(**r["lock"])),
    ]
    systems = list(results)
    lines = ["| measure | " + " | ".join(systems) + " |",
             "|---|" + "---:|" * len(systems)]
    for part, label, cell in rows:
        if part in args.parts:
            lines.append(f"| {label} | " + " | ".join(
                cell(results[s]) if part in results[s] else "error" for s in systems)
                + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", default="etcd,dengine")
    p.add_argument("--parts", default="watch,lock,leases")
    p.add_argument("--watchers", type=int, default=1000)
    p.add_argument("--watch-procs", type=int, default=4)
    p.add_argument("--rate", type=float, default=20.0, help="puts/s while watching")
    p.add_argument("--seconds", type=float, default=10.0, help="of writing; of locking")
    p.add_argument("--grace", type=float, default=5.0, help="for the last events")
    p.add_argument("--contenders", type=int, default=8)
    p.add_argument("--ttl", type=int, default=10, help="of the lock's lease")
    p.add_argument("--leases", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--in-flight", type=int, default=32,
                   help="calls at once on the one connection")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    load = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout
    print("uptime:", load.strip(), flush=True)
    results: dict[str, dict[str, Any]] = {}
    for system in args.systems.split(","):
        start = etcd_cluster if system == "etcd" else dengine_cluster
        with tempfile.TemporaryDirectory(prefix=f"coordbench-{system}-") as tmp:
            try:
                with start(Path(tmp)) as endpoints:
                    results[system] = measure(system, endpoints, args, Path(tmp))
            except (RuntimeError, subprocess.TimeoutExpired) as e:  # reported, not fatal
                results[system] = {"error": f"{type(e).__name__}: {e}"[:300]}
                print(system, "error", results[system]["error"], flush=True)
    after = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout
    print("uptime:", after.strip())
    print()
    print(table(results, args))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "uptime": [load.strip(), after.strip()],
                                         "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""etcd's own load check, `etcdctl check perf --load s|m|l`, against etcd and dengine.

    .venv/bin/python bench/etcd_perf.py                       # s, m, l on both (~6 min)
    .venv/bin/python bench/etcd_perf.py --loads l --systems dengine --json out.json

For every (system, load) a fresh 3-node cluster on free 127.0.0.1 ports in a temp dir:
Debian's etcd 3.4 (defaults, fsync on), or `dengine cluster up --nodes 3` (defaults).
etcdctl 3.4's Go load generator (50/200/500 clients writing 1 KiB values for 60 s, for
s/m/l; pass needs at least 90% of 150/1000/8000 writes/s, slowest request under 0.5 s and
stddev under 0.1 s) is pointed at all three members. Prints the throughput, slowest request,
stddev and PASS/FAIL etcdctl reported for each. Not part of CI (each load runs 60 s).

`--cpu`: also the CPU seconds (user + system) each process spent per 1,000 writes between
10 s and 50 s into the run (the writes counted by the store revision), leader first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "etcd"))
from etcd_cluster import ETCDCTL, EtcdCluster, etcd_available, etcdctl

from dengine.bench.cluster import free_port_run

LOADS = ("s", "m", "l", "xl")
SYSTEMS = ("etcd", "dengine")
READY_TIMEOUT_S = 60.0


def parse_check_perf(output: str, rc: int) -> dict[str, Any]:
    """etcdctl 3.4's verdict lines ("PASS: Throughput is 147 writes/s", "FAIL: Throughput
    too low: 12 writes/s", "Slowest request took too long: 0.9s", "PASS"/"FAIL")."""
    text = output.replace("\r", "\n")
    result: dict[str, Any] = {"rc": rc, "throughput": None, "slowest_s": None,
                              "stddev_s": None, "verdict": None, "error": None}
    m = re.search(r"(PASS|FAIL): Throughput (?:is|too low:) (\d+) writes/s", text)
    if m:
        result["throughput"] = int(m.group(2))
        result["throughput_ok"] = m.group(1) == "PASS"
    m = re.search(r"Slowest request took(?: too long:)? ([\d.]+)s", text)
    if m:
        result["slowest_s"] = float(m.group(1))
    m = re.search(r"Stddev (?:is|too high:) ([\d.]+)s", text)
    if m:
        result["stddev_s"] = float(m.group(1))
    verdicts = re.findall(r"^(PASS|FAIL)\s*$", text, re.M)
    if verdicts:
        result["verdict"] = verdicts[-1]
    errors = [line for line in text.splitlines() if line.startswith("Error:")]
    if errors:
        result["error"] = errors[-1]
    if result["verdict"] is None:
        result["verdict"] = "ERROR"
        if result["error"] is None:
            result["error"] = text.strip().splitlines()[-1] if text.strip() else f"rc {rc}"
    return result


@contextlib.contextmanager
def etcd_cluster(workdir: Path) -> Iterator[list[str]]:
    with EtcdCluster(workdir) as c:
        yield c.endpoints


@contextlib.contextmanager
def dengine_cluster(workdir: Path) -> Iterator[list[str]]:
    """`dengine cluster up --nodes 3` in the foreground of a child; SIGINT stops it all."""
    base = free_port_run(6)
    log = open(workdir / "cluster-up.log", "w+b")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-c", "from dengine.cli import main; main()", "cluster", "up",
         "--nodes", "3", "--base-dir", str(workdir / "cluster"), "--client-port", str(base),
         "--peer-port", str(base + 3), "--log-level", "warning"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    endpoints = [f"127.0.0.1:{base + i}" for i in range(3)]
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while b"ready: leader is" not in (workdir / "cluster-up.log").read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("dengine cluster up did not get ready:\n"
                                   + (workdir / "cluster-up.log").read_text(errors="replace"))
            time.sleep(0.1)
        yield endpoints
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


CPU_WINDOW_S = (10.0, 50.0)


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _listening_port(pid: int, ports: set[int]) -> int | None:
    """Which of `ports` the process listens on (its socket inodes against /proc/net/tcp*:
    gRPC listens on IPv6 sockets with v4-mapped addresses)."""
    try:
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1]
                  for fd in os.listdir(f"/proc/{pid}/fd")}
    except OSError:
        return None
    lines = [line for table in ("tcp", "tcp6")
             for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]]
    for line in lines:
        cols = line.split()
        port = int(cols[1].split(":")[1], 16)
        if cols[3] == "0A" and port in ports and cols[9] in inodes:
            return port
    return None


def _status(endpoints: list[str]) -> tuple[int, int]:
    """(the store revision, the leader's member id) from `etcdctl endpoint status`."""
    run = etcdctl(endpoints[:1], ["endpoint", "status", "-w", "json"], timeout=30)
    header = json.loads(run.stdout)[0]["Status"]
    return int(header["header"]["revision"]), int(header["leader"])


def _member_ports(endpoints: list[str]) -> dict[int, int]:
    """member id -> client port, from `etcdctl endpoint status` of each endpoint."""
    run = etcdctl(endpoints, ["endpoint", "status", "-w", "json"], timeout=30)
    return {int(s["Status"]["header"]["member_id"]): int(s["Endpoint"].rsplit(":", 1)[1])
            for s in json.loads(run.stdout)}


def measure_cpu(endpoints: list[str], checker: subprocess.Popen[str]) -> dict[str, Any]:
    """CPU seconds per 1,000 writes of every process of the cluster and of etcdctl over
    CPU_WINDOW_S of the run (all descendants of this process but etcdctl are counted as
    the cluster's; those listening on an endpoint are named by their role)."""
    ports = {int(e.rsplit(":", 1)[1]) for e in endpoints}
    time.sleep(CPU_WINDOW_S[0])
    pids = [p for p in _descendants(os.getpid()) if p != checker.pid]
    names: dict[int, str] = {}
    for pid in pids:
        port = _listening_port(pid, ports)
        names[pid] = f"node :{port}" if port else "other"
    names[checker.pid] = "etcdctl"
    rev0, leader = _status(endpoints)
    cpu0 = {pid: _cpu_seconds(pid) for pid in names}
    t0 = time.monotonic()
    time.sleep(CPU_WINDOW_S[1] - CPU_WINDOW_S[0])
    cpu1 = {pid: _cpu_seconds(pid) for pid in names}
    rev1, _ = _status(endpoints)
    seconds = time.monotonic() - t0
    writes = max(1, rev1 - rev0)
    leader_port = _member_ports(endpoints).get(leader)
    per: dict[str, float] = {}
    for pid, name in names.items():
        if name == f"node :{leader_port}":
            name = "leader"
        elif name.startswith("node"):
            name = "follower " + name[5:]
        per[name] = per.get(name, 0.0) + (cpu1[pid] - cpu0[pid]) * 1000 / writes
    order = sorted(per, key=lambda n: (n != "leader", n == "other", n))
    return {"writes_per_s": round(writes / seconds), "window_s": round(seconds, 1),
            "cpu_s_per_1000_writes": {n: round(per[n], 3) for n in order},
            "total": round(sum(per.values()), 3)}


def _only(endpoints: list[str], only: str) -> list[str]:
    """The endpoints etcdctl is pointed at: all, the leader's, or one follower's."""
    if only == "all":
        return endpoints
    _, leader = _status(endpoints)
    ports = _member_ports(endpoints)
    chosen = [e for e in endpoints
              if (int(e.rsplit(":", 1)[1]) == ports.get(leader)) == (only == "leader")]
    return chosen[:1]


def run_check(system: str, load: str, workdir: Path, cpu: bool = False,
              only: str = "all") -> dict[str, Any]:
    start = etcd_cluster if system == "etcd" else dengine_cluster
    workdir.mkdir(parents=True)
    t0 = time.monotonic()
    try:
        with start(workdir) as endpoints:
            health = etcdctl(endpoints, ["endpoint", "health"], timeout=30)
            if health.rc != 0:
                result = {"verdict": "ERROR", "rc": health.rc, "throughput": None,
                          "error": (health.stderr.strip().splitlines() or ["?"])[-1]}
            else:
                with open(workdir / "check-perf.out", "w+") as out:
                    checker = subprocess.Popen(
                        [ETCDCTL, "--endpoints=" + ",".join(_only(endpoints, only)),
                         "check", "perf",
                         "--load", load],
                        env={**os.environ, "ETCDCTL_API": "3"}, stdout=out,
                        stderr=subprocess.STDOUT, text=True)
                    try:
                        usage = measure_cpu(endpoints, checker) if cpu else None
                        checker.wait(timeout=300)
                    finally:
                        if checker.poll() is None:
                            checker.kill()
                            checker.wait()
                    out.seek(0)
                    result = parse_check_perf(out.read(), checker.returncode)
                if usage is not None:
                    result["cpu"] = usage
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        result = {"verdict": "ERROR", "rc": None, "throughput": None, "error": str(e)[:500]}
    result["seconds"] = round(time.monotonic() - t0, 1)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loads", default="s,m,l", help="comma-separated of " + ",".join(LOADS))
    ap.add_argument("--systems", default="etcd,dengine", help="etcd,dengine")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    ap.add_argument("--cpu", action="store_true",
                    help="also measure each process's CPU seconds per 1,000 writes")
    ap.add_argument("--only", choices=("all", "leader", "follower"), default="all",
                    help="point etcdctl at every member (default), the leader or a follower")
    args = ap.parse_args()
    loads = [x for x in args.loads.split(",") if x]
    systems = [x for x in args.systems.split(",") if x]
    if bad := [x for x in loads if x not in LOADS] + [x for x in systems if x not in SYSTEMS]:
        ap.error(f"unknown load or system: {', '.join(bad)}")
    if not etcd_available():
        print("etcd/etcdctl not found: apt-get install etcd-server etcd-client",
              file=sys.stderr)
        return 2
    version = subprocess.run([ETCDCTL, "version"], capture_output=True, text=True,
                             check=False).stdout.splitlines()[0]
    workdir = Path(tempfile.mkdtemp(prefix="etcd-perf-"))
    print(f"{version}; work dir {workdir}; {os.cpu_count()} cores")
    results: list[dict[str, Any]] = []
    try:
        for load in loads:
            for system in systems:
                print(f"{system:8} --load {load} ...", end="", flush=True)
                r = run_check(system, load, workdir / f"{system}-{load}", args.cpu,
                              args.only)
                r.update(system=system, load=load)
                results.append(r)
                print(f" {r['verdict']}" + (f" ({r['error']})" if r.get("error") else ""))
    except KeyboardInterrupt:
        print(" interrupted")
    print()
    print(f"{'system':8} {'load':4} {'writes/s':>9} {'slowest s':>10} {'stddev s':>9}  result")
    for r in results:
        def num(v: Any, width: int, fmt: str) -> str:
            return format(v, fmt).rjust(width) if v is not None else "-".rjust(width)
        print(f"{r['system']:8} {r['load']:4} {num(r['throughput'], 9, 'd')} "
              f"{num(r.get('slowest_s'), 10, '.3f')} {num(r.get('stddev_s'), 9, '.3f')}  "
              f"{r['verdict']}")
        if r.get("cpu"):
            c = r["cpu"]
            parts = ", ".join(f"{n} {v:.2f}" for n, v in c["cpu_s_per_1000_writes"].items())
            print(f"    CPU s per 1,000 writes ({c['writes_per_s']} writes/s over "
                  f"{c['window_s']} s): {parts}; total {c['total']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"etcdctl": version, "results": results}, indent=2))
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

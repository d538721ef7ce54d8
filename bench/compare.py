#!/usr/bin/env python
"""Side-by-side benchmark: dengine vs etcd vs PySyncObj, 3 nodes each, on this machine.

    .venv/bin/pip install -e '.[bench]'          # matplotlib, pysyncobj, aetcd
    .venv/bin/python bench/compare.py            # everything: about 6 minutes
    .venv/bin/python bench/compare.py --systems dengine,etcd --concurrency 1,256 \
        --duration 2                             # a quick look: about a minute

One invocation starts each system's 3-node cluster on 127.0.0.1 in turn (in a temp dir,
removed afterwards), preloads the key space, runs every workload at every concurrency
(requests in flight) for --duration seconds after --warmup seconds, and stops it. Then it
prints a side-by-side table with throughput ratios and writes the raw JSON and a PNG chart
(throughput and p99 latency vs concurrency) into --out.

Systems (see docs/performance.md for their configuration):
  dengine           3 `dengine serve` processes, loaded through one dengine.Client (gRPC)
  dengine-embedded  the leader in this process (Engine API), 2 `dengine serve` followers
  etcd              Debian's etcd 3.4 (installed with apt-get when missing), fsync on
                    (the default), loaded through an asyncio gRPC client (aetcd's stubs)
  pysyncobj         PySyncObj, journal file on (never fsynced), load generated in the
                    leader's process; `pysyncobj-nobatch` is the same with batching off
Workloads: put; get-linearizable (dengine ReadIndex, etcd default Range);
get-serializable (dengine eventual, etcd serializable Range, PySyncObj local dict read).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.table import Table

from dengine.bench.cluster import LocalCluster, free_ports
from dengine.bench.load import LoadSpec, preload, run_load
from dengine.bench.runner import run_async
from dengine.errors import DengineError

HERE = Path(__file__).resolve().parent
SYSTEMS = ("dengine", "dengine-grpc", "dengine-embedded", "etcd", "pysyncobj",
           "pysyncobj-nobatch")
DEFAULT_SYSTEMS = SYSTEMS
WORKLOADS = {  # name -> (LoadSpec.workload, dengine consistency)
    "put": ("put", "linearizable"),
    "get-linearizable": ("get", "linearizable"),
    "get-serializable": ("get", "eventual"),
}
BASELINES = ("etcd", "pysyncobj", "pysyncobj-nobatch")
START_TIMEOUT_S = 60.0
ANSWER_TIMEOUT_S = 120.0
console = Console(width=200) if not Console().is_terminal else Console()


class BenchError(Exception):
    """A system could not be started or measured (a clear message, no traceback)."""


class System:
    """A 3-node cluster of one system: start, run one workload, stop."""

    name = ""
    workloads: tuple[str, ...] = tuple(WORKLOADS)

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir / self.name
        self.workdir.mkdir(parents=True)

    def config(self) -> dict[str, Any]:
        """What the system runs with, for the JSON and docs/performance.md."""
        raise NotImplementedError

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def preload(self, spec: LoadSpec) -> None:
        raise NotImplementedError

    async def run(self, spec: LoadSpec, warmup: float) -> dict[str, Any]:
        raise NotImplementedError

    async def __aenter__(self) -> System:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


class AsyncTargetSystem(System):
    """A system loaded from this process's event loop through an async put/get target."""

    target: Any = None

    async def preload(self, spec: LoadSpec) -> None:
        await preload(self.target, spec)

    async def run(self, spec: LoadSpec, warmup: float) -> dict[str, Any]:
        if warmup > 0:
            await run_load(self.target, replace(spec, total=None, duration=warmup))
        cpu = time.process_time()
        result = await run_load(self.target, spec)
        cpu = time.process_time() - cpu
        row = result.to_dict()
        # CPU of this process (all its threads) per request: the client's cost for a
        # remote system; client and leader together for dengine-embedded.
        row["bench_process_cpu_us_per_op"] = round(cpu / max(1, result.ops) * 1e6, 1)
        return row


class Dengine(AsyncTargetSystem):
    name = "dengine"
    embedded = False
    transport = "auto"  # dengine.Client's default: the native protocol

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.cluster = LocalCluster(3, embedded=self.embedded, base_dir=str(self.workdir))
        self.client: Any = None

    def config(self) -> dict[str, Any]:
        return {
            "nodes": 3,
            "fsync": "every write fsynced (Raft log, fdatasync) on a quorum before it is "
                     "acknowledged; the state machine WAL is fsynced per applied batch",
            "settings": self.cluster.settings,
            "client": f"dengine.Client, transport={self.transport} ("
            + ("the native protocol: length-prefixed protobuf frames over TCP"
               if self.transport == "auto" else "gRPC")
            + "; batches concurrent calls into one request)"
            if not self.embedded else "Engine API in the leader's process",
        }

    async def start(self) -> None:
        await self.cluster.start(START_TIMEOUT_S)
        if self.embedded:
            self.target = self.cluster.engine
        else:
            self.client = self.cluster.client(timeout=10.0, transport=self.transport)
            self.target = self.client

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
        await self.cluster.stop()


class DengineGrpc(Dengine):
    name = "dengine-grpc"
    transport = "grpc"


class DengineEmbedded(Dengine):
    name = "dengine-embedded"
    embedded = True


class EtcdTarget:
    """put/get through etcd's KV service with aetcd's generated stubs on one channel.

    Measured here: calling the stubs directly costs less client CPU per request than going
    through aetcd.Client (its decorators and result objects), so etcd gets the faster one.
    """

    def __init__(self, address: str, timeout: float = 10.0) -> None:
        import grpc
        from aetcd import rpc

        self._rpc = rpc
        self.channel = grpc.aio.insecure_channel(address)
        self._kv = rpc.KVStub(self.channel)
        self._timeout = timeout

    async def put(self, key: bytes, value: bytes) -> None:
        await self._kv.Put(self._rpc.PutRequest(key=key, value=value), timeout=self._timeout)

    async def get(self, key: bytes, consistency: str = "linearizable") -> bytes | None:
        resp = await self._kv.Range(
            self._rpc.RangeRequest(key=key, serializable=consistency != "linearizable"),
            timeout=self._timeout,
        )
        return bytes(resp.kvs[0].value) if resp.kvs else None

    async def close(self) -> None:
        await self.channel.close()


class AetcdClientTarget:
    """The same through aetcd.Client (the library's public API), for --etcd-client aetcd."""

    def __init__(self, address: str, timeout: float = 10.0) -> None:
        import aetcd

        host, port = address.rsplit(":", 1)
        self.client = aetcd.Client(host, int(port), timeout=timeout)

    async def put(self, key: bytes, value: bytes) -> None:
        await self.client.put(key, value)

    async def get(self, key: bytes, consistency: str = "linearizable") -> bytes | None:
        result = await self.client.get(key, serializable=consistency != "linearizable")
        return result.value if result is not None else None

    async def close(self) -> None:
        await self.client.close()


def find_etcd(install: bool) -> str:
    """Path of the etcd binary; installs Debian's etcd-server with apt-get when allowed."""
    path = shutil.which("etcd")
    if path:
        console.print(f"etcd: using {path} ({etcd_version(path)})")
        return path
    if not install or shutil.which("apt-get") is None:
        raise BenchError("etcd not found on PATH; install Debian's etcd-server "
                         "(apt-get install -y etcd-server etcd-client) or skip it with "
                         "--systems")
    console.print("etcd: not on PATH, installing Debian's etcd-server and etcd-client "
                  "with apt-get ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "etcd-server", "etcd-client"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BenchError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    path = shutil.which("etcd")
    if not path:
        raise BenchError("apt-get installed etcd-server but etcd is still not on PATH")
    console.print(f"etcd: installed {path} ({etcd_version(path)})")
    return path


def etcd_version(path: str) -> str:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else "unknown version"


class Etcd(AsyncTargetSystem):
    name = "etcd"

    def __init__(self, workdir: Path, binary: str, client_kind: str) -> None:
        super().__init__(workdir)
        self.binary = binary
        self.client_kind = client_kind
        self.procs: list[subprocess.Popen[bytes]] = []
        ports = free_ports(6)
        self.clients = [f"127.0.0.1:{ports[2 * i]}" for i in range(3)]
        self.peers = [f"127.0.0.1:{ports[2 * i + 1]}" for i in range(3)]

    def config(self) -> dict[str, Any]:
        return {
            "nodes": 3,
            "version": etcd_version(self.binary),
            "fsync": "on (etcd default: WAL fsynced before a proposal is acknowledged)",
            "settings": "defaults (heartbeat 100 ms, election 1000 ms, snapshot-count "
                        "100000), data dirs in the temp dir",
            "client": "aetcd's generated gRPC stubs, grpc.aio, one channel to the leader"
            if self.client_kind == "stubs" else "aetcd.Client, one channel to the leader",
        }

    async def start(self) -> None:
        cluster = ",".join(f"n{i}=http://{p}" for i, p in enumerate(self.peers))
        for i in range(3):
            log = open(self.workdir / f"n{i}.log", "wb")  # noqa: SIM115 - the child's
            try:
                self.procs.append(subprocess.Popen(orphan_safe(
                    [self.binary, "--name", f"n{i}", "--data-dir", str(self.workdir / f"n{i}"),
                     "--listen-client-urls", f"http://{self.clients[i]}",
                     "--advertise-client-urls", f"http://{self.clients[i]}",
                     "--listen-peer-urls", f"http://{self.peers[i]}",
                     "--initial-advertise-peer-urls", f"http://{self.peers[i]}",
                     "--initial-cluster", cluster, "--initial-cluster-state", "new",
                     "--initial-cluster-token", "dengine-compare"]),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                ))
            finally:
                log.close()
        leader = await self._find_leader()
        self.target = (EtcdTarget(leader) if self.client_kind == "stubs"
                       else AetcdClientTarget(leader))
        await self.target.put(b"bench-ready", b"1")

    async def _find_leader(self) -> str:
        import grpc
        from aetcd import rpc

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise BenchError(f"etcd exited with code {proc.returncode}; see "
                                     f"{self.workdir}/n*.log")
            for addr in self.clients:
                async with grpc.aio.insecure_channel(addr) as channel:
                    try:
                        st = await rpc.MaintenanceStub(channel).Status(rpc.StatusRequest(),
                                                                      timeout=1.0)
                    except grpc.aio.AioRpcError:
                        continue
                if st.leader and st.leader == st.header.member_id:
                    return addr
            await asyncio.sleep(0.2)
        raise BenchError(f"etcd elected no leader within {START_TIMEOUT_S:g}s")

    async def stop(self) -> None:
        if self.target is not None:
            await self.target.close()
            self.target = None
        await asyncio.to_thread(stop_processes, self.procs)


class PySyncObj(System):
    name = "pysyncobj"
    workloads = ("put", "get-serializable")
    batch = True

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        ports = free_ports(3)
        self.addresses = [f"127.0.0.1:{p}" for p in ports]
        self.procs: list[subprocess.Popen[str]] = []
        self.leader: subprocess.Popen[str] | None = None

    def config(self) -> dict[str, Any]:
        import pysyncobj

        return {
            "nodes": 3,
            "version": getattr(pysyncobj, "__version__", None) or package_version("pysyncobj"),
            "fsync": "never: the journal file is an mmap that is not fsynced per write; "
                     "an acknowledged write can be lost on power failure",
            "settings": f"SyncObjConf(journalFile=..., appendEntriesUseBatch={self.batch}), "
                        "other settings default",
            "client": "load generated in the leader's process (replicated method calls "
                      "with callbacks); reads are local dict lookups (no linearizable read)",
        }

    async def start(self) -> None:
        script = str(HERE / "pysyncobj_node.py")
        for i, addr in enumerate(self.addresses):
            partners = [a for a in self.addresses if a != addr]
            self.procs.append(subprocess.Popen(
                orphan_safe([sys.executable, script, addr, str(self.workdir / f"journal{i}"),
                             "1" if self.batch else "0", *partners]),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=open(self.workdir / f"n{i}.log", "wb"),  # noqa: SIM115
                text=True, start_new_session=True,
            ))
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            statuses = [await self._ask(p, {"cmd": "status"}) for p in self.procs]
            leaders = [p for p, s in zip(self.procs, statuses, strict=True)
                       if s["leader"] and s["has_quorum"]]
            if len(leaders) == 1 and all(s["ready"] for s in statuses):
                self.leader = leaders[0]
                return
            await asyncio.sleep(0.2)
        raise BenchError(f"PySyncObj elected no leader within {START_TIMEOUT_S:g}s")

    async def _ask(self, proc: subprocess.Popen[str], request: dict[str, Any]) -> Any:
        def exchange() -> Any:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            if not line:
                raise BenchError(f"a PySyncObj node exited (code {proc.poll()}); see "
                                 f"{self.workdir}/n*.log")
            return json.loads(line)

        # A node that never answers ends the run with an error, not a hang (stop() then
        # ends the processes, which frees the reading thread).
        limit = float(request.get("spec", {}).get("duration") or 0) + float(
            request.get("warmup", 0)) + ANSWER_TIMEOUT_S
        try:
            return await asyncio.wait_for(asyncio.to_thread(exchange), limit)
        except TimeoutError:
            raise BenchError(f"a PySyncObj node did not answer {request['cmd']!r} within "
                             f"{limit:g}s; see {self.workdir}/n*.log") from None

    async def preload(self, spec: LoadSpec) -> None:
        assert self.leader is not None
        await self._ask(self.leader, {"cmd": "preload", "spec": spec_dict(spec)})

    async def run(self, spec: LoadSpec, warmup: float) -> dict[str, Any]:
        assert self.leader is not None
        row: dict[str, Any] = await self._ask(
            self.leader, {"cmd": "run", "spec": spec_dict(spec), "warmup": warmup})
        return row

    async def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError, ValueError):
                assert proc.stdin is not None
                proc.stdin.write('{"cmd": "quit"}\n')
                proc.stdin.flush()
        await asyncio.to_thread(stop_processes, self.procs)


class PySyncObjNoBatch(PySyncObj):
    name = "pysyncobj-nobatch"
    batch = False


# Runs a child command after asking Linux to SIGKILL it when this process dies (however
# it dies); the setting survives exec. Done in the child rather than in a preexec_fn so
# that Popen need not fork a process that has gRPC threads.
_DIE_WITH_PARENT = """
import os, signal, sys
if sys.platform == "linux":
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != int(sys.argv[1]):
        os._exit(1)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def orphan_safe(argv: list[str]) -> list[str]:
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *argv]


def spec_dict(spec: LoadSpec) -> dict[str, Any]:
    return {k: getattr(spec, k) for k in LoadSpec.__dataclass_fields__}


def package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def stop_processes(procs: list[Any], grace: float = 10.0) -> None:
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fdatasync_ms(directory: Path, writes: int = 200) -> dict[str, float]:
    """Latency of a small write + fdatasync in `directory` (where the clusters write)."""
    path = directory / "fsync-probe"
    latencies = []
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        for _ in range(writes):
            start = time.perf_counter()
            os.write(fd, b"x" * 300)
            os.fdatasync(fd)
            latencies.append((time.perf_counter() - start) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    latencies.sort()
    return {"p50": round(latencies[len(latencies) // 2], 3),
            "p99": round(latencies[int(len(latencies) * 0.99)], 3)}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    fs = subprocess.run(["df", "-T", tempfile.gettempdir()], capture_output=True, text=True,
                        check=False).stdout.splitlines()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(), "cpu": cpu, "cores": os.cpu_count(),
        "kernel": platform.release(), "python": platform.python_version(),
        "temp_dir_fs": fs[-1].split()[1] if len(fs) > 1 else "unknown",
        "dengine": package_version("dengine"), "grpcio": package_version("grpcio"),
        "protobuf": package_version("protobuf"), "pysyncobj": package_version("pysyncobj"),
        "aetcd": package_version("aetcd"),
    }


async def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    configs: dict[str, Any] = {}
    # The machine is shared: how busy it and its disk were belongs with the numbers.
    conditions = {"before": {"load_average": load_average(),
                             "fdatasync_ms": fdatasync_ms(workdir)}}
    console.print(f"machine: load average {conditions['before']['load_average']}, "
                  f"fdatasync {conditions['before']['fdatasync_ms']} ms")
    etcd_binary = find_etcd(args.install_etcd) if "etcd" in args.systems else ""
    for name in args.systems:
        system: System
        if name == "etcd":
            system = Etcd(workdir, etcd_binary, args.etcd_client)
        else:
            system = {"dengine": Dengine, "dengine-grpc": DengineGrpc,
                      "dengine-embedded": DengineEmbedded,
                      "pysyncobj": PySyncObj, "pysyncobj-nobatch": PySyncObjNoBatch}[name](
                workdir)
        console.print(f"[bold]{name}[/]: starting a 3-node cluster")
        async with system:
            configs[name] = system.config()
            base = LoadSpec(total=None, duration=args.duration, key_size=args.key_size,
                            value_size=args.value_size, key_space=args.key_space)
            workloads = [w for w in args.workloads if w in system.workloads]
            if any(w != "put" for w in workloads):
                await system.preload(base)
            for workload in workloads:
                kind, consistency = WORKLOADS[workload]
                for concurrency in args.concurrency:
                    spec = replace(base, workload=kind, consistency=consistency,
                                   concurrency=concurrency).validate()
                    row = await system.run(spec, args.warmup)
                    row.update(system=name, workload=workload)
                    rows.append(row)
                    lat = row["latency_ms"]
                    console.print(f"  {workload:17} {concurrency:4} in flight: "
                                  f"{row['throughput_ops_s']:>10,.0f} ops/s  p50 "
                                  f"{lat['p50']:7.2f} ms  p99 {lat['p99']:7.2f} ms  "
                                  f"errors {row['errors']}{cpu_note(row)}")
    conditions["after"] = {"load_average": load_average(), "fdatasync_ms": fdatasync_ms(workdir)}
    console.print(f"machine after: load average {conditions['after']['load_average']}, "
                  f"fdatasync {conditions['after']['fdatasync_ms']} ms")
    return {"machine": machine(), "conditions": conditions, "configs": configs, "rows": rows,
            "options": {k: v for k, v in vars(args).items() if k != "out"}}


def ratio_columns(systems: list[str]) -> list[tuple[str, str]]:
    """(ours, baseline) pairs to show; the gRPC client only against etcd (also gRPC)."""
    return [(d, b) for d in systems if d.startswith("dengine") for b in systems
            if b in BASELINES and (d != "dengine-grpc" or b == "etcd")]


def cpu_note(row: dict[str, Any]) -> str:
    cpu = row.get("bench_process_cpu_us_per_op")
    return f"  (bench process CPU {cpu:.0f} us/op)" if cpu is not None else ""


def comparison_table(data: dict[str, Any]) -> Table:
    rows = data["rows"]
    systems = list(dict.fromkeys(r["system"] for r in rows))
    by_key = {(r["system"], r["workload"], r["concurrency"]): r for r in rows}
    ratios = ratio_columns(systems)
    table = Table(title="3-node clusters, ops/s (p50 / p99 ms)", show_lines=True)
    table.add_column("workload")
    table.add_column("in flight", justify="right")
    for s in systems:
        table.add_column(s, justify="right")
    for d, b in ratios:
        table.add_column(f"{d} ÷ {b}", justify="right")
    for workload in dict.fromkeys(r["workload"] for r in rows):
        for c in sorted({r["concurrency"] for r in rows if r["workload"] == workload}):
            cells = []
            for s in systems:
                r = by_key.get((s, workload, c))
                if r is None:
                    cells.append("n/a")
                    continue
                lat = r["latency_ms"]
                err = f"\n{r['errors']} errors" if r["errors"] else ""
                cells.append(f"{r['throughput_ops_s']:,.0f}\n{lat['p50']:.2f} / "
                             f"{lat['p99']:.2f}{err}")
            for d, b in ratios:
                rd, rb = by_key.get((d, workload, c)), by_key.get((b, workload, c))
                if rd is None or rb is None or not rb["throughput_ops_s"]:
                    cells.append("n/a")
                else:
                    cells.append(f"{rd['throughput_ops_s'] / rb['throughput_ops_s']:.2f}x")
            table.add_row(workload, str(c), *cells)
    return table


def markdown_table(data: dict[str, Any]) -> str:
    """The comparison as a Markdown table (for docs/performance.md)."""
    rows = data["rows"]
    systems = list(dict.fromkeys(r["system"] for r in rows))
    by_key = {(r["system"], r["workload"], r["concurrency"]): r for r in rows}
    ratios = ratio_columns(systems)
    head = ["workload", "in flight", *systems, *(f"{d} ÷ {b}" for d, b in ratios)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for workload in dict.fromkeys(r["workload"] for r in rows):
        for c in sorted({r["concurrency"] for r in rows if r["workload"] == workload}):
            cells = [workload, str(c)]
            for s in systems:
                r = by_key.get((s, workload, c))
                cells.append("n/a" if r is None else
                             f"{r['throughput_ops_s']:,.0f} ({r['latency_ms']['p50']:.2f} / "
                             f"{r['latency_ms']['p99']:.1f})"
                             + (f", {r['errors']} errors" if r["errors"] else ""))
            for d, b in ratios:
                rd, rb = by_key.get((d, workload, c)), by_key.get((b, workload, c))
                cells.append("n/a" if rd is None or rb is None or not rb["throughput_ops_s"]
                             else f"{rd['throughput_ops_s'] / rb['throughput_ops_s']:.2f}x")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = data["rows"]
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    systems = list(dict.fromkeys(r["system"] for r in rows))
    fig, axes = plt.subplots(2, len(workloads), figsize=(5.5 * len(workloads), 8),
                             squeeze=False)
    for col, workload in enumerate(workloads):
        for system in systems:
            points = sorted((r["concurrency"], r["throughput_ops_s"], r["latency_ms"]["p99"])
                            for r in rows if r["system"] == system and r["workload"] == workload)
            if not points:
                continue
            xs = [p[0] for p in points]
            axes[0][col].plot(xs, [p[1] for p in points], marker="o", label=system)
            axes[1][col].plot(xs, [p[2] for p in points], marker="o", label=system)
        axes[0][col].set_title(workload)
        axes[0][col].set_ylabel("ops/s")
        axes[1][col].set_ylabel("p99 latency (ms)")
        for ax in (axes[0][col], axes[1][col]):
            ax.set_yscale("log")
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted({r["concurrency"] for r in rows}))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
                lambda value, _pos: f"{value:g}"))
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.set_xlabel("requests in flight")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize="small")
    m = data["machine"]
    fig.suptitle(f"3-node clusters on one machine ({m['cores']} cores, {m['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)

    def names(allowed: tuple[str, ...] | list[str]) -> Any:
        def parse(text: str) -> list[str]:
            items = [t.strip() for t in text.split(",") if t.strip()]
            bad = [t for t in items if t not in allowed]
            if bad or not items:
                raise argparse.ArgumentTypeError(
                    f"expected a comma-separated subset of {', '.join(allowed)}")
            return items
        return parse

    def ints(text: str) -> list[int]:
        try:
            values = [int(t) for t in text.split(",") if t.strip()]
        except ValueError:
            values = []
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError("expected comma-separated positive integers")
        return values

    parser.add_argument("--systems", type=names(SYSTEMS), default=list(DEFAULT_SYSTEMS),
                        help=f"comma-separated, from {', '.join(SYSTEMS)} "
                             f"[default: {','.join(DEFAULT_SYSTEMS)}]")
    parser.add_argument("--workloads", type=names(list(WORKLOADS)), default=list(WORKLOADS),
                        help=f"comma-separated, from {', '.join(WORKLOADS)} [default: all]")
    parser.add_argument("--concurrency", type=ints, default=[1, 16, 64, 256],
                        help="requests in flight, comma-separated [default: 1,16,64,256]")
    parser.add_argument("--duration", type=float, default=5.0,
                        help="measured seconds per run [default: 5]")
    parser.add_argument("--warmup", type=float, default=0.5,
                        help="unmeasured seconds before each run [default: 0.5]")
    parser.add_argument("--key-size", type=int, default=8, help="[default: 8]")
    parser.add_argument("--value-size", type=int, default=256, help="[default: 256]")
    parser.add_argument("--key-space", type=int, default=10_000, help="[default: 10000]")
    parser.add_argument("--etcd-client", choices=("stubs", "aetcd"), default="stubs",
                        help="etcd client: aetcd's gRPC stubs directly (faster) or "
                             "aetcd.Client [default: stubs]")
    parser.add_argument("--no-install-etcd", dest="install_etcd", action="store_false",
                        help="do not apt-get install etcd-server when etcd is missing")
    parser.add_argument("--out", type=Path, default=Path("bench/results"),
                        help="directory for compare-<date>.json and .png "
                             "[default: bench/results]")
    parser.add_argument("--no-uvloop", dest="uvloop", action="store_false",
                        help="run this process on the default asyncio loop")
    parser.add_argument("--from-json", type=Path, default=None, metavar="FILE",
                        help="measure nothing: print the table of a saved run (and redraw "
                             "its chart next to it)")
    parser.add_argument("--markdown", action="store_true",
                        help="also print the table as Markdown")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be positive and --warmup not negative")
    try:
        replace(LoadSpec(), key_size=args.key_size, value_size=args.value_size,
                key_space=args.key_space).validate()
    except DengineError as e:
        parser.error(e.message)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        try:
            data = json.loads(args.from_json.read_text())
        except (OSError, ValueError) as e:
            console.print(f"[red]error:[/] cannot read {args.from_json}: {e}")
            return 1
        console.print(comparison_table(data))
        if args.markdown:
            print(markdown_table(data))
        chart(data, args.from_json.with_suffix(".png"))
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="dengine-compare-"))
    try:
        data = run_async(measure(args, workdir), args.uvloop)
    except (BenchError, DengineError) as e:
        console.print(f"[red]error:[/] {e}")
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("interrupted")
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    console.print(comparison_table(data))
    if args.markdown:
        print(markdown_table(data))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = data["machine"]["date"].replace(":", "").replace("+0000", "Z")
    json_path = args.out / f"compare-{stamp}.json"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    png_path = args.out / f"compare-{stamp}.png"
    chart(data, png_path)
    console.print(f"raw results: {json_path}\nchart: {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

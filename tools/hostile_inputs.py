"""Hostile inputs against a 3-node cluster of real server processes on 127.0.0.1 (issue 14,
items 5-7): the leader's RSS before, at peak and after each, and whether it kept leading.

    python tools/hostile_inputs.py [--src DIR] [--only read,frames,idle,burst] [--idle N]
    python tools/hostile_inputs.py --only grpc-size,grpc-garbage,grpc-amplify,grpc-nested,\
        grpc-partial

`--src` runs the servers from another checkout's src/ (to measure the code before a
change); the attacks themselves speak the native frames directly. Not a test: numbers
depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from hostile_grpc import ATTACKS as GRPC_ATTACKS

from dengine import Client
from dengine.bench.cluster import free_ports
from dengine.errors import DengineError
from dengine.proto.client_pb2 import ReadRequest, WriteRequest, WriteResponse
from dengine.proto.common_pb2 import WriteCommand
from dengine.proto.native import (
    METHOD_CODES,
    REQUEST_HEADER,
    REQUEST_OVERHEAD,
    RESPONSE_HEADER,
    request_frame,
)
from dengine.server.supervisor import die_with_parent

MiB = 1024 * 1024


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


class Sampler:
    """Peak RSS of `pid`, sampled every 20 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except OSError:
                return
            time.sleep(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


class ClusterProcs:
    def __init__(self, base: Path, src: str | None, extra: list[str]) -> None:
        ports = free_ports(6)
        self.clients = [f"127.0.0.1:{p}" for p in ports[:3]]
        peers = {i + 1: f"127.0.0.1:{p}" for i, p in enumerate(ports[3:])}
        env = dict(os.environ)
        if src:
            env["PYTHONPATH"] = src
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        for i in (1, 2, 3):
            args = [sys.executable, "-c", "from dengine.cli import main; main()", "serve",
                    "--id", str(i),
                    "--data-dir", str(base / f"n{i}"), "--listen-peer", peers[i],
                    "--listen-client", self.clients[i - 1], "--listen-client-native",
                    "127.0.0.1:0", "--log-level", "warning", *extra]
            for j, a in peers.items():
                if j != i:
                    args += ["--peer", f"{j}={a}"]
            log = open(base / f"n{i}.log", "wb")  # noqa: SIM115
            self.procs[i] = subprocess.Popen(die_with_parent(args), env=env, stdout=log,
                                             stderr=log)

    async def leader(self, timeout: float = 30) -> tuple[int, int, str, str]:
        """(node id, term, client address, native address) of the leader."""
        deadline = time.monotonic() + timeout
        async with Client(self.clients, timeout=2, transport="grpc") as c:
            while time.monotonic() < deadline:
                for addr in self.clients:
                    try:
                        st = await c.status(addr, timeout=1)
                    except DengineError:
                        continue
                    if st.role == "leader":
                        return st.node_id, st.term, addr, st.native_address
                await asyncio.sleep(0.1)
        raise SystemExit("no leader")

    def stop(self) -> None:
        for p in self.procs.values():
            p.terminate()
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


async def connect(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, _, port = address.rpartition(":")
    return await asyncio.open_connection(host.strip("[]"), int(port), limit=1 << 30)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    length, rid, status = RESPONSE_HEADER.unpack(await reader.readexactly(RESPONSE_HEADER.size))
    return rid, status, await reader.readexactly(length - 5)


def put_cmd(key: bytes, value: bytes) -> WriteCommand:
    cmd = WriteCommand()
    cmd.insert.key, cmd.insert.value = key, value
    return cmd


async def attack_read(native: str, client_addr: str) -> str:
    async with Client([client_addr], timeout=10) as c:
        await c.put(b"big", b"x" * MiB)
    body = ReadRequest(keys=[b"big"] * 400).SerializeToString()
    reader, writer = await connect(native)
    writer.write(request_frame(METHOD_CODES["Read"], 1, 30_000, body))
    _, status, answer = await asyncio.wait_for(read_response(reader), 60)
    writer.close()
    return f"request {len(body)} B -> response {len(answer) / MiB:.1f} MiB (status {status})"


async def attack_frames(native: str) -> str:
    streams = [await connect(native) for _ in range(120)]
    body_len = 8 * MiB - 64
    chunk = b"\0" * MiB
    for _, w in streams:
        w.write(REQUEST_HEADER.pack(body_len + REQUEST_OVERHEAD, METHOD_CODES["Write"], 1, 0))
    for _ in range(7):  # 7 of the 8 MiB, never the end
        for _, w in streams:
            w.write(chunk)
        await asyncio.sleep(0.2)
    await asyncio.sleep(5)
    closed = sum(1 for r, _ in streams if r.at_eof() or r.exception() is not None)
    for _, w in streams:
        w.close()
    return f"120 unfinished 8 MiB frames held 6 s; {closed} connections closed by the server"


async def attack_idle(native: str, grpc_addr: str, n: int, pid: int) -> str:
    socks = []
    host, _, port = native.rpartition(":")
    failed = 0
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect_ex((host, int(port)))
        except OSError:
            failed += 1
            s.close()
            continue
        socks.append(s)
    await asyncio.sleep(3)
    held = fds(pid)
    ok = "ok"
    try:
        async with Client([grpc_addr], timeout=10) as c:
            await c.put(b"after-idle", b"1")
    except DengineError as e:
        ok = f"write failed: {e}"
    for s in socks:
        s.close()
    return (f"{len(socks)} idle connections opened ({failed} failed locally), the leader "
            f"holding {held} fds 3 s later; a write: {ok}")


class Probe:
    """Round trips of a Status request to the leader every 10 ms on a connection of its
    own, during an attack: how long the leader's event loop went without a turn."""

    def __init__(self, native: str) -> None:
        self.native = native
        self.rtts: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        reader, writer = await connect(self.native)
        rid = 0
        try:
            while True:
                rid += 1
                t0 = time.monotonic()
                writer.write(request_frame(METHOD_CODES["Status"], rid, 5000, b""))
                await read_response(reader)
                self.rtts.append(time.monotonic() - t0)
                await asyncio.sleep(0.01)
        finally:
            writer.close()

    def __enter__(self) -> Probe:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()

    def summary(self) -> str:
        if not self.rtts:
            return "probe: no answer"
        rtts = sorted(self.rtts)
        return (f"leader's Status round trip every 10 ms: max {rtts[-1] * 1000:.0f} ms, "
                f"p99 {rtts[int(len(rtts) * 0.99)] * 1000:.0f} ms, "
                f"{sum(r > 0.15 for r in rtts)} of {len(rtts)} above 150 ms")


async def attack_burst(native: str) -> str:
    with Probe(native) as probe:
        what = await _burst(native)
        await asyncio.sleep(0.5)
    return f"{what}\n  {probe.summary()}"


async def _burst(native: str) -> str:
    value = b"v" * (64 * 1024)
    conns = 20
    streams = [await connect(native) for _ in range(conns)]
    per = 2000 // conns
    frames = [b"".join(request_frame(METHOD_CODES["Write"], n + 1, 5000, WriteRequest(
        commands=[put_cmd(b"burst-%d-%d" % (c, n), value)]).SerializeToString())
        for n in range(per)) for c in range(conns)]
    t0 = time.monotonic()
    for (_, w), f in zip(streams, frames, strict=True):
        w.write(f)
    codes: dict[str, int] = {}
    first_overloaded = None

    async def collect(reader: asyncio.StreamReader) -> None:
        nonlocal first_overloaded
        for _ in range(per):
            try:
                _, status, body = await asyncio.wait_for(read_response(reader), 30)
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                codes["no answer"] = codes.get("no answer", 0) + 1
                return
            resp = WriteResponse.FromString(body) if status == 0 else None
            code = ("OK" if resp is not None and not resp.HasField("error")
                    else resp.error.code if resp is not None else f"status {status}")
            if code == "OVERLOADED" and first_overloaded is None:
                first_overloaded = time.monotonic() - t0
            codes[code] = codes.get(code, 0) + 1

    await asyncio.gather(*(collect(r) for r, _ in streams))
    for _, w in streams:
        w.close()
    took = time.monotonic() - t0
    fo = f", first OVERLOADED after {first_overloaded * 1000:.0f} ms" if first_overloaded else ""
    return f"2000 x 64 KiB writes on {conns} connections: {codes} in {took:.1f} s{fo}"


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default=None)
    ap.add_argument("--only", default="read,frames,idle,burst")
    ap.add_argument("--idle", type=int, default=5000)
    ap.add_argument("--serve-args", default="", help="more `dengine serve` flags")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = ClusterProcs(Path(tmp), args.src, args.serve_args.split())
        try:
            for name in args.only.split(","):
                node, term, addr, native = await cluster.leader()
                pid = cluster.procs[node].pid
                await asyncio.sleep(1)
                before, fd_before = rss_mb(pid), fds(pid)
                with Sampler(pid) as sampler:
                    if name == "read":
                        what = await attack_read(native, addr)
                    elif name == "frames":
                        what = await attack_frames(native)
                    elif name == "idle":
                        what = await attack_idle(native, addr, args.idle, pid)
                    elif name in GRPC_ATTACKS:  # on the gRPC port (etcd's API)
                        what = await GRPC_ATTACKS[name](addr)
                    else:
                        what = await attack_burst(native)
                    fd_peak = fds(pid)
                    await asyncio.sleep(2)
                after = rss_mb(pid)
                node2, term2, _, _ = await cluster.leader()
                print(f"{name}: {what}\n  leader {node} RSS {before:.0f} MB -> peak "
                      f"{sampler.peak:.0f} MB -> {after:.0f} MB after 2 s; fds {fd_before} -> "
                      f"{fd_peak}; leader after: node {node2} term {term} -> {term2}",
                      flush=True)
        finally:
            cluster.stop()


if __name__ == "__main__":
    asyncio.run(main())

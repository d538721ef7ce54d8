"""10,000 leases kept alive by one client: server CPU per keep-alive, dengine vs etcd 3.4.

    python bench/lease_keepalive.py [--leases 10000] [--rounds 3] [--nodes 1|3]

Starts one etcd (Debian's etcd-server) of one member and a `dengine serve` cluster of
`--nodes` (1: one process here; 3: `LocalCluster`, every keep-alive sent to its leader,
which confirms its leadership with a ReadIndex round first; the CPU is the three
processes') on 127.0.0.1 free ports, grants `--leases` leases of TTL 60 on each, then renews all of
them `--rounds` times over one etcd `LeaseKeepAlive` gRPC stream (the same client code for
both: requests pipelined, answers read as they come), and for dengine also through its
Python client (`Client.lease_keepalive_once`, concurrent calls batched into native
`LeaseKeepAlive` requests). Reports the server process's CPU time (user + system, from
/proc) per keep-alive and the keep-alives per second. Both servers are stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from dengine import Client
from dengine.bench.cluster import LocalCluster, free_ports
from dengine.proto.etcd import rpc_pb2 as pb

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


async def wait_up(address: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary("/etcdserverpb.KV/Range",
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=pb.RangeResponse.FromString)
        while True:
            try:
                await call(pb.RangeRequest(key=b"x"), timeout=1)
                return
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)


async def grant_all(address: str, n: int) -> list[int]:
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary("/etcdserverpb.Lease/LeaseGrant",
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=pb.LeaseGrantResponse.FromString)
        ids: list[int] = []
        for lo in range(0, n, 256):
            answers = await asyncio.gather(*(call(pb.LeaseGrantRequest(TTL=60), timeout=30)
                                             for _ in range(min(256, n - lo))))
            ids.extend(a.ID for a in answers)
        return ids


async def keep_alive_stream(address: str, ids: list[int], rounds: int) -> float:
    """Seconds to renew every id `rounds` times over one LeaseKeepAlive stream."""
    async with grpc.aio.insecure_channel(address) as channel:
        stream = channel.stream_stream(
            "/etcdserverpb.Lease/LeaseKeepAlive",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.LeaseKeepAliveResponse.FromString)
        call = stream()
        began = time.perf_counter()

        async def send() -> None:
            for _ in range(rounds):
                for lease_id in ids:
                    await call.write(pb.LeaseKeepAliveRequest(ID=lease_id))
            await call.done_writing()

        writer = asyncio.create_task(send())
        got = 0
        async for resp in call:
            assert resp.TTL > 0, resp
            got += 1
            if got == rounds * len(ids):
                break
        await writer
        return time.perf_counter() - began


async def keep_alive_client(address: str, ids: list[int], rounds: int) -> float:
    async with Client(address, timeout=60) as client:
        began = time.perf_counter()
        for _ in range(rounds):
            ttls = await asyncio.gather(*(client.lease_keepalive_once(i) for i in ids))
            assert min(ttls) > 0
        return time.perf_counter() - began


async def measure(name: str, pids: list[int], address: str, n: int, rounds: int,
                  client: bool) -> None:
    await wait_up(address)
    ids = await grant_all(address, n)
    runs = [("etcd gRPC stream", keep_alive_stream)]
    if client:
        runs.append(("dengine Client (native, batched)", keep_alive_client))
    for label, fn in runs:
        before = sum(map(cpu_s, pids))
        seconds = await fn(address, ids, rounds)
        cpu = sum(map(cpu_s, pids)) - before
        total = n * rounds
        print(f"{name:8} {label:34} {total:7,} keep-alives  {total / seconds:9,.0f}/s  "
              f"server CPU {cpu * 1e6 / total:6.1f} us each")


async def measure_cluster(nodes: int, n: int, rounds: int) -> None:
    async with LocalCluster(nodes) as cluster:
        async with cluster.client() as client:
            leader = await client.leader()
        address = cluster.client_addresses[leader.id]
        pids = [p.pid for p in cluster.processes.values() if p.pid is not None]
        await measure(f"dengine x{nodes}", pids, address, n, rounds, True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--leases", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=1, choices=(1, 3))
    parser.add_argument("--systems", default="etcd,dengine")
    args = parser.parse_args()
    systems = args.systems.split(",")
    work = Path(tempfile.mkdtemp(prefix="lease-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ec, ep, dc, dp = free_ports(4)
        if "etcd" in systems:
            etcd = subprocess.Popen(
                ["etcd", "--data-dir", str(work / "etcd"), "--name", "e",
                 "--listen-client-urls", f"http://127.0.0.1:{ec}",
                 "--advertise-client-urls", f"http://127.0.0.1:{ec}",
                 "--listen-peer-urls", f"http://127.0.0.1:{ep}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{ep}",
                 "--initial-cluster", f"e=http://127.0.0.1:{ep}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(etcd)
            asyncio.run(measure("etcd", [etcd.pid], f"127.0.0.1:{ec}", args.leases,
                                args.rounds, False))
        if "dengine" not in systems:
            return
        if args.nodes > 1:
            asyncio.run(measure_cluster(args.nodes, args.leases, args.rounds))
            return
        dengine = subprocess.Popen(
            [sys.executable, "-c", "from dengine.cli import main; main()", "serve",
             "--data-dir", str(work / "dengine"), "--listen-client", f"127.0.0.1:{dc}",
             "--listen-peer", f"127.0.0.1:{dp}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(dengine)
        asyncio.run(measure("dengine", [dengine.pid], f"127.0.0.1:{dc}", args.leases,
                            args.rounds, True))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

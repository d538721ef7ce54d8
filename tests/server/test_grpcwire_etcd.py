"""dengine's etcd servicers, unchanged, on the hand-framed gRPC front end instead of
grpc.aio (docs/grpc-frontend.md, "The switch"): etcdctl (Go's gRPC) and grpcio clients
against a one-node engine, over KV, Watch, Lease keep-alive and Snapshot streams."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from dengine import Engine
from dengine.bench.cluster import free_ports
from dengine.proto.etcd import rpc_pb2
from dengine.server import ClientService, start_grpc_server
from dengine.server.etcd import EtcdApi
from dengine.server.process import forward_channel_options

# A dependency since session 16: a venv installed before it lacks it (pip install -e .).
pytest.importorskip("hpack")

from dengine.server.grpcwire import GrpcWireServer

FAST = {"tick_ms": 5, "election_timeout_ms": 100, "heartbeat_interval_ms": 20,
        "clock_drift_ms": 20}


@asynccontextmanager
async def _node(tmp_path: Path) -> AsyncIterator[str]:
    """A one-node engine whose client port is served by GrpcWireServer; its address."""
    peer, client = (f"127.0.0.1:{p}" for p in free_ports(2))
    engine = await Engine.start(str(tmp_path / "n1"), **FAST, node_id=1, listen_peer=peer,
                                listen_client=client, peers={}, client_frontend="wire")
    config = engine.config
    etcd = EtcdApi(engine, config, forward_channel_options(config))
    service = ClientService(engine, config, gate=etcd.gate, login=etcd.auth.login)
    server = await start_grpc_server(service, config, etcd)  # as `dengine serve` does
    assert isinstance(server, GrpcWireServer)
    try:
        await etcd.start()
        await engine.wait_ready(timeout=10)
        yield client
    finally:
        await server.stop()
        await etcd.stop()
        await engine.stop()


async def _etcdctl(address: str, *args: str) -> str:
    done = await asyncio.to_thread(
        subprocess.run, ["etcdctl", f"--endpoints={address}", *args],
        env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
        timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_etcdctl_kv_lease_keepalive_and_snapshot(tmp_path: Path) -> None:
    async def main() -> None:
        async with _node(tmp_path) as address:
            assert await _etcdctl(address, "put", "a", "1") == "OK\n"
            assert await _etcdctl(address, "get", "a") == "a\n1\n"
            granted = await _etcdctl(address, "lease", "grant", "60")
            lease = granted.split()[1]
            kept = await _etcdctl(address, "lease", "keep-alive", "--once", lease)
            assert f"lease {lease} keepalived with TTL(" in kept
            assert "1" in await _etcdctl(address, "del", "a")
            saved = await _etcdctl(address, "snapshot", "save", str(tmp_path / "snap.db"))
            assert "Snapshot saved at" in saved
            assert "Error" not in await _etcdctl(address, "endpoint", "status")

    asyncio.run(main())


def test_grpcio_watch_stream_sees_a_put(tmp_path: Path) -> None:
    async def main() -> None:
        async with _node(tmp_path) as address, grpc.aio.insecure_channel(address) as channel:
            watch = channel.stream_stream(
                "/etcdserverpb.Watch/Watch", request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=rpc_pb2.WatchResponse.FromString)()
            await watch.write(rpc_pb2.WatchRequest(
                create_request=rpc_pb2.WatchCreateRequest(key=b"k")))
            created: Any = await watch.read()
            assert created.created
            put = channel.unary_unary(
                "/etcdserverpb.KV/Put", request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=rpc_pb2.PutResponse.FromString)
            await put(rpc_pb2.PutRequest(key=b"k", value=b"v"), timeout=20)
            event: Any = await watch.read()
            assert [(e.kv.key, e.kv.value) for e in event.events] == [(b"k", b"v")]
            await watch.done_writing()
            watch.cancel()

    asyncio.run(main())


def test_client_frontend_is_checked_and_wire_by_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from dengine.config import NodeConfig
    from dengine.errors import ConfigError

    with pytest.raises(ConfigError, match="client_frontend must be one of grpcio, wire"):
        NodeConfig(client_frontend="h3").validate()
    monkeypatch.delenv("DENGINE_CLIENT_FRONTEND", raising=False)
    assert NodeConfig().client_frontend == "wire"
    monkeypatch.setenv("DENGINE_CLIENT_FRONTEND", "grpcio")  # the fallback
    assert NodeConfig().client_frontend == "grpcio"

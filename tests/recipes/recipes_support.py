"""In-process clusters for the recipes' tests: real Engines on 127.0.0.1, each serving
dengine's gRPC service, its native listener and etcd's gRPC API (every server and engine
is stopped by the test that starts it)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from dengine import Engine
from dengine.bench.cluster import free_ports
from dengine.server import ClientService, start_grpc_server
from dengine.server.etcd import EtcdApi
from dengine.server.native import NativeServer
from dengine.server.process import forward_channel_options

T = TypeVar("T")

FAST = {"tick_ms": 5, "election_timeout_ms": 100, "heartbeat_interval_ms": 20,
        "clock_drift_ms": 20}
# For tests that need one leader throughout (three engines share one loop on two busy
# cores: a 100 ms election timeout can lose the leader under load).
STEADY = {"tick_ms": 10, "election_timeout_ms": 1000, "heartbeat_interval_ms": 100,
          "clock_drift_ms": 100}


def free_port() -> int:
    """A port free on 127.0.0.1, outside the ephemeral range (dengine.bench.cluster)."""
    return free_ports(1)[0]


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@dataclass
class Member:
    engine: Engine
    server: grpc.aio.Server
    native: NativeServer
    etcd: EtcdApi

    @property
    def address(self) -> str:
        return self.engine.config.listen_client


class Cluster:
    def __init__(self, members: dict[int, Member]) -> None:
        self.members = members

    @property
    def endpoints(self) -> list[str]:
        return [m.address for m in self.members.values()]

    def leader(self) -> Member:
        return next(m for m in self.members.values() if m.engine.is_leader)

    def followers(self) -> list[Member]:
        return [m for m in self.members.values() if not m.engine.is_leader]

    async def stop(self, node_id: int) -> None:
        await stop_member(self.members.pop(node_id))


async def start_member(engine: Engine) -> Member:
    config = engine.config
    etcd = EtcdApi(engine, config, forward_channel_options(config))
    service = ClientService(engine, config)
    server = await start_grpc_server(service, config, etcd)
    await etcd.start()
    native = NativeServer.from_config(service, config)
    service.native_address = await native.start("127.0.0.1:0")
    return Member(engine, server, native, etcd)


async def stop_member(m: Member) -> None:
    await m.native.stop(0)
    await m.server.stop(0)
    await m.etcd.stop()
    await m.engine.stop()


@contextlib.asynccontextmanager
async def cluster(tmp_path: Path, nodes: int = 3, **settings: Any) -> AsyncIterator[Cluster]:
    """`nodes` engines in this loop, each with its servers."""
    peers = {i: f"127.0.0.1:{free_port()}" for i in range(1, nodes + 1)}
    clients = {i: f"127.0.0.1:{free_port()}" for i in range(1, nodes + 1)}
    members: dict[int, Member] = {}
    try:
        engines = await asyncio.gather(*(
            Engine.start(str(tmp_path / f"n{i}"), **{**FAST, **settings}, node_id=i,
                         listen_peer=peers[i], listen_client=clients[i],
                         peers={j: a for j, a in peers.items() if j != i})
            for i in peers))
        for engine in engines:
            members[engine.node_id] = await start_member(engine)
        for m in members.values():
            await m.engine.wait_ready(timeout=10)
        yield Cluster(members)
    finally:
        for m in members.values():
            with contextlib.suppress(Exception):
                await stop_member(m)

"""A tiny in-memory engine honouring the Engine contract, served by the real gRPC service."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from dengine.config import NodeConfig
from dengine.errors import NotLeader, Unavailable
from dengine.proto.common_pb2 import WriteCommand
from dengine.server import ClientService, start_grpc_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class FakeResult:
    index: int
    succeeded: bool
    value: bytes = b""


@dataclass
class FakeStatus:
    node_id: int
    cluster_id: str = "test"
    role: str = "leader"
    term: int = 1
    leader_id: int = 1
    commit_index: int = 0
    applied_index: int = 0
    first_log_index: int = 1
    last_log_index: int = 0
    voters: dict[int, str] = field(default_factory=dict)
    learners: dict[int, str] = field(default_factory=dict)


class FakeEngine:
    """A single store; `redirect_to` makes it answer NOT_LEADER with that client address."""

    def __init__(self, node_id: int = 1, store: dict[bytes, bytes] | None = None) -> None:
        self.node_id = node_id
        self.store = store if store is not None else {}
        self.index = 0
        self.write_calls: list[int] = []  # number of commands per engine.write call
        self.read_calls: list[tuple[int, str]] = []
        self.redirect_to: str | None = None
        self.unavailable = False
        self.hang = False

    def _check(self) -> None:
        if self.hang:
            raise AssertionError("unreachable")
        if self.unavailable:
            raise Unavailable("no quorum")
        if self.redirect_to is not None:
            raise NotLeader(leader_id=99, leader_address=self.redirect_to)

    async def write(self, commands: Sequence[WriteCommand], *, timeout: float | None = None
                    ) -> list[FakeResult]:
        if self.hang:
            await asyncio.sleep(3600)
        self._check()
        self.write_calls.append(len(commands))
        out = []
        for cmd in commands:
            self.index += 1
            if cmd.HasField("insert"):
                self.store[cmd.insert.key] = cmd.insert.value
            else:
                self.store.pop(cmd.delete.key, None)
            out.append(FakeResult(self.index, True))
        return out

    async def get_many(self, keys: Sequence[bytes], consistency: str = "linearizable", *,
                       timeout: float | None = None) -> list[bytes | None]:
        if self.hang:
            await asyncio.sleep(3600)
        self._check()
        self.read_calls.append((len(keys), consistency))
        return [self.store.get(k) for k in keys]

    def status(self) -> FakeStatus:
        return FakeStatus(
            node_id=self.node_id, leader_id=0 if self.redirect_to else self.node_id,
            role="follower" if self.redirect_to else "leader",
            commit_index=self.index, applied_index=self.index, last_log_index=self.index,
            voters={self.node_id: "127.0.0.1:1"},
        )


@dataclass
class FakeServer:
    engine: FakeEngine
    address: str
    config: NodeConfig


@contextlib.asynccontextmanager
async def fake_servers() -> AsyncIterator[list[FakeServer]]:
    """Two fake nodes sharing one store (node 1 leads); both stopped on exit."""
    store: dict[bytes, bytes] = {}
    servers, grpc_servers = [], []
    for node_id in (1, 2):
        addr = f"127.0.0.1:{free_port()}"
        config = NodeConfig(node_id=node_id, listen_client=addr,
                            max_key_size=64, max_value_size=1024, max_request_size=64 * 1024)
        engine = FakeEngine(node_id, store)
        grpc_servers.append(await start_grpc_server(ClientService(engine, config), config))
        servers.append(FakeServer(engine, addr, config))
    try:
        yield servers
    finally:
        for s in grpc_servers:
            await s.stop(None)

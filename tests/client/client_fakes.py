"""A tiny in-memory engine honouring the Engine contract, served by the real gRPC service."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from dengine.bench.cluster import free_ports
from dengine.config import NodeConfig, parse_address
from dengine.errors import ConfigError, DengineError, InvalidRequest, NotLeader, Unavailable
from dengine.kv import Limits, check_encoded_commands, check_keys, check_node_id
from dengine.kv.mvcc import MvccStore
from dengine.proto.common_pb2 import WriteCommand
from dengine.server import ClientService, NativeServer, start_grpc_server


def free_port() -> int:
    """A port free on 127.0.0.1, outside the ephemeral range (dengine.bench.cluster)."""
    return free_ports(1)[0]


@dataclass
class FakeResult:
    index: int
    succeeded: bool
    value: bytes = b""
    revision: int = 0
    response: object = None


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
    snapshot_index: int = 0


@dataclass
class FakeMember:
    """The Engine's MemberInfo."""

    id: int
    address: str
    client_address: str = ""
    role: str = "voter"
    match_index: int = 0
    is_leader: bool = False


@dataclass
class FakeMembership:
    """One configuration shared by the fake nodes, with the Engine's change rules."""

    members: dict[int, FakeMember] = field(default_factory=dict)
    busy_changes: int = 0        # this many change attempts get Unavailable (change pending)
    lagging: set[int] = field(default_factory=set)   # learners not caught up
    calls: list[tuple[str, int]] = field(default_factory=list)

    def change(self, kind: str, node_id: int) -> None:
        self.calls.append((kind, node_id))
        if self.busy_changes > 0:
            self.busy_changes -= 1
            raise Unavailable("another membership change is pending; retry later")


class FakeEngine:
    """A single store; `redirect_to` makes it answer NOT_LEADER with that client address.
    Validates like the Engine (dengine.kv), with the limits of `fake_servers`' config."""

    limits = Limits(max_key_size=64, max_value_size=1024, max_request_size=64 * 1024)

    def __init__(self, node_id: int = 1, store: dict[bytes, bytes] | None = None,
                 membership: FakeMembership | None = None) -> None:
        self.node_id = node_id
        self.store = store if store is not None else {}
        self.membership = membership if membership is not None else FakeMembership()
        self.index = 0
        self.write_calls: list[int] = []  # number of commands per engine.write call
        self.read_calls: list[tuple[int, str]] = []
        self.redirect_to: str | None = None
        self.unavailable = False
        self.hang = False
        self.hang_keys: set[bytes] = set()  # a write touching one of these never returns
        self.read_delay: Callable[[Sequence[bytes]], float] | None = None
        self.error: DengineError | None = None  # what every read and write raises
        self.timeouts: list[float | None] = []  # the `timeout` of each write/read call

    def header_ids(self) -> tuple[int, int, int]:
        return (7, self.node_id, 1)  # cluster id, member id, Raft term

    def _check(self) -> None:
        if self.hang:
            raise AssertionError("unreachable")
        if self.error is not None:
            raise self.error
        if self.unavailable:
            raise Unavailable("no quorum")
        if self.redirect_to is not None:
            raise NotLeader(leader_id=99, leader_address=self.redirect_to)

    async def write(self, commands: Sequence[WriteCommand], *, timeout: float | None = None
                    ) -> list[FakeResult]:
        self.timeouts.append(timeout)
        if self.hang or any(c.insert.key in self.hang_keys or c.delete.key in self.hang_keys
                            for c in commands):
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

    async def write_encoded(self, commands: Sequence[bytes], *, timeout: float | None = None
                            ) -> list[FakeResult]:
        check_encoded_commands(commands, self.limits)
        return await self.write([WriteCommand.FromString(c) for c in commands], timeout=timeout)

    def query_local(self, fn: Callable[[Any], Any]) -> Any:
        """The auth state of a store that never had auth (all the service asks)."""
        return fn(MvccStore())

    async def get_many(self, keys: Sequence[bytes], consistency: str = "linearizable", *,
                       timeout: float | None = None) -> list[bytes | None]:
        keys = check_keys(keys, self.limits)
        self.timeouts.append(timeout)
        if self.hang:
            await asyncio.sleep(3600)
        if self.read_delay is not None:
            await asyncio.sleep(self.read_delay(keys))
        self._check()
        self.read_calls.append((len(keys), consistency))
        return [self.store.get(k) for k in keys]

    def status(self) -> FakeStatus:
        ms = self.membership.members.values()
        return FakeStatus(
            node_id=self.node_id, leader_id=99 if self.redirect_to else self.node_id,
            role="follower" if self.redirect_to else "leader",
            commit_index=self.index, applied_index=self.index, last_log_index=self.index,
            voters={m.id: m.address for m in ms if m.role == "voter"},
            learners={m.id: m.address for m in ms if m.role == "learner"},
        )

    def members(self) -> list[FakeMember]:
        return [dataclasses.replace(m, is_leader=m.id == self.node_id and not self.redirect_to)
                for m in self.membership.members.values()]

    async def add_learner(self, node_id: int, address: str, *,
                          promote_when_caught_up: bool = False, timeout: float | None = None
                          ) -> None:
        check_node_id(node_id)
        try:
            parse_address(address)
        except ConfigError as e:
            raise InvalidRequest(f"peer address of node {node_id}: {e.message}") from None
        self._check()
        self.membership.change("add", node_id)
        if node_id in self.membership.members:
            raise InvalidRequest(f"node {node_id} is already a member")
        role = "voter" if promote_when_caught_up else "learner"
        self.membership.members[node_id] = FakeMember(node_id, address, role=role)

    async def promote(self, node_id: int, *, timeout: float | None = None) -> None:
        check_node_id(node_id)
        self._check()
        self.membership.change("promote", node_id)
        m = self.membership.members.get(node_id)
        if m is None or m.role != "learner":
            raise InvalidRequest(f"node {node_id} is not a learner")
        if node_id in self.membership.lagging:
            raise InvalidRequest(f"learner {node_id} has not caught up yet")
        m.role = "voter"

    async def remove_member(self, node_id: int, *, timeout: float | None = None) -> None:
        check_node_id(node_id)
        self._check()
        self.membership.change("remove", node_id)
        if self.membership.members.pop(node_id, None) is None:
            raise InvalidRequest(f"node {node_id} is not a member")


@dataclass
class FakeServer:
    engine: FakeEngine
    address: str
    config: NodeConfig
    service: ClientService
    grpc: grpc.aio.Server
    native: NativeServer | None = None  # its bound address is service.native_address


@contextlib.asynccontextmanager
async def fake_servers(native: bool = False) -> AsyncIterator[list[FakeServer]]:
    """Two fake nodes sharing one store and configuration (node 1 leads), with a native
    listener each when `native`; every listener is stopped on exit."""
    store: dict[bytes, bytes] = {}
    membership = FakeMembership()
    servers = []
    try:
        for node_id in (1, 2):
            addr = f"127.0.0.1:{free_port()}"
            membership.members[node_id] = FakeMember(node_id, f"127.0.0.1:{9180 + node_id}",
                                                     client_address=addr)
            config = NodeConfig(node_id=node_id, listen_client=addr, max_key_size=64,
                                max_value_size=1024, max_request_size=64 * 1024)
            engine = FakeEngine(node_id, store, membership)
            engine.limits = Limits.of(config)
            service = ClientService(engine, config, lambda _id, e=engine: e.redirect_to or "")
            native_server = None
            if native:
                native_server = NativeServer(service, config.max_request_size)
                service.native_address = await native_server.start("127.0.0.1:0")
            server = FakeServer(engine, addr, config, service,
                                await start_grpc_server(service, config), native_server)
            servers.append(server)
        yield servers
    finally:
        for s in servers:
            await s.grpc.stop(None)
            if s.native is not None:
                await s.native.stop(0)

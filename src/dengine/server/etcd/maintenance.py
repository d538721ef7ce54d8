"""etcd's `etcdserverpb.Maintenance/Status`, `etcdserverpb.Cluster/MemberList` and
`grpc.health.v1.Health` on a node.

Status answers from this member alone (etcdctl's `endpoint status` asks every member);
MemberList gives every member's real client URL (`http://HOST:PORT` of its gRPC client
port, https with TLS: `endpoint status --cluster` then asks each of them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from dengine.kv import EVENTUAL
from dengine.node.engine import Engine
from dengine.proto.etcd import rpc_pb2
from dengine.server.etcd.checks import check_message_size, decode
from dengine.server.etcd.kv import EtcdBase

# What Status reports as the server's version: the etcd API dengine speaks (clients such
# as Kubernetes' apiserver gate features on it).
ETCD_VERSION = "3.4.0"
HEALTH_CHECK_S = 1.0  # how often the health service's status is brought up to date


def url(address: str, tls: bool = False) -> str:
    """etcd's URL form of a HOST:PORT (https with TLS: the cluster's members are
    configured alike, so this member's settings tell)."""
    return f"{'https' if tls else 'http'}://{address}" if address else ""


def dir_size(path: str) -> int:
    """Bytes of the files under `path` (the data dir: etcd's dbSize counts its database)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_size
    return total


class MaintenanceService(EtcdBase):
    """`etcdserverpb.Maintenance/Status` and `etcdserverpb.Cluster/MemberList`."""

    def generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        def unary(fn: Callable[[bytes, Any], Awaitable[bytes]]) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=None, response_serializer=None)

        return [
            grpc.method_handlers_generic_handler(
                "etcdserverpb.Maintenance", {"Status": unary(self.status)}),
            grpc.method_handlers_generic_handler(
                "etcdserverpb.Cluster", {"MemberList": unary(self.member_list)}),
        ]

    async def _revision(self) -> int:
        return int(await self._engine.read_query(_store_revision, EVENTUAL))

    async def status(self, request: bytes, context: Any) -> bytes:
        try:
            check_message_size(len(request), self._config)
            decode(rpc_pb2.StatusRequest, request)
            st = self._engine.status()
            size = await asyncio.get_running_loop().run_in_executor(
                None, dir_size, self._config.data_dir)
            resp = rpc_pb2.StatusResponse(
                version=ETCD_VERSION, dbSize=size, dbSizeInUse=size, leader=st.leader_id,
                raftIndex=st.commit_index, raftTerm=st.term,
                raftAppliedIndex=st.applied_index, isLearner=st.role == "learner",
            )
            self.stamp(resp.header, await self._revision())
            return bytes(resp.SerializeToString())
        except Exception as exc:
            await self.fail(context, exc)

    async def member_list(self, request: bytes, context: Any) -> bytes:
        try:
            check_message_size(len(request), self._config)
            decode(rpc_pb2.MemberListRequest, request)
            own = self._config.node_id
            peer_tls, client_tls = bool(self._config.peer_cert_file), bool(self._config.cert_file)
            resp = rpc_pb2.MemberListResponse()
            for m in self._engine.members():
                client = m.client_address or (self._config.client_address if m.id == own
                                              else "")
                resp.members.add(
                    ID=m.id, name=f"node{m.id}", peerURLs=[url(m.address, peer_tls)],
                    clientURLs=[url(client, client_tls)] if client else [],
                    isLearner=m.role == "learner",
                )
            self.stamp(resp.header, await self._revision())
            return bytes(resp.SerializeToString())
        except Exception as exc:
            await self.fail(context, exc)


def _store_revision(store: Any) -> int:
    return int(getattr(store, "revision", 0))


class _Servicer(health_aio.HealthServicer):
    """grpcio-health-checking's servicer, whose Check brings the status up to date first."""

    def __init__(self, health: Health) -> None:
        super().__init__()
        self._health = health

    async def Check(self, request: Any, context: Any) -> Any:
        await self._health.update()
        return await super().Check(request, context)


class Health:
    """`grpc.health.v1.Health`: SERVING while this member runs and knows a leader (the
    overall status, service ""), NOT_SERVING otherwise; Check asks now, Watch sees the
    changes every `HEALTH_CHECK_S`."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.servicer = _Servicer(self)
        self._task: asyncio.Task[None] | None = None

    def register(self, server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    def serving(self) -> bool:
        return self._engine.running and bool(self._engine.leader_id)

    async def start(self) -> None:
        await self.update()
        self._task = asyncio.create_task(self._run(), name="dengine-etcd-health")

    async def update(self) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if self.serving()
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.servicer.set("", status)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_CHECK_S)
            await self.update()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.servicer.enter_graceful_shutdown()

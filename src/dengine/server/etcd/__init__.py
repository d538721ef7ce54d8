"""etcd v3's gRPC API on a node's client port (docs/etcd-model.md): `etcdserverpb.KV`,
`etcdserverpb.Watch`, `etcdserverpb.Lease`, `etcdserverpb.Maintenance` (Status, Alarm,
Snapshot), `etcdserverpb.Cluster`,
`grpc.health.v1.Health`, `v3lockpb.Lock` and `v3electionpb.Election`, registered by hand
under etcd's service names (the method paths on the wire are etcd's, our generated
messages keep their own proto packages)."""

from __future__ import annotations

from typing import Any

import grpc

from dengine.config import NodeConfig
from dengine.node.engine import Engine
from dengine.server.etcd.auth import AuthService
from dengine.server.etcd.backup import BackupService
from dengine.server.etcd.cluster import ClusterService
from dengine.server.etcd.forward import Forwarder, KvForwarder, applied_here
from dengine.server.etcd.gate import Gate
from dengine.server.etcd.kv import KvService
from dengine.server.etcd.lease import LeaseService
from dengine.server.etcd.maintenance import Health, MaintenanceService
from dengine.server.etcd.recipes import RecipeServices
from dengine.server.etcd.watch import WatchService
from dengine.tls import ClientTls

__all__ = ["EtcdApi"]


class EtcdApi:
    """The etcd services of one node: `register` them on its gRPC server, then `start`;
    `stop` before the engine stops."""

    def __init__(self, engine: Engine, config: NodeConfig,
                 channel_options: list[tuple[str, Any]],
                 tls: ClientTls | None = None) -> None:
        self.forwarder = Forwarder(channel_options,
                                   tls.grpc_credentials() if tls is not None else None)
        self.kv_forwarder = KvForwarder(tls, config.max_request_size // 2,
                                        applied_here(engine))
        self.kv = KvService(engine, config, self.kv_forwarder, self.forwarder)
        self.lease = LeaseService(engine, config, self.forwarder, self.kv_forwarder)
        self.maintenance = MaintenanceService(engine, config, self.forwarder)
        self.cluster = ClusterService(engine, config, self.forwarder)
        self.watch = WatchService(engine, config)
        self.backup = BackupService(engine, config)
        self.health = Health(engine)
        self.recipes = RecipeServices(engine, config)
        self.gate = Gate(engine, cert_auth=config.client_cert_auth)
        self.auth = AuthService(engine, config, self.forwarder, self.gate)
        for service in (self.kv, self.lease, self.maintenance, self.cluster, self.watch,
                        self.backup, self.auth, self.recipes):
            service.gate = self.gate  # one token clock per node

    def register(self, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers(
            (self.kv.generic_handler(), self.watch.generic_handler(),
             *self.lease.generic_handlers(),
             self.maintenance.generic_handler(), self.cluster.generic_handler(),
             *self.recipes.generic_handlers(),
             self.backup.generic_handler(), self.auth.generic_handler()))
        self.health.register(server)

    async def start(self) -> None:
        await self.health.start()

    async def stop(self) -> None:
        await self.health.stop()
        await self.recipes.close()
        await self.forwarder.close()
        await self.kv_forwarder.close()

"""etcd's `etcdserverpb.Maintenance` Status, Alarm, Defragment, HashKV and MoveLeader, and
`grpc.health.v1.Health`, on a node (Snapshot: `backup.py`; Hash is not served).

Status answers from this member alone (etcdctl's `endpoint status` asks every member).
Alarm: dengine raises one alarm, NOSPACE, which each member raises for itself: while the
file system of its data dir has less than `NOSPACE_FREE_BYTES` free (a write that finds
the disk full stops the node, docs/operations.md: the alarm is the warning before). It
clears itself when space is back; it cannot be raised by request, and DEACTIVATE only
answers whether it is active. A GET lists the alarms of every member that answers (the
member asked asks the others' client ports, as a follower forwards a write, once), as
etcd's alarm list is the cluster's; a DEACTIVATE goes to the member it names.
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

from dengine.config import NodeConfig
from dengine.errors import DengineError, InvalidRequest, KvError, NotLeader, Timeout
from dengine.kv import EVENTUAL
from dengine.node.engine import Engine
from dengine.proto.etcd import rpc_pb2
from dengine.server.etcd.checks import check_message_size, decode
from dengine.server.etcd.errors import NO_LEADER
from dengine.server.etcd.forward import Forwarder, forwarded
from dengine.server.etcd.kv import EtcdBase, timeout_of

# What Status reports as the server's version: the etcd API dengine speaks (clients such
# as Kubernetes' apiserver gate features on it).
ETCD_VERSION = "3.4.0"
HEALTH_CHECK_S = 1.0  # how often the health service's status is brought up to date
NOSPACE_FREE_BYTES = 64 * 1024 * 1024  # less free space than this raises NOSPACE
ALARM_ASK_S = 1.0  # how long a GET waits for the other members' alarms
NOT_LEADER = "etcdserver: not leader"  # etcd's MoveLeader errors
BAD_TRANSFEREE = "etcdserver: bad leader transferee"
TRANSFER_TIMED_OUT = "etcdserver: request timed out, leader transfer took too long"


def dir_size(path: str) -> int:
    """Bytes of the files under `path` (the data dir: etcd's dbSize counts its database)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_size
    return total


def free_bytes(path: str) -> int | None:
    """Bytes free for this process on the file system of `path` (None: unknown)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


class MaintenanceService(EtcdBase):
    """`etcdserverpb.Maintenance`: Status, Alarm, Defragment, HashKV, MoveLeader."""

    def __init__(self, engine: Engine, config: NodeConfig, forwarder: Forwarder) -> None:
        super().__init__(engine, config)
        self._forwarder = forwarder

    def generic_handler(self) -> grpc.GenericRpcHandler:
        def unary(fn: Callable[[bytes, Any], Awaitable[bytes]]) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=None, response_serializer=None)

        return grpc.method_handlers_generic_handler(
            "etcdserverpb.Maintenance", {
                "Status": unary(self.status), "Alarm": unary(self.alarm),
                "Defragment": unary(self.defragment), "HashKV": unary(self.hash_kv),
                "MoveLeader": unary(self.move_leader)})

    async def _revision(self) -> int:
        return int(await self._engine.read_query(_store_revision, EVENTUAL))

    async def nospace(self) -> bool:
        """Whether this member's disk is full (see the module's docstring)."""
        free = await asyncio.get_running_loop().run_in_executor(
            None, free_bytes, self._config.data_dir)
        return free is not None and free < NOSPACE_FREE_BYTES

    async def alarms(self) -> list[rpc_pb2.AlarmMember]:
        if await self.nospace():
            return [rpc_pb2.AlarmMember(memberID=self._config.node_id,
                                        alarm=rpc_pb2.NOSPACE)]
        return []

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
            if not st.leader_id:
                resp.errors.append(NO_LEADER)
            for a in await self.alarms():  # as etcd words them (the message's text form)
                name = rpc_pb2.AlarmType.Name(a.alarm)
                resp.errors.append(f"memberID:{a.memberID} alarm:{name} ")
            self.stamp(resp.header, await self._revision())
            return bytes(resp.SerializeToString())
        except Exception as exc:
            await self.fail(context, exc)

    async def alarm(self, request: bytes, context: Any) -> bytes:
        """GET: the members' alarms (of the type asked, NONE: all); DEACTIVATE: the alarm
        named if it is active (it clears itself once space is back); ACTIVATE: refused."""
        try:
            check_message_size(len(request), self._config)
            req = decode(rpc_pb2.AlarmRequest, request)
            if req.action == rpc_pb2.AlarmRequest.ACTIVATE and req.alarm != rpc_pb2.NONE:
                raise KvError("FAILED_PRECONDITION",
                              "dengine raises its alarms itself (NOSPACE while a member's "
                              "disk is full); they cannot be activated by request")
            resp = rpc_pb2.AlarmResponse()
            others = [] if forwarded(context) else [
                m for m in self._engine.members()
                if m.id != self._config.node_id and m.client_address]
            if req.action == rpc_pb2.AlarmRequest.DEACTIVATE:
                owner = next((m for m in others if m.id == req.memberID), None)
                if owner is not None:
                    answer, _ = await self._forwarder.call(
                        owner.client_address, "/etcdserverpb.Maintenance/Alarm", request,
                        timeout_of(context))
                    resp.alarms.extend(rpc_pb2.AlarmResponse.FromString(answer).alarms)
            elif req.action == rpc_pb2.AlarmRequest.GET:
                resp.alarms.extend(await self._others_alarms(others, request, context))
            if req.action != rpc_pb2.AlarmRequest.ACTIVATE:
                for a in await self.alarms():
                    if req.action == rpc_pb2.AlarmRequest.GET:
                        wanted = req.alarm in (rpc_pb2.NONE, a.alarm)
                    else:
                        wanted = (req.memberID, req.alarm) == (a.memberID, a.alarm)
                    if wanted:
                        resp.alarms.append(a)
            resp.alarms.sort(key=lambda a: (a.memberID, a.alarm))
            self.stamp(resp.header)
            return bytes(resp.SerializeToString())
        except Exception as exc:
            await self.fail(context, exc)


    async def defragment(self, request: bytes, context: Any) -> bytes:
        """Nothing to do: a member's files are never rewritten in place (checkpoints and
        snapshots are written whole, the logs cut behind them), so they hold no free
        pages to give back as etcd's bbolt file does. Answered, so runbooks that
        defragment after a compaction work."""
        try:
            check_message_size(len(request), self._config)
            decode(rpc_pb2.DefragmentRequest, request)
            await self.gate.maintenance_admin(context)
            resp = rpc_pb2.DefragmentResponse()
            self.stamp(resp.header, await self._revision())
            return bytes(resp.SerializeToString())
        except Exception as exc:
            await self.fail(context, exc)

    async def hash_kv(self, request: bytes, context: Any) -> bytes:
        """etcd's HashKV of this member's applied state (`dengine.kv.hashkv`)."""
        try:
            check_message_size(len(request), self._config)
            req = decode(rpc_pb2.HashKVRequest, request)
            await self.gate.maintenance_admin(context)
            value, current, compact = await self._engine.hash_kv(req.revision)
            resp = rpc_pb2.HashKVResponse(hash=value, compact_revision=compact)
            self.stamp(resp.header, current)
            return bytes(resp.SerializeToString())
        except Exception as exc:
            await self.fail(context, exc)

    async def move_leader(self, request: bytes, context: Any) -> bytes:
        """etcd's MoveLeader, asked of the leader (etcdctl finds it): leadership handed to
        voter `targetID`, answered once it leads. Any user may, as in etcd 3.4."""
        try:
            check_message_size(len(request), self._config)
            req = decode(rpc_pb2.MoveLeaderRequest, request)  # (no auth check in etcd 3.4)
            try:
                await self._engine.move_leader(req.targetID, timeout=timeout_of(context))
            except NotLeader:
                raise KvError("FAILED_PRECONDITION", NOT_LEADER) from None
            except InvalidRequest:
                raise KvError("FAILED_PRECONDITION", BAD_TRANSFEREE) from None
            except Timeout:
                raise KvError("UNAVAILABLE", TRANSFER_TIMED_OUT) from None
            resp = rpc_pb2.MoveLeaderResponse()
            self.stamp(resp.header, await self._revision())
            return bytes(resp.SerializeToString())
        except Exception as exc:
            await self.fail(context, exc)

    async def _others_alarms(self, members: list[Any], request: bytes,
                             context: Any) -> list[rpc_pb2.AlarmMember]:
        """The alarms of the other `members` (those that answer within ALARM_ASK_S)."""
        remaining = timeout_of(context)
        timeout = ALARM_ASK_S if remaining is None else min(ALARM_ASK_S, remaining)

        async def ask(address: str) -> list[rpc_pb2.AlarmMember]:
            try:
                answer, _ = await self._forwarder.call(
                    address, "/etcdserverpb.Maintenance/Alarm", request, timeout)
            except DengineError:
                return []  # not reachable now: its alarms are not known
            return list(rpc_pb2.AlarmResponse.FromString(answer).alarms)

        out: list[rpc_pb2.AlarmMember] = []
        for alarms in await asyncio.gather(*(ask(m.client_address) for m in members)):
            out.extend(alarms)
        return out


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

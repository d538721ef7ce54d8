"""etcd's `etcdserverpb.Lease` service on a node: LeaseGrant, LeaseRevoke, LeaseKeepAlive
(a bidirectional stream), LeaseTimeToLive, LeaseLeases (docs/etcd-model.md, "Leases").

Grants and revokes are log entries proposed by the leader; keep-alives and remaining
TTLs are the leader's lessor's. A follower forwards them to the leader, once (etcd's
clients do not follow redirects), over its native client port (`KvForwarder.lease`, and
`KvForwarder.keepalive`: the keep-alives of all the streams of one loop turn in one call;
the follower keeps the client's stream): a Python gRPC call per grant or keep-alive cost
the follower and the leader several times the grant itself. With auth on or a token,
over the leader's gRPC client port instead, the client's identity sent on (its token,
or its certificate's user: `Gate.forward_identity`): grants, revokes and
TimeToLive as the same etcd method, a keep-alive as one unary call of
`/dengine.LeaseForward/KeepAlive`. LeaseLeases is answered by any member after a
ReadIndex round.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from dengine.config import NodeConfig
from dengine.errors import NotLeader
from dengine.node.engine import DEFAULT_TIMEOUT, Engine
from dengine.proto.etcd import rpc_pb2
from dengine.server.etcd.checks import decode
from dengine.server.etcd.forward import Forwarder, KvForwarder, forwarded
from dengine.server.etcd.gate import auth_enabled, token_of
from dengine.server.etcd.kv import EtcdBase, timeout_of

SERVICE = "etcdserverpb.Lease"
FORWARD_SERVICE = "dengine.LeaseForward"
KEEPALIVE_FORWARD = f"/{FORWARD_SERVICE}/KeepAlive"
KEEPALIVE_TIMEOUT_S = 5.0  # one forwarded or waiting keep-alive (a stream has no deadline)
KEEPALIVE_PIPELINE = 1024  # keep-alives of one stream renewing at once


class LeaseService(EtcdBase):
    """Handlers of `etcdserverpb.Lease` over an Engine."""

    def __init__(self, engine: Engine, config: NodeConfig, forwarder: Forwarder,
                 native: KvForwarder) -> None:
        super().__init__(engine, config)
        self._forwarder = forwarder
        self._native = native

    def generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        def unary(fn: Callable[[bytes, Any], Awaitable[bytes]]) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=None, response_serializer=None)

        return [
            grpc.method_handlers_generic_handler(SERVICE, {
                "LeaseGrant": unary(self._leader_call(
                    "LeaseGrant", rpc_pb2.LeaseGrantRequest, rpc_pb2.LeaseGrantResponse,
                    Engine.etcd_lease_grant)),
                "LeaseRevoke": unary(self._leader_call(
                    "LeaseRevoke", rpc_pb2.LeaseRevokeRequest, rpc_pb2.LeaseRevokeResponse,
                    Engine.etcd_lease_revoke)),
                "LeaseKeepAlive": grpc.stream_stream_rpc_method_handler(
                    self.keep_alive, request_deserializer=None, response_serializer=None),
                "LeaseTimeToLive": unary(self._leader_call(
                    "LeaseTimeToLive", rpc_pb2.LeaseTimeToLiveRequest,
                    rpc_pb2.LeaseTimeToLiveResponse, Engine.etcd_lease_time_to_live)),
                "LeaseLeases": unary(self.leases),
            }),
            grpc.method_handlers_generic_handler(FORWARD_SERVICE, {
                "KeepAlive": unary(self.keep_alive_once),
            }),
        ]

    async def _forward(self, e: NotLeader, method: str, request: bytes, context: Any,
                       timeout: float | None) -> bytes:
        """The leader's answer to a request this follower could not serve (once)."""
        address = self._leader_of(e, context)
        if self._native_ok(context):
            return await self._native.lease(address, method.rsplit("/", 1)[1], request,
                                            timeout or DEFAULT_TIMEOUT)
        answer, _ = await self._forwarder.call(
            address, method, request, timeout,
            identity=await self.gate.forward_identity(context))
        return answer

    def _leader_of(self, e: NotLeader, context: Any) -> str:
        """The leader's client address to forward to; `e` again if there is none or the
        request was forwarded to this member already."""
        address = e.leader_address or self._engine.leader_address()
        if not e.leader_id or not address or forwarded(context):
            raise e
        return address

    def _native_ok(self, context: Any) -> bool:
        """Whether the request may go over the native port, which acts for no user: no
        token, and auth off (else the gRPC path names the client's user to the leader)."""
        return token_of(context) is None and not self._engine.query_local(auth_enabled)

    async def _serve(self, method: str, request: bytes, context: Any,
                     run: Callable[[float | None], Awaitable[Any]],
                     response: Any) -> bytes:
        timeout = timeout_of(context)
        try:
            try:
                resp = await run(timeout)
            except NotLeader as e:
                resp = response.FromString(await self._forward(
                    e, f"/{SERVICE}/{method}", request, context, timeout))
            self.stamp(resp.header)
            return bytes(resp.SerializeToString())
        except Exception as exc:
            await self.fail(context, exc)

    def _leader_call(self, method: str, request_type: Any, response_type: Any,
                     call: Callable[..., Awaitable[Any]]) -> Callable[[bytes, Any],
                                                              Awaitable[bytes]]:
        """A handler of `method`: `call(engine, request, timeout=)` here, or forwarded to
        the leader once when this member is not it."""
        async def handler(request: bytes, context: Any) -> bytes:
            async def run(timeout: float | None) -> Any:
                req = decode(request_type, request)
                if method == "LeaseRevoke":  # etcd: write on every key of the lease,
                    # checked again as the revoke applies
                    stamp = await self.gate.lease_keys(context, req.ID)
                    return await call(self._engine, req, timeout=timeout, auth_info=stamp)
                await self.gate.check(context)  # a valid token, if auth is on
                return await call(self._engine, req, timeout=timeout)
            return await self._serve(method, request, context, run, response_type)
        handler.__name__ = method
        return handler

    async def leases(self, request: bytes, context: Any) -> bytes:
        try:
            decode(rpc_pb2.LeaseLeasesRequest, request)
            await self.gate.check(context)
            resp = await self._engine.etcd_lease_leases(timeout=timeout_of(context))
            self.stamp(resp.header)
            return bytes(resp.SerializeToString())
        except Exception as exc:
            await self.fail(context, exc)

    async def _renew(self, request: bytes, context: Any) -> bytes:
        """One keep-alive: at the leader, or forwarded to it by a follower."""
        req = decode(rpc_pb2.LeaseKeepAliveRequest, request)
        try:
            resp = await self._engine.etcd_lease_keepalive(req, timeout=KEEPALIVE_TIMEOUT_S)
        except NotLeader as e:
            address = self._leader_of(e, context)
            if self._native_ok(context):
                ttl = await self._native.keepalive(address, req.ID, KEEPALIVE_TIMEOUT_S)
                resp = rpc_pb2.LeaseKeepAliveResponse(ID=req.ID, TTL=ttl)
            else:
                answer, _ = await self._forwarder.call(
                    address, KEEPALIVE_FORWARD, request, KEEPALIVE_TIMEOUT_S,
                    identity=await self.gate.forward_identity(context))
                resp = rpc_pb2.LeaseKeepAliveResponse.FromString(answer)
        self.stamp(resp.header)
        return bytes(resp.SerializeToString())

    async def keep_alive_once(self, request: bytes, context: Any) -> bytes:
        """`/dengine.LeaseForward/KeepAlive`: a follower's forwarded keep-alive."""
        try:
            return await self._renew(request, context)
        except Exception as exc:
            await self.fail(context, exc)

    async def keep_alive(self, requests: AsyncIterator[bytes], context: Any
                         ) -> AsyncIterator[bytes]:
        """etcd's LeaseKeepAlive stream: one answer per request, in order (TTL 0: the
        lease is unknown). An error ends the stream with etcd's status (clients open a
        new one). Requests are read ahead (up to KEEPALIVE_PIPELINE renewing at once):
        each keep-alive waits for a ReadIndex round, and the keep-alives a client sends
        together (Go's client sends every lease due at once) share one."""
        renewing: asyncio.Queue[asyncio.Task[bytes] | None] = asyncio.Queue(
            KEEPALIVE_PIPELINE)

        async def read_ahead() -> None:
            try:
                async for request in requests:
                    await renewing.put(asyncio.ensure_future(self._renew(request, context)))
            finally:
                await renewing.put(None)

        reader = asyncio.ensure_future(read_ahead())
        try:
            while (task := await renewing.get()) is not None:
                yield await task
            await reader  # a failed read ends the stream with its error
        except Exception as exc:
            await self.fail(context, exc)
        finally:
            reader.cancel()
            while not renewing.empty():
                if (task := renewing.get_nowait()) is not None:
                    _drop(task)


def _drop(task: asyncio.Task[bytes]) -> None:
    """A keep-alive whose answer will not be sent: cancelled, or its error taken."""
    if not task.done():
        task.cancel()
    elif not task.cancelled():
        task.exception()

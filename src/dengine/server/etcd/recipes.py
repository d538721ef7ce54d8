"""etcd's `v3lockpb.Lock` and `v3electionpb.Election` services on a node: the same
recipes as the Python API (`dengine.recipes`), bound to the lease the caller gives.

They run on a `dengine.Client` of this node's own client address (made on first use), so
that the writes reach the leader from any member (the client follows the leader, as a
follower forwards etcd's KV writes) and the waits are watches that resume across
failures. A Lock or Campaign call that is cancelled (the caller gave up or went away)
deletes the key it made, as etcd's server does; Lock with a lease already holding the
lock answers at once (etcd: locking twice with one lease is one acquisition).

Errors are etcd's: a lease that does not exist, "etcdserver: requested lease not found";
Proclaim/Resign without a leader key, `"leader" field must be provided`; Proclaim by a
key that no longer leads, "election: not leader"; Leader when nobody leads,
"election: no leader" (gRPC UNKNOWN, as etcd 3.4 answers them).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from dengine.config import NodeConfig
from dengine.errors import DengineError
from dengine.kv import EVENTUAL
from dengine.node.engine import Engine
from dengine.proto.etcd import kv_pb2, v3election_pb2, v3lock_pb2
from dengine.recipes import NoElectionLeader
from dengine.recipes import election as recipe
from dengine.recipes.common import holder_key, prefix_of
from dengine.recipes.lock import lock_with_lease
from dengine.server.etcd.checks import decode
from dengine.server.etcd.gate import FORWARDED_METADATA, TOKEN_METADATA, Metadata
from dengine.server.etcd.kv import EtcdBase

LOCK_SERVICE = "v3lockpb.Lock"
ELECTION_SERVICE = "v3electionpb.Election"
MAX_TOKEN_CLIENTS = 64  # clients kept for the callers' auth tokens (one connection each)


class MissingLeaderKey(DengineError):
    """etcd's ErrMissingLeaderKey."""

    code = "INVALID_REQUEST"

    def __init__(self) -> None:
        super().__init__('"leader" field must be provided')


def _store_revision(store: Any) -> int:
    return int(store.revision)


def _kv_pb(kv: Any) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(key=kv.key, value=kv.value, create_revision=kv.create_revision,
                           mod_revision=kv.mod_revision, version=kv.version, lease=kv.lease)


class RecipeServices(EtcdBase):
    """Handlers of `v3lockpb.Lock` and `v3electionpb.Election` over a Client of this node."""

    def __init__(self, engine: Engine, config: NodeConfig) -> None:
        super().__init__(engine, config)
        # the Client of each caller (its token, or its certificate's user: Gate.identity;
        # () for none), the latest used last
        self._clients: OrderedDict[Metadata, Any] = OrderedDict()
        self._busy: dict[Metadata, int] = {}  # calls in progress, by caller
        self._closing: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def _using(self, context: Any) -> AsyncIterator[Any]:
        """The client acting for the caller: with etcd's auth, its requests carry the
        caller's token, or name its client certificate's user as a member does (over
        gRPC, this node's certificate), checked as the caller's own would be. Past
        MAX_TOKEN_CLIENTS, the longest unused client that serves no call is closed."""
        who = tuple(await self.gate.forward_identity(context))
        client = self._clients.get(who)
        if client is None:
            from dengine.client import Client  # the server may use the client (not back)

            idle = [t for t in self._clients if not self._busy.get(t)]
            for old_token in idle[:max(0, len(self._clients) + 1 - MAX_TOKEN_CLIENTS)]:
                task = asyncio.ensure_future(self._clients.pop(old_token).close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            # over TLS when the client port has it (this node's certificate as client's)
            token = dict(who).get(TOKEN_METADATA)
            member = token is None and bool(who)  # acting for a certificate's user
            client = self._clients[who] = Client(
                [self._config.listen_client], timeout=10.0, tls=self._config.forward_tls(),
                token=token, transport="grpc" if member else "auto",
                metadata=((FORWARDED_METADATA, "1"), *who) if member else ())
        self._clients.move_to_end(who)
        self._busy[who] = self._busy.get(who, 0) + 1
        try:
            yield client
        finally:
            self._busy[who] -= 1
            if not self._busy[who]:
                del self._busy[who]

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), OrderedDict()
        for client in clients:
            await client.close()
        await asyncio.gather(*self._closing, return_exceptions=True)

    def generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        def unary(fn: Callable[[bytes, Any], Awaitable[bytes]]) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=None, response_serializer=None)

        return [
            grpc.method_handlers_generic_handler(LOCK_SERVICE, {
                "Lock": unary(self.lock), "Unlock": unary(self.unlock)}),
            grpc.method_handlers_generic_handler(ELECTION_SERVICE, {
                "Campaign": unary(self.campaign), "Proclaim": unary(self.proclaim),
                "Leader": unary(self.leader), "Resign": unary(self.resign),
                "Observe": grpc.unary_stream_rpc_method_handler(
                    self.observe, request_deserializer=None, response_serializer=None),
            }),
        ]

    async def _header(self, header: Any) -> None:
        self.stamp(header, int(await self._engine.read_query(_store_revision, EVENTUAL)))

    async def _cancellable(self, client: Any, key: bytes, work: Awaitable[Any]) -> Any:
        """`work`; if cancelled (the caller went away), delete `key` before going."""
        try:
            return await work
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(client.delete_range(key, timeout=5.0))
            raise

    # ---- v3lockpb.Lock --------------------------------------------------------------------

    async def lock(self, request: bytes, context: Any) -> bytes:
        try:
            req = decode(v3lock_pb2.LockRequest, request)
            async with self._using(context) as client:
                key = holder_key(prefix_of(req.name), req.lease)
                key, _ = await self._cancellable(
                    client, key, lock_with_lease(client, req.name, req.lease))
                resp = v3lock_pb2.LockResponse(key=key)
                await self._header(resp.header)
                return bytes(resp.SerializeToString())
        except Exception as exc:
            await self.fail(context, exc)

    async def unlock(self, request: bytes, context: Any) -> bytes:
        try:
            req = decode(v3lock_pb2.UnlockRequest, request)
            async with self._using(context) as client:
                result = await client.delete_range(req.key)
                resp = v3lock_pb2.UnlockResponse()
                self.stamp(resp.header, result.revision)
                return bytes(resp.SerializeToString())
        except Exception as exc:
            await self.fail(context, exc)

    # ---- v3electionpb.Election ------------------------------------------------------------

    async def campaign(self, request: bytes, context: Any) -> bytes:
        try:
            req = decode(v3election_pb2.CampaignRequest, request)
            async with self._using(context) as client:
                key = holder_key(prefix_of(req.name), req.lease)
                key, revision = await self._cancellable(client, key, recipe.campaign_with_lease(
                    client, req.name, req.lease, req.value))
                resp = v3election_pb2.CampaignResponse(leader=v3election_pb2.LeaderKey(
                    name=req.name, key=key, rev=revision, lease=req.lease))
                await self._header(resp.header)
                return bytes(resp.SerializeToString())
        except Exception as exc:
            await self.fail(context, exc)

    async def proclaim(self, request: bytes, context: Any) -> bytes:
        try:
            req = decode(v3election_pb2.ProclaimRequest, request)
            async with self._using(context) as client:
                if not req.HasField("leader"):
                    raise MissingLeaderKey()
                leader = req.leader
                await recipe.proclaim(client, leader.key, leader.rev, leader.lease,
                                      req.value)
                resp = v3election_pb2.ProclaimResponse()
                await self._header(resp.header)
                return bytes(resp.SerializeToString())
        except Exception as exc:
            await self.fail(context, exc)

    async def resign(self, request: bytes, context: Any) -> bytes:
        try:
            req = decode(v3election_pb2.ResignRequest, request)
            async with self._using(context) as client:
                if not req.HasField("leader"):
                    raise MissingLeaderKey()
                await recipe.resign(client, req.leader.key, req.leader.rev)
                resp = v3election_pb2.ResignResponse()
                await self._header(resp.header)
                return bytes(resp.SerializeToString())
        except Exception as exc:
            await self.fail(context, exc)

    async def leader(self, request: bytes, context: Any) -> bytes:
        try:
            req = decode(v3election_pb2.LeaderRequest, request)
            async with self._using(context) as client:
                kv = await recipe.leader(client, req.name)
                if kv is None:
                    raise NoElectionLeader()
                resp = v3election_pb2.LeaderResponse(kv=_kv_pb(kv))
                await self._header(resp.header)
                return bytes(resp.SerializeToString())
        except Exception as exc:
            await self.fail(context, exc)

    async def observe(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        try:
            req = decode(v3election_pb2.LeaderRequest, request)
            async with self._using(context) as client:
                async for kv in recipe.observe(client, req.name):
                    resp = v3election_pb2.LeaderResponse(kv=_kv_pb(kv))
                    await self._header(resp.header)
                    yield bytes(resp.SerializeToString())
        except Exception as exc:
            await self.fail(context, exc)


__all__ = ["ELECTION_SERVICE", "LOCK_SERVICE", "RecipeServices"]

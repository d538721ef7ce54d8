"""etcd's leases on the `Client` (docs/etcd-model.md, "Leases"): a mixin of the lease
calls, over the native `Lease` and `LeaseKeepAlive` methods (gRPC: the same methods of
`dengine.RaftClientService`), sent to the leader."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf.message import Message as ProtoMessage

from dengine.api import LeaseGrant, LeaseInfo
from dengine.client.batcher import Batcher, Item
from dengine.errors import DengineError, LeaseNotFound
from dengine.leases import KeptLease, check_lease_id, check_ttl
from dengine.proto.client_pb2 import (
    LeaseKeepAliveBatchRequest,
    LeaseKeepAliveBatchResponse,
    LeaseRequest,
    LeaseResponse,
)
from dengine.proto.etcd import rpc_pb2

if TYPE_CHECKING:  # pragma: no cover
    from dengine.client.routing import Router

P = TypeVar("P")
T = TypeVar("T")


class ClientLeases:
    """The lease calls of `dengine.client.Client` (it provides `_router`, `_deadline`,
    `_submit` and `_keepalives`, a Batcher of `_send_keepalives`)."""

    if TYPE_CHECKING:  # pragma: no cover
        _router: Router
        _keepalives: Batcher[list[int], list[int]]

        def _deadline(self, timeout: float | None) -> float: ...

        async def _submit(self, batcher: Batcher[P, T], payload: P, size: int,
                          timeout: float | None) -> T: ...

    async def lease_grant(self, ttl: int, *, lease_id: int = 0,
                          timeout: float | None = None) -> LeaseGrant:
        """Grant a lease of `ttl` seconds (raised to the cluster's minimum; the result says
        the TTL granted), id `lease_id` or (0) one chosen by the leader."""
        request = rpc_pb2.LeaseGrantRequest(TTL=check_ttl(ttl), ID=check_lease_id(lease_id))
        resp = await self._lease("grant", request, rpc_pb2.LeaseGrantResponse, timeout,
                                 write=True)
        return LeaseGrant(resp.ID, resp.TTL)

    async def lease_revoke(self, lease_id: int, *, timeout: float | None = None) -> None:
        """Revoke a lease: its keys are deleted in one revision. LeaseNotFound if unknown."""
        request = rpc_pb2.LeaseRevokeRequest(ID=check_lease_id(lease_id))
        await self._lease("revoke", request, rpc_pb2.LeaseRevokeResponse, timeout, write=True)

    async def lease_keepalive_once(self, lease_id: int, *,
                                   timeout: float | None = None) -> int:
        """Renew a lease once at the leader: its TTL starts again; returns the TTL.
        LeaseNotFound if the lease is gone (expired or revoked)."""
        [ttl] = await self._submit(self._keepalives, [check_lease_id(lease_id)], 10, timeout)
        if ttl <= 0:
            raise LeaseNotFound()
        return ttl

    async def lease_time_to_live(self, lease_id: int, *, keys: bool = False,
                                 timeout: float | None = None) -> LeaseInfo:
        """The seconds left of a lease (`ttl` -1: unknown), its granted TTL and (with
        `keys`) the keys attached to it, as the leader sees it."""
        request = rpc_pb2.LeaseTimeToLiveRequest(ID=check_lease_id(lease_id), keys=keys)
        resp = await self._lease("time_to_live", request, rpc_pb2.LeaseTimeToLiveResponse,
                                 timeout, write=False)
        return LeaseInfo(resp.ID, resp.TTL, resp.grantedTTL, list(resp.keys))

    async def leases(self, *, timeout: float | None = None) -> list[int]:
        """The ids of every lease."""
        resp = await self._lease("leases", rpc_pb2.LeaseLeasesRequest(),
                                 rpc_pb2.LeaseLeasesResponse, timeout, write=False)
        return [lease.ID for lease in resp.leases]

    def lease(self, ttl: int, *, on_lost: Callable[[], Any] | None = None) -> KeptLease:
        """`async with client.lease(ttl) as lease:` a lease granted on entry, kept alive
        in the background every ttl/3 (across reconnects and leader changes), revoked on
        exit; `lease.lost` is set (and `on_lost` called) if it could not be kept alive."""
        return KeptLease(self, check_ttl(ttl), on_lost=on_lost)

    async def _lease(self, field: str, request: ProtoMessage, response_cls: type[P],
                     timeout: float | None, *, write: bool) -> P:
        resp = await self._router.call_leader(
            "Lease", LeaseRequest(**{field: request.SerializeToString()}), LeaseResponse,
            self._deadline(timeout), write=write)
        return response_cls.FromString(resp.response)  # type: ignore[attr-defined]

    async def _send_keepalives(self, batch: list[Item[list[int], list[int]]]) -> None:
        ids = [i for item in batch for i in item.payload]
        deadline = max(item.deadline for item in batch)
        resp = await self._router.call_leader(
            "LeaseKeepAlive", LeaseKeepAliveBatchRequest(ids=ids),
            LeaseKeepAliveBatchResponse, deadline, write=False)
        if len(resp.ttls) != len(ids):
            raise DengineError(f"server answered {len(resp.ttls)} TTLs for {len(ids)} leases")
        pos = 0
        for item in batch:
            n = len(item.payload)
            if not item.future.done():
                item.future.set_result(list(resp.ttls[pos:pos + n]))
            pos += n

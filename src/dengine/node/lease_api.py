"""etcd's leases in the embedded API: the `Engine`'s lease calls (dengine.api.ClientApi;
docs/etcd-model.md, "Leases").

Two levels: the `etcd_lease_*` calls take and return etcd's messages (the gRPC service
and the native server answer with them), the Python calls (`lease_grant`, ...) wrap them
in `dengine.api` results. Grants and revokes are log entries (proposed by the leader:
NotLeader on a follower); keep-alives and remaining TTLs are the leader's lessor's
(`dengine.node.lessor`); the lease list is read from the store like a range.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from dengine.api import LeaseGrant, LeaseInfo
from dengine.errors import KvError, LeaseNotFound
from dengine.kv import etcd_check
from dengine.kv.etcd_check import LEASE_EXIST
from dengine.leases import KeptLease, check_lease_id, check_ttl
from dengine.node.lessor import Lessor
from dengine.proto import WriteCommand
from dengine.proto.etcd import rpc_pb2 as pb

if TYPE_CHECKING:  # pragma: no cover
    from dengine.kv import Limits

KV_LEASE_GRANT = WriteCommand.LEASE_GRANT_FIELD_NUMBER
KV_LEASE_REVOKE = WriteCommand.LEASE_REVOKE_FIELD_NUMBER
_ID_ATTEMPTS = 3  # fresh random ids tried when a chosen one exists already


class EtcdLeases:
    """The lease calls of `dengine.node.engine.Engine` (a mixin: it provides `lessor`,
    `min_lease_ttl`, `kv_request`, `read_query`, `_with_header` and `_timeout`)."""

    if TYPE_CHECKING:  # pragma: no cover
        lessor: Lessor
        min_lease_ttl: int
        _limits: Limits

        async def kv_request(self, field: int, request: bytes, *,
                             timeout: float | None = None, auth_info: bytes = b"") -> Any: ...

        async def read_query(self, fn: Callable[[Any], Any], consistency: Any = ..., *,
                             timeout: float | None = None) -> Any: ...

        def _with_header(self, response: Any) -> Any: ...

        @staticmethod
        def _timeout(timeout: float | None) -> float: ...

    # -- etcd's messages

    async def etcd_lease_grant(self, req: pb.LeaseGrantRequest, *,
                               timeout: float | None = None) -> pb.LeaseGrantResponse:
        """etcd's LeaseGrant: the TTL raised to the minimum, the ID chosen here when 0
        (random, positive), then proposed; raises KvError ("lease already exists", "too
        large lease TTL") or NotLeader on a follower."""
        etcd_check.check_lease_grant(req)
        proposal = pb.LeaseGrantRequest(TTL=max(req.TTL, self.min_lease_ttl), ID=req.ID)
        for attempt in range(_ID_ATTEMPTS):
            if not req.ID:
                proposal.ID = random.getrandbits(63) or 1
            result = await self.kv_request(KV_LEASE_GRANT, proposal.SerializeToString(),
                                           timeout=timeout)
            response = result.response
            if isinstance(response, KvError):
                if req.ID or response.message != LEASE_EXIST or attempt == _ID_ATTEMPTS - 1:
                    raise response
                continue
            return self._with_header(response)
        raise AssertionError("unreachable")

    async def etcd_lease_revoke(self, req: pb.LeaseRevokeRequest, *,
                                timeout: float | None = None,
                                auth_info: bytes = b"") -> pb.LeaseRevokeResponse:
        """etcd's LeaseRevoke (its keys deleted in one revision); LeaseNotFound.
        `auth_info`: as for `kv_request`."""
        result = await self.kv_request(KV_LEASE_REVOKE, req.SerializeToString(),
                                       timeout=timeout, auth_info=auth_info)
        if isinstance(result.response, KvError):
            raise result.response
        return self._with_header(result.response)

    async def etcd_lease_keepalive(self, req: pb.LeaseKeepAliveRequest, *,
                                   timeout: float | None = None) -> pb.LeaseKeepAliveResponse:
        """etcd's keep-alive at the leader, once its leadership is confirmed: TTL = the
        granted TTL, 0 for an unknown or expired lease (not an error, as etcd). NotLeader
        on a follower."""
        ttl = await self.lessor.keep_alive(req.ID, self._timeout(timeout))
        resp = pb.LeaseKeepAliveResponse(ID=req.ID, TTL=ttl)
        return self._with_header(resp)

    async def lease_keepalive_ttls(self, lease_ids: Sequence[int], *,
                                   timeout: float | None = None) -> list[int]:
        """Keep-alives of many leases at the leader, under one confirmation of its
        leadership: one TTL each (0: unknown or expired). NotLeader on a follower."""
        return await self.lessor.keep_alive_many(lease_ids, self._timeout(timeout))

    async def etcd_lease_time_to_live(
        self, req: pb.LeaseTimeToLiveRequest, *, timeout: float | None = None,
    ) -> pb.LeaseTimeToLiveResponse:
        """etcd's LeaseTimeToLive from the leader's view: TTL -1 for an unknown lease."""
        seconds = self._timeout(timeout)
        await self.lessor.wait_primary(seconds)
        info, revision = await self.read_query(
            lambda store: (store.leases.info(req.ID, req.keys), store.revision), timeout=seconds)
        resp = pb.LeaseTimeToLiveResponse(ID=req.ID, TTL=-1)
        resp.header.revision = revision
        if info is not None:
            remaining = self.lessor.remaining(req.ID)
            if remaining >= 0:
                resp.TTL = remaining
                resp.grantedTTL = info[0]
                resp.keys.extend(info[1])
        return self._with_header(resp)

    async def etcd_lease_leases(self, req: pb.LeaseLeasesRequest | None = None, *,
                                timeout: float | None = None) -> pb.LeaseLeasesResponse:
        """etcd's LeaseLeases: every lease of the store, by id (a linearizable read)."""
        ids, revision = await self.read_query(
            lambda store: (sorted(store.leases.ids()), store.revision), timeout=timeout)
        resp = pb.LeaseLeasesResponse(leases=[pb.LeaseStatus(ID=i) for i in ids])
        resp.header.revision = revision
        return self._with_header(resp)

    # -- the Python API

    async def lease_grant(self, ttl: int, *, lease_id: int = 0,
                          timeout: float | None = None) -> LeaseGrant:
        """Grant a lease of `ttl` seconds (raised to the cluster's minimum; the result says
        the TTL granted), id `lease_id` or (0) one chosen by the leader."""
        resp = await self.etcd_lease_grant(
            pb.LeaseGrantRequest(TTL=check_ttl(ttl), ID=check_lease_id(lease_id)),
            timeout=timeout)
        return LeaseGrant(resp.ID, resp.TTL)

    async def lease_revoke(self, lease_id: int, *, timeout: float | None = None) -> None:
        """Revoke a lease: its keys are deleted in one revision. LeaseNotFound if unknown."""
        await self.etcd_lease_revoke(pb.LeaseRevokeRequest(ID=check_lease_id(lease_id)),
                                     timeout=timeout)

    async def lease_keepalive_once(self, lease_id: int, *,
                                   timeout: float | None = None) -> int:
        """Renew a lease once: its TTL starts again; returns the TTL. LeaseNotFound if the
        lease is gone (expired or revoked)."""
        resp = await self.etcd_lease_keepalive(
            pb.LeaseKeepAliveRequest(ID=check_lease_id(lease_id)), timeout=timeout)
        if resp.TTL <= 0:
            raise LeaseNotFound()
        return int(resp.TTL)

    async def lease_time_to_live(self, lease_id: int, *, keys: bool = False,
                                 timeout: float | None = None) -> LeaseInfo:
        """The seconds left of a lease (`ttl` -1: unknown), its granted TTL and (with
        `keys`) the keys attached to it."""
        resp = await self.etcd_lease_time_to_live(
            pb.LeaseTimeToLiveRequest(ID=check_lease_id(lease_id), keys=keys), timeout=timeout)
        return LeaseInfo(resp.ID, resp.TTL, resp.grantedTTL, list(resp.keys))

    async def leases(self, *, timeout: float | None = None) -> list[int]:
        """The ids of every lease."""
        resp = await self.etcd_lease_leases(timeout=timeout)
        return [lease.ID for lease in resp.leases]

    def lease(self, ttl: int, *, on_lost: Callable[[], Any] | None = None) -> KeptLease:
        """`async with engine.lease(ttl) as lease:` a lease granted on entry, kept alive
        in the background every ttl/3, revoked on exit; `lease.lost` is set (and `on_lost`
        called) if it could not be kept alive."""
        return KeptLease(self, check_ttl(ttl), on_lost=on_lost)

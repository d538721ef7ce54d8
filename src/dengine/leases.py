"""A lease kept alive in the background: `async with api.lease(ttl) as lease:` on the
`Engine` and the `Client` (the synchronous client wraps it).

On entry the lease is granted; a task renews it every ttl/3 (as etcd's clients do), and
retries a failed renewal (connection lost, leader changing: the client's own retries
find the new leader) every half second or so. The holder is told, never silently,
when the lease is lost: `lease.lost` (an asyncio.Event) is set and `on_lost` called
once, when the lease is gone (expired, revoked: the leader answered "not found") or when
no renewal succeeded for a whole TTL since the last one that did (it must then be
presumed expired). On exit the renewals stop and the lease is revoked (its keys go).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

from dengine.api import LeaseGrant
from dengine.errors import DengineError, InvalidRequest, LeaseNotFound

log = logging.getLogger("dengine.lease")

RETRY_S = 0.5  # between failed renewals (at most ttl/6)


def check_ttl(ttl: Any) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise InvalidRequest(f"lease TTL must be an integer number of seconds, got {ttl!r}")
    return ttl


def check_lease_id(lease_id: Any) -> int:
    if isinstance(lease_id, bool) or not isinstance(lease_id, int):
        raise InvalidRequest(f"lease id must be an integer, got {lease_id!r}")
    if not -(1 << 63) <= lease_id < 1 << 63:
        raise InvalidRequest(f"lease id must fit in 64 bits, got {lease_id}")
    return lease_id


class LeaseApi(Protocol):
    async def lease_grant(self, ttl: int, *, lease_id: int = 0,
                          timeout: float | None = None) -> LeaseGrant: ...

    async def lease_keepalive_once(self, lease_id: int, *,
                                   timeout: float | None = None) -> int: ...

    async def lease_revoke(self, lease_id: int, *, timeout: float | None = None) -> None: ...


class KeptLease:
    """A lease granted on `__aenter__`, renewed in the background, revoked on exit.

    `id` and `ttl` (the granted TTL) are set once entered; `lost` is set when the lease
    is lost (see the module docstring), `lost_reason` says why; `renewals` counts the
    successful keep-alives.
    """

    def __init__(self, api: LeaseApi, ttl: int, *,
                 on_lost: Callable[[], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._api = api
        self.requested_ttl = ttl
        self.id = 0
        self.ttl = 0
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self.renewals = 0
        self._on_lost = on_lost
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> KeptLease:
        grant = await self._api.lease_grant(self.requested_ttl)
        self.id, self.ttl = grant.id, grant.ttl
        self._task = asyncio.create_task(self._keep(), name=f"dengine-lease-{self.id:x}")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop renewing and revoke the lease (if not lost already)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.id and not self.lost.is_set():
            try:
                await self._api.lease_revoke(self.id, timeout=max(1.0, self.ttl / 3))
            except LeaseNotFound:
                pass
            except DengineError as e:  # it expires by itself within its TTL
                log.warning("lease %x: revoke on exit failed (%s); it expires within %d s",
                            self.id, e.message, self.ttl)

    def _lose(self, reason: str) -> None:
        if self.lost.is_set():
            return
        self.lost_reason = reason
        self.lost.set()
        log.warning("lease %x lost: %s", self.id, reason)
        if self._on_lost is not None:
            try:
                self._on_lost()
            except Exception:
                log.exception("lease %x: on_lost callback failed", self.id)

    async def _keep(self) -> None:
        ttl = max(1, self.ttl)
        interval = ttl / 3
        retry = min(RETRY_S, ttl / 6)
        last_ok = self._clock()  # when the last successful renewal was sent
        failed = False
        while True:
            await asyncio.sleep(retry if failed else interval)
            sent = self._clock()
            left = last_ok + ttl - sent
            if left <= 0:
                self._lose(f"no keep-alive succeeded for its TTL ({ttl} s)")
                return
            try:
                await self._api.lease_keepalive_once(self.id, timeout=max(0.1, left))
            except LeaseNotFound:
                self._lose("expired or revoked (the leader does not know it)")
                return
            except DengineError as e:
                log.debug("lease %x: keep-alive failed (%s); retrying", self.id, e.message)
                failed = True
                continue
            failed = False
            last_ok = sent
            self.renewals += 1

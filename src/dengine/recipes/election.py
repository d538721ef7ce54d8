"""Leader election: etcd's recipe (`concurrency.Election`, etcdctl's `elect`).

    election = client.election(b"scheduler")
    async with election.campaign(b"host-a:8080", ttl=10) as leadership:
        ...  # the leader; leadership.lost is set if its lease ends
    leader = await election.leader()             # the leader's KeyValue (value: proclaimed)
    async for leader in election.observe(): ...  # the leader at each change

Each candidate creates `name/<lease id in hex>` (value: what it proclaims) bound to its
lease; the key created first leads, the others wait in create-revision order (each for
the deletion of the key just before its own). `proclaim` changes the leader's value (only
while its key still leads), `resign` deletes it (the next candidate leads at once). The
leader key's create revision (`leadership.revision`) is a fencing token, as a lock's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any

from dengine.api import Key, KeyValue
from dengine.errors import Compacted, InvalidRequest, Timeout
from dengine.kv.ops import Compare, Op, to_bytes
from dengine.recipes.common import (
    Holding,
    NoElectionLeader,
    NotElectionLeader,
    SessionExpired,
    claim,
    prefix_of,
    wait_deletes,
)

_PUT = 0  # a watch event's type: etcd's mvccpb.Event.PUT


async def campaign_with_lease(api: Any, name: Key, lease_id: int, value: Key
                              ) -> tuple[bytes, int]:
    """Lead election `name` for lease `lease_id` (waits until it does), proclaiming
    `value`: the leader key and its create revision. Campaigning again with the same lease
    proclaims the new value. SessionExpired if the key is gone (the lease ended) by then."""
    prefix = prefix_of(name)
    value = to_bytes(value, "value")
    key, revision, result = await claim(api, prefix, lease_id, value)
    if not result.succeeded:
        kv = result.responses[0].kvs[0]  # type: ignore[union-attr]
        if kv.value != value:
            await proclaim(api, key, revision, lease_id, value)
    await wait_deletes(api, prefix, key, revision)
    return key, revision


async def proclaim(api: Any, key: bytes, revision: int, lease_id: int, value: Key) -> None:
    """Set the leader's value, if `key` (created at `revision`) still leads: else
    NotElectionLeader."""
    result = await api.txn([Compare.create_revision(key) == revision],
                           [Op.put(key, value, lease=lease_id)])
    if not result.succeeded:
        raise NotElectionLeader()


async def resign(api: Any, key: bytes, revision: int) -> None:
    """Give leadership up: delete `key` if it is still the one created at `revision`."""
    await api.txn([Compare.create_revision(key) == revision], [Op.delete(key)])


async def leader(api: Any, name: Key) -> KeyValue | None:
    """The leader's key-value (its value: what it proclaims), None when nobody leads."""
    result = await api.range(prefix_of(name), prefix=True, sort_target="create",
                             sort_order="ascend", limit=1)
    return result.kvs[0] if result.kvs else None


async def observe(api: Any, name: Key) -> AsyncIterator[KeyValue]:
    """The leader's key-value now (once there is one), then at each change: a new leader,
    or a new value proclaimed. Follows through the history by revision (no change is
    skipped, except ones compacted away while not observed)."""
    prefix = prefix_of(name)
    last: tuple[bytes, int] | None = None
    while True:
        result = await api.range(prefix, prefix=True, sort_target="create",
                                 sort_order="ascend", limit=1)
        if result.kvs:
            current: KeyValue | None = result.kvs[0]
        else:
            current = await _first_put(api, prefix, result.revision)
        if current is None:
            continue
        if last != (current.key, current.mod_revision):
            last = (current.key, current.mod_revision)
            yield current
        stream = api.watch(current.key, start_revision=current.mod_revision + 1)
        try:
            async for event in stream:
                if int(event.type) != _PUT:
                    break  # the leader is gone: look for the next one
                last = (event.kv.key, event.kv.mod_revision)
                yield event.kv
        except Compacted:
            pass
        finally:
            await stream.close()


async def _first_put(api: Any, prefix: bytes, revision: int) -> KeyValue | None:
    """The first key put under `prefix` after `revision` (None: look again)."""
    stream = api.watch(prefix, prefix=True, start_revision=revision + 1)
    try:
        async for event in stream:
            if int(event.type) == _PUT:
                kv: KeyValue = event.kv
                return kv
    except Compacted:
        return None
    finally:
        await stream.close()
    return None


class Leadership:
    """One won campaign: `key`, `revision` (its create revision: a fencing token),
    `lease_id`, `value`; `lost` is set (and `on_lost()` called) if its lease ends while
    leading. `proclaim(value)`, `resign()`."""

    def __init__(self, api: Any, name: bytes, holding: Holding) -> None:
        self._api = api
        self.name = name
        self._holding = holding
        self.key = b""
        self.revision = 0
        self.value = b""

    @property
    def lost(self) -> asyncio.Event:
        """Set when the leadership's lease ends (expired, revoked) while leading."""
        return self._holding.lost

    @property
    def lease_id(self) -> int:
        return self._holding.id

    @property
    def leading(self) -> bool:
        return bool(self.revision) and not self.lost.is_set()

    async def proclaim(self, value: Key) -> None:
        if not self.revision:
            raise NotElectionLeader()
        await proclaim(self._api, self.key, self.revision, self.lease_id, value)
        self.value = to_bytes(value, "value")

    async def resign(self) -> None:
        """Give leadership up (revokes the lease: the next candidate leads at once)."""
        key, self.revision = self.key, 0
        await asyncio.shield(self._holding.close(key))


class Campaign:
    """`election.campaign(value, ttl=10, timeout=None)`: an async context manager that
    waits until this candidate leads and gives its `Leadership`; leaving it resigns.
    `timeout`: seconds to wait (None: as long as it takes), then `Timeout`; a candidate
    that times out or is cancelled withdraws (its lease is revoked)."""

    def __init__(self, election: Election, value: Key, ttl: int, timeout: float | None,
                 on_lost: Callable[[], Any] | None) -> None:
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
            raise InvalidRequest(f"ttl must be a whole number of seconds above 0, got {ttl!r}")
        self._election = election
        self._value = to_bytes(value, "value")
        self._ttl = ttl
        self._timeout = timeout
        self._on_lost = on_lost
        self.leadership: Leadership | None = None

    async def start(self) -> Leadership:
        api = self._election.api
        holding = Holding(api, self._ttl, self._on_lost)
        leadership = Leadership(api, self._election.name, holding)
        try:
            async with asyncio.timeout(self._timeout):
                await holding.open()
                waiting = asyncio.ensure_future(campaign_with_lease(
                    api, self._election.name, holding.id, self._value))
                lost = asyncio.ensure_future(holding.lost.wait())
                try:
                    await asyncio.wait([waiting, lost], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    lost.cancel()
                    if not waiting.done():
                        waiting.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await waiting
                if waiting.cancelled():
                    raise SessionExpired(f"election {self._election.name!r}: the lease "
                                         "ended while campaigning")
                leadership.key, leadership.revision = waiting.result()
                leadership.value = self._value
        except TimeoutError:
            await asyncio.shield(holding.close())
            raise Timeout(f"election {self._election.name!r} not won within "
                          f"{self._timeout:g} s (withdrawn)") from None
        except BaseException:
            await asyncio.shield(holding.close())
            raise
        self.leadership = self._election.leadership = leadership
        return leadership

    async def __aenter__(self) -> Leadership:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.leadership is not None:
            await self.leadership.resign()
            if self._election.leadership is self.leadership:
                self._election.leadership = None

    def __await__(self) -> Any:
        """`leadership = await election.campaign(value)`: lead until `resign()`."""
        return self.start().__await__()


class Election:
    """An election of the cluster (`client.election(name)`)."""

    def __init__(self, api: Any, name: Key) -> None:
        self.name = prefix_of(name)[:-1]
        if not self.name:
            raise InvalidRequest("an election needs a name")
        self.api = api
        self.leadership: Leadership | None = None  # the last campaign won here

    def campaign(self, value: Key, ttl: int = 10, *, timeout: float | None = None,
                 on_lost: Callable[[], Any] | None = None) -> Campaign:
        return Campaign(self, value, ttl, timeout, on_lost)

    async def leader(self) -> KeyValue | None:
        """The leader's key-value (value: what it proclaims); None when nobody leads."""
        return await leader(self.api, self.name)

    def observe(self) -> AsyncIterator[KeyValue]:
        """`async for kv in election.observe():` the leader now, then at each change."""
        return observe(self.api, self.name)

    async def proclaim(self, value: Key) -> None:
        """Set the value of the leadership won here (NotElectionLeader otherwise)."""
        if self.leadership is None:
            raise NotElectionLeader()
        await self.leadership.proclaim(value)

    async def resign(self) -> None:
        """Give up the leadership won here (no-op when none)."""
        leadership, self.leadership = self.leadership, None
        if leadership is not None:
            await leadership.resign()

    async def require_leader(self) -> KeyValue:
        """The leader's key-value; NoElectionLeader when nobody leads."""
        kv = await self.leader()
        if kv is None:
            raise NoElectionLeader()
        return kv

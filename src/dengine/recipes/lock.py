"""A distributed lock: etcd's recipe (`concurrency.Mutex`, etcdctl's `lock`), with a
fencing token.

    async with client.lock(b"jobs/nightly", ttl=10) as lock:
        ...  # held; lock.fencing_token orders the holders; lock.lost is set if the lease ends

How it works: each contender takes a lease (kept alive in the background) and creates the
key `name/<lease id in hex>` bound to it. Keys are served in the order of their create
revisions (FIFO): the contender whose key was created first holds the lock; every other
one waits for the deletion of the key created just before its own (one watch each, no
thundering herd), then checks again. Releasing revokes the lease (deleting the key);
a holder that dies or is cut off loses the key when its lease expires, after its TTL.

The fencing token is the create revision of the holder's key: strictly greater for each
holder than for the one before it (revisions only grow, and a key is served only after
every key created before it is gone). A holder that was paused past its TTL may still
believe it holds the lock while another does: guard every write the lock protects with
its token, in the same txn, so that a stale holder's write fails:

    await client.txn([Compare.create_revision(lock.key) == lock.fencing_token],
                     [Op.put(b"protected", b"new value")])

(the key still exists with that create revision only while this holder holds the lock);
or keep the highest token seen next to the protected data and refuse lower ones.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from types import TracebackType
from typing import Any

from dengine.api import Key
from dengine.errors import InvalidRequest, Timeout
from dengine.recipes.common import Holding, SessionExpired, claim, prefix_of, wait_deletes


def acquire_fencing(result: Any, revision: int) -> bool:
    """Whether the first key of a claim's txn (`responses[1]`) is the one created at
    `revision` (the claimer holds the lock at once)."""
    kvs = result.responses[1].kvs
    return bool(kvs) and kvs[0].create_revision == revision


async def lock_with_lease(api: Any, name: Key, lease_id: int) -> tuple[bytes, int]:
    """Hold lock `name` for lease `lease_id` (waits until it does): the holder's key and
    its create revision (the fencing token). Cancelling leaves the key: delete it (or
    revoke the lease) to leave the queue. SessionExpired if the key is gone (the lease
    ended) once it is this holder's turn."""
    prefix = prefix_of(name)
    key, revision, result = await claim(api, prefix, lease_id)
    if acquire_fencing(result, revision):
        return key, revision
    await wait_deletes(api, prefix, key, revision)
    return key, revision


class Lock:
    """A lock of the cluster (`client.lock(name, ttl=10, timeout=None)`); an async context
    manager, or `await lock.acquire()` / `await lock.release()`.

    `timeout`: seconds to wait for the lock (None: as long as it takes), then `Timeout`;
    a waiter that times out or is cancelled leaves the queue (its lease is revoked).
    Held: `key`, `fencing_token` (its create revision), `lease_id`; `lost` (an
    asyncio.Event) is set, and `on_lost()` called, if the lease ends while held (expired:
    the cluster did not hear from this holder for its TTL): the lock may be someone
    else's from then on.
    """

    def __init__(self, api: Any, name: Key, ttl: int = 10, *, timeout: float | None = None,
                 on_lost: Callable[[], Any] | None = None) -> None:
        self.name = prefix_of(name)[:-1]
        if not self.name:
            raise InvalidRequest("a lock needs a name")
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
            raise InvalidRequest(f"ttl must be a whole number of seconds above 0, got {ttl!r}")
        if timeout is not None and not timeout > 0:
            raise InvalidRequest(f"timeout must be above 0, got {timeout!r}")
        self._api = api
        self.ttl = ttl
        self.timeout = timeout
        self._on_lost = on_lost
        self._holding: Holding | None = None
        self.key = b""
        self.fencing_token = 0
        self._lost_event = asyncio.Event()  # until a lease is taken

    @property
    def lost(self) -> asyncio.Event:
        """Set when the lock's lease ends (expired, revoked) while held."""
        return self._holding.lost if self._holding is not None else self._lost_event

    @property
    def lease_id(self) -> int:
        return self._holding.id if self._holding is not None else 0

    @property
    def held(self) -> bool:
        """Acquired, not released, and its lease not known to be lost."""
        return bool(self.fencing_token) and not self.lost.is_set()

    async def acquire(self) -> Lock:
        if self._holding is not None:
            raise InvalidRequest(f"lock {self.name!r} is acquired already by this Lock")
        holding = self._holding = Holding(self._api, self.ttl,
                                          self._lost if self._on_lost else None)
        try:
            async with asyncio.timeout(self.timeout):
                await holding.open()
                waiting = asyncio.ensure_future(
                    lock_with_lease(self._api, self.name, holding.id))
                lost = asyncio.ensure_future(holding.lost.wait())
                try:
                    await asyncio.wait([waiting, lost], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    lost.cancel()
                    if not waiting.done():
                        waiting.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await waiting
                if not waiting.done() or waiting.cancelled():
                    raise SessionExpired(f"lock {self.name!r}: the lease ended while "
                                         "waiting for the lock")
                self.key, self.fencing_token = waiting.result()
        except TimeoutError:
            await self._leave()
            raise Timeout(f"lock {self.name!r} not acquired within {self.timeout:g} s "
                          "(left the queue)") from None
        except BaseException:
            await self._leave()
            raise
        return self

    async def _leave(self) -> None:
        holding, self._holding = self._holding, None
        if holding is not None:
            self._lost_event = holding.lost
            await asyncio.shield(holding.close())

    def _lost(self) -> Any:
        if self._on_lost is not None and self.fencing_token:
            return self._on_lost()
        return None

    async def release(self) -> None:
        """Give the lock up (revokes its lease: the next waiter holds it at once)."""
        holding, self._holding = self._holding, None
        key, self.key, self.fencing_token = self.key, b"", 0
        if holding is not None:
            self._lost_event = asyncio.Event()
            await asyncio.shield(holding.close(key))

    async def __aenter__(self) -> Lock:
        return await self.acquire()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.release()

    def __repr__(self) -> str:
        state = f"held, token {self.fencing_token}" if self.held else "not held"
        return f"<Lock {self.name!r} {state}>"

"""What the lock and the election share: their errors, the lease that backs a holder, and
waiting for keys to be deleted (etcd's `waitDeletes`).

The recipes are written against the one API of dengine (`dengine.api.ClientApi`: txn,
range, watch, lease), so they run the same on the embedded `Engine`, a `Client` and,
wrapped, a `SyncClient`, and on etcd's data: keys under `name/` whose create revisions
order the waiters, as etcd's `concurrency` package and etcdctl make them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from dengine.api import Key, TxnResult
from dengine.errors import Compacted, DengineError, KvError
from dengine.kv.ops import Compare, Op, prefix_range_end, to_bytes
from dengine.proto.etcd import rpc_pb2

log = logging.getLogger("dengine.recipes")

_DELETE = 1  # a watch event's type: etcd's mvccpb.Event.DELETE


class SessionExpired(DengineError):
    """The lease a lock or an election candidacy was bound to ended (expired, revoked, or
    not kept alive past its TTL): the lock or the leadership is not held (any more)."""

    code = "SESSION_EXPIRED"


class NotElectionLeader(DengineError):
    """The election is not led by this candidacy (etcd: "election: not leader")."""

    code = "ELECTION_NOT_LEADER"

    def __init__(self, message: str = "election: not leader") -> None:
        super().__init__(message)


class NoElectionLeader(DengineError):
    """The election has no leader (etcd: "election: no leader")."""

    code = "ELECTION_NO_LEADER"

    def __init__(self, message: str = "election: no leader") -> None:
        super().__init__(message)


def prefix_of(name: Key) -> bytes:
    """The prefix of a lock's or an election's keys: its name and "/" (etcd's)."""
    return to_bytes(name, "name") + b"/"


def holder_key(prefix: bytes, lease_id: int) -> bytes:
    """One holder's key: the prefix and its lease id in hex (etcd's)."""
    return prefix + b"%x" % lease_id


def first_created(prefix: bytes) -> Op:
    """The key of `prefix` created first (the lock's holder, the election's leader)."""
    return Op.get(prefix, prefix=True, sort_target="create", sort_order="ascend", limit=1)


async def claim(api: Any, prefix: bytes, lease_id: int, value: bytes = b""
                ) -> tuple[bytes, int, TxnResult]:
    """Create this holder's key (unless its lease made it already) and read the first
    created key of `prefix`, in one txn: (key, its create revision, the txn result whose
    responses[1] is that first key)."""
    key = holder_key(prefix, lease_id)
    result: TxnResult = await api.txn(
        [Compare.create_revision(key) == 0],
        [Op.put(key, value, lease=lease_id), first_created(prefix)],
        [Op.get(key), first_created(prefix)])
    if result.succeeded:
        return key, result.revision, result
    kvs = result.responses[0].kvs  # type: ignore[union-attr]
    return key, kvs[0].create_revision, result


async def wait_deletes(api: Any, prefix: bytes, key: bytes, revision: int) -> None:
    """Return once no key of `prefix` created before `revision` (the create revision of
    this holder's `key`) is left: wait for the deletion of the one created last among
    them, then look again (etcd's waitDeletes: each waiter watches only the key just
    before its own). Each look also reads `key`, in the same txn: SessionExpired once it
    is gone (its lease ended while waiting), as etcd checks after waiting."""
    end = prefix_range_end(prefix)
    before = rpc_pb2.RangeRequest(
        key=prefix, range_end=end, limit=1, sort_order=rpc_pb2.RangeRequest.DESCEND,
        sort_target=rpc_pb2.RangeRequest.CREATE, max_create_revision=revision - 1)
    while True:
        result: TxnResult = await api.txn((), [Op("request_range", before), Op.get(key)])
        kvs, mine = (result.responses[0].kvs,  # type: ignore[union-attr]
                     result.responses[1].kvs)  # type: ignore[union-attr]
        if not mine or mine[0].create_revision != revision:
            raise SessionExpired(f"{prefix[:-1]!r}: the key {key!r} is gone (its lease "
                                 "ended) while waiting for its turn")
        if not kvs:
            return
        await wait_delete(api, kvs[0].key, result.revision)


async def wait_delete(api: Any, key: bytes, revision: int) -> None:
    """Return once `key` is deleted after `revision` (at once when the history from there
    is compacted: the caller looks again)."""
    stream = api.watch(key, start_revision=revision + 1)
    try:
        async for event in stream:
            if int(event.type) == _DELETE:
                return
    except Compacted:
        return
    finally:
        await stream.close()


class Holding:
    """The lease of one holder (a lock's, a candidate's): taken with `api.lease(ttl)`, kept
    alive in the background, revoked (which deletes the holder's key) on `close`.
    `lost` is set when the lease ends otherwise (expired, revoked, or keep-alive failed
    past the TTL); `on_lost` is called then."""

    def __init__(self, api: Any, ttl: int, on_lost: Callable[[], Any] | None) -> None:
        self._api = api
        self._ttl = ttl
        self._on_lost = on_lost
        self._context: Any = None
        self._lease: Any = None
        self._watcher: asyncio.Task[None] | None = None
        self._not_open = asyncio.Event()

    @property
    def lost(self) -> asyncio.Event:
        """The lease's own event (set by its keep-alive when it ends)."""
        return self._lease.lost if self._lease is not None else self._not_open

    @property
    def id(self) -> int:
        return int(self._lease.id) if self._lease is not None else 0

    async def open(self) -> None:
        context = self._api.lease(self._ttl)
        self._lease = await context.__aenter__()
        self._context = context  # (only a lease granted is revoked by close)
        if self._on_lost is not None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch_lost())

    async def _watch_lost(self) -> None:
        await self._lease.lost.wait()
        if self._on_lost is not None:
            try:
                outcome = self._on_lost()
                if asyncio.iscoroutine(outcome):
                    await outcome
            except Exception:
                log.exception("the on_lost callback failed")

    async def close(self, key: bytes = b"") -> None:
        """Revoke the lease (its keys go with it, in one revision). If that fails (the
        cluster unreachable), delete `key` if given, else leave it to the lease's TTL."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
        context, self._context = self._context, None
        if context is None:
            return
        try:
            await context.__aexit__(None, None, None)
        except (DengineError, OSError) as e:
            if isinstance(e, KvError):  # the lease is gone already (expired)
                return
            log.warning("could not revoke lease %x (%s); its keys expire with its TTL",
                        self.id, e)
            if key:
                with contextlib.suppress(DengineError, OSError):
                    await self._api.delete_range(key)

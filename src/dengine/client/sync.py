"""A blocking client: the async `Client` driven by a private event loop in a thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

from dengine.api import (
    DeleteResult,
    Key,
    KeyValue,
    Leader,
    LeaseGrant,
    LeaseInfo,
    MemberInfo,
    MemberSet,
    NodeStatus,
    PutResult,
    RangeResult,
    SortOrder,
    SortTarget,
    SyncWatchStream,
    TxnResult,
    WatchEvent,
    WatchFilter,
    WriteResult,
)
from dengine.client.client import Client
from dengine.client.sync_recipes import SyncElection, SyncLock
from dengine.errors import DengineError, Unavailable
from dengine.kv.ops import Compare, Op
from dengine.leases import KeptLease
from dengine.proto.common_pb2 import WriteCommand

T = TypeVar("T")


class SyncClient:
    """Same API as `Client`, blocking. Safe to share between threads (calls from several
    threads are batched together like concurrent coroutines). Close it (or use `with`)."""

    def __init__(self, endpoints: str | Iterable[str] = "127.0.0.1:9081", **options: Any
                 ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="dengine-client", daemon=True
        )
        self._thread.start()
        self._closed = False

        async def make() -> Client:
            return Client(endpoints, **options)

        try:
            self._client = self._run(make())
        except BaseException:
            self._stop_loop()
            raise

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def endpoints(self) -> list[str]:
        return self._client.endpoints

    def put(
        self, key: Key, value: Key, *, prev_kv: bool = False, lease: int = 0,
        timeout: float | None = None,
    ) -> PutResult:
        return self._run(self._client.put(key, value, prev_kv=prev_kv, lease=lease,
                                          timeout=timeout))

    def delete(self, key: Key, *, timeout: float | None = None) -> None:
        self._run(self._client.delete(key, timeout=timeout))

    def write(self, commands: Sequence[WriteCommand], *, timeout: float | None = None
              ) -> list[WriteResult]:
        return self._run(self._client.write(commands, timeout=timeout))

    def get(self, key: Key, consistency: str = "linearizable", *,
            timeout: float | None = None) -> bytes | None:
        return self._run(self._client.get(key, consistency, timeout=timeout))

    def get_many(self, keys: Sequence[Key], consistency: str = "linearizable", *,
                 timeout: float | None = None) -> list[bytes | None]:
        return self._run(self._client.get_many(keys, consistency, timeout=timeout))

    def get_kv(
        self, key: Key, *, revision: int = 0, consistency: str = "linearizable",
        timeout: float | None = None,
    ) -> KeyValue | None:
        return self._run(self._client.get_kv(key, revision=revision, consistency=consistency,
                                             timeout=timeout))

    def range(
        self, key: Key, range_end: Key | None = None, *, prefix: bool = False,
        from_key: bool = False, limit: int = 0, revision: int = 0,
        sort_target: SortTarget = "key", sort_order: SortOrder = None,
        keys_only: bool = False, count_only: bool = False,
        consistency: str = "linearizable", timeout: float | None = None,
    ) -> RangeResult:
        return self._run(self._client.range(
            key, range_end, prefix=prefix, from_key=from_key, limit=limit, revision=revision,
            sort_target=sort_target, sort_order=sort_order, keys_only=keys_only,
            count_only=count_only, consistency=consistency, timeout=timeout))

    def delete_range(
        self, key: Key, range_end: Key | None = None, *, prefix: bool = False,
        from_key: bool = False, prev_kv: bool = False, timeout: float | None = None,
    ) -> DeleteResult:
        return self._run(self._client.delete_range(
            key, range_end, prefix=prefix, from_key=from_key, prev_kv=prev_kv,
            timeout=timeout))

    def txn(
        self, compare: Sequence[Compare] = (), success: Sequence[Op] = (),
        failure: Sequence[Op] = (), *, timeout: float | None = None,
    ) -> TxnResult:
        return self._run(self._client.txn(compare, success, failure, timeout=timeout))

    def compare_and_swap(
        self, key: Key, expected: Key | None, new: Key, *, timeout: float | None = None
    ) -> bool:
        return self._run(self._client.compare_and_swap(key, expected, new, timeout=timeout))

    def compact(
        self, revision: int, *, physical: bool = False, timeout: float | None = None
    ) -> None:
        self._run(self._client.compact(revision, physical=physical, timeout=timeout))

    def watch(
        self, key: Key, range_end: Key | None = None, *, prefix: bool = False,
        start_revision: int = 0, prev_kv: bool = False, filters: Sequence[WatchFilter] = (),
        progress_notify: bool = False,
    ) -> SyncWatchStream:
        """`Client.watch`, as a blocking iterator (`for event in client.watch(...)`);
        close it (or use `with`) to stop it."""

        async def make() -> Any:
            return self._client.watch(
                key, range_end, prefix=prefix, start_revision=start_revision,
                prev_kv=prev_kv, filters=filters, progress_notify=progress_notify)

        return _SyncWatch(self, self._run(make()))


    def lease_grant(self, ttl: int, *, lease_id: int = 0,
                    timeout: float | None = None) -> LeaseGrant:
        return self._run(self._client.lease_grant(ttl, lease_id=lease_id, timeout=timeout))

    def lease_revoke(self, lease_id: int, *, timeout: float | None = None) -> None:
        self._run(self._client.lease_revoke(lease_id, timeout=timeout))

    def lease_keepalive_once(self, lease_id: int, *, timeout: float | None = None) -> int:
        return self._run(self._client.lease_keepalive_once(lease_id, timeout=timeout))

    def lease_time_to_live(self, lease_id: int, *, keys: bool = False,
                           timeout: float | None = None) -> LeaseInfo:
        return self._run(self._client.lease_time_to_live(lease_id, keys=keys,
                                                         timeout=timeout))

    def leases(self, *, timeout: float | None = None) -> list[int]:
        return self._run(self._client.leases(timeout=timeout))

    def lease(self, ttl: int, *, on_lost: Callable[[], Any] | None = None
              ) -> SyncKeptLease:
        """`with client.lease(ttl) as lease:` a lease kept alive in the background (on the
        client's loop thread), revoked on exit; `lease.lost` (a threading.Event) is set,
        and `on_lost` called from that thread, if it could not be kept alive."""
        return SyncKeptLease(self, ttl, on_lost)

    def status(self, endpoint: str | None = None, *, timeout: float | None = None
               ) -> NodeStatus:
        return self._run(self._client.status(endpoint, timeout=timeout))

    def status_all(self, *, timeout: float | None = None
                   ) -> dict[str, NodeStatus | DengineError]:
        return self._run(self._client.status_all(timeout=timeout))

    def leader(self, *, timeout: float | None = None) -> Leader:
        return self._run(self._client.leader(timeout=timeout))

    def members(self, *, timeout: float | None = None) -> list[MemberInfo]:
        return self._run(self._client.members(timeout=timeout))

    def add_member(self, node_id: int, address: str, promote: bool = False, *,
                   timeout: float | None = None) -> list[MemberInfo]:
        return self._run(self._client.add_member(node_id, address, promote, timeout=timeout))

    def promote_member(self, node_id: int, *, timeout: float | None = None
                       ) -> list[MemberInfo]:
        return self._run(self._client.promote_member(node_id, timeout=timeout))

    def remove_member(self, node_id: int, *, timeout: float | None = None
                      ) -> list[MemberInfo]:
        return self._run(self._client.remove_member(node_id, timeout=timeout))

    def lock(self, name: Key, ttl: int = 10, *, timeout: float | None = None,
             on_lost: Callable[[], Any] | None = None) -> SyncLock:
        """`with client.lock(b"name", ttl=10) as lock:` (see `Client.lock`); `on_lost` is
        called on the client's loop thread."""
        return SyncLock(self, self._client.lock(name, ttl, timeout=timeout, on_lost=on_lost))

    def election(self, name: Key) -> SyncElection:
        """`client.election(name)`, blocking (see `Client.election`)."""
        return SyncElection(self, self._client.election(name))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine of the client's (`async_client`) on its loop; its result."""
        return self._run(coro)

    @property
    def async_client(self) -> Client:
        """The async Client this one drives (use it only through `run`)."""
        return self._client

    def leader_changes(self) -> Iterator[Leader]:
        """`Client.leader_changes`, blocking: `for leader in client.leader_changes():`."""
        return self.iterate(self._client.leader_changes())

    def membership_changes(self) -> Iterator[MemberSet]:
        """`Client.membership_changes`, blocking."""
        return self.iterate(self._client.membership_changes())

    def iterate(self, items: AsyncIterator[T]) -> Iterator[T]:
        """An async iterator of the client's, driven from this thread (closed, on the
        client's loop, when the blocking iterator is)."""
        async def next_item() -> T:
            return await items.__anext__()

        try:
            while True:
                try:
                    yield self._run(next_item())
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None and not self._closed:
                asyncio.run_coroutine_threadsafe(aclose(), self._loop).result()

    def close(self) -> None:
        """Close connections and stop the private loop thread."""
        if self._closed:
            return
        self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result()
        finally:
            self._stop_loop()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise Unavailable("client closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class _SyncWatch(SyncWatchStream):
    """A `Client.watch` driven by the SyncClient's loop thread."""

    def __init__(self, client: SyncClient, watch: Any) -> None:
        self._client = client
        self._watch = watch
        self.revision = watch.revision

    def __iter__(self) -> _SyncWatch:
        return self

    def __next__(self) -> WatchEvent:
        watch: AsyncIterator[WatchEvent] = self._watch
        try:
            return self._client._run(_next(watch))
        except StopAsyncIteration:
            raise StopIteration from None
        finally:
            self.revision = self._watch.revision

    def close(self) -> None:
        if not self._client._closed:
            asyncio.run_coroutine_threadsafe(self._watch.close(), self._client._loop).result()


async def _next(watch: AsyncIterator[WatchEvent]) -> WatchEvent:
    return await watch.__anext__()


class SyncKeptLease:
    """The blocking form of `dengine.leases.KeptLease` (`SyncClient.lease`)."""

    def __init__(self, client: SyncClient, ttl: int,
                 on_lost: Callable[[], Any] | None) -> None:
        self._client = client
        self.lost = threading.Event()
        self._on_lost = on_lost

        def lost() -> None:
            self.lost.set()
            if on_lost is not None:
                on_lost()

        async def make() -> KeptLease:
            return client._client.lease(ttl, on_lost=lost)

        self._kept = client._run(make())

    @property
    def id(self) -> int:
        return self._kept.id

    @property
    def ttl(self) -> int:
        return self._kept.ttl

    @property
    def lost_reason(self) -> str:
        return self._kept.lost_reason

    def __enter__(self) -> SyncKeptLease:
        self._client._run(self._kept.__aenter__())
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._client._run(self._kept.close())

"""etcd's data model in the embedded API: the `Engine`'s get_kv, range, delete_range, txn,
compare_and_swap and compact (dengine.api.ClientApi; docs/etcd-model.md).

The calls build etcd's request messages (`dengine.kv.ops`), check them as etcd does before
proposing (`dengine.kv.etcd_check`), and go through the Engine's `kv_request` (writes)
and `read_query` (ranges; read-only txns, served as reads as etcd does); the answers are
the store's etcd responses, headers filled in, turned into `dengine.api`'s results.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from dengine.api import DeleteResult, Key, KeyValue, RangeResult, SortOrder, SortTarget, TxnResult
from dengine.errors import KvError
from dengine.kv import EVENTUAL, Limits, etcd_check, hashkv
from dengine.kv import ops as kvops
from dengine.kv.ops import Compare, Op
from dengine.proto import WriteCommand

KV_PUT = WriteCommand.PUT_FIELD_NUMBER
KV_DELETE_RANGE = WriteCommand.DELETE_RANGE_FIELD_NUMBER
KV_TXN = WriteCommand.TXN_FIELD_NUMBER
KV_COMPACTION = WriteCommand.COMPACTION_FIELD_NUMBER


class EtcdKv:
    """The etcd calls of `dengine.node.engine.Engine` (a mixin: it provides `_limits`,
    `kv_request`, `read_query` and `header_ids`)."""

    if TYPE_CHECKING:  # pragma: no cover
        _limits: Limits

        async def kv_request(self, field: int, request: bytes, *,
                             timeout: float | None = None) -> Any: ...

        async def read_query(self, fn: Callable[[Any], Any], consistency: Any = ..., *,
                             timeout: float | None = None) -> Any: ...

        def header_ids(self) -> tuple[int, int, int]: ...

        def query_local(self, fn: Callable[[Any], Any]) -> Any: ...

    async def get_kv(
        self, key: Key, *, revision: int = 0, consistency: str = "linearizable",
        timeout: float | None = None,
    ) -> KeyValue | None:
        """`key` with its revisions (at `revision`, 0: the current one), None if absent."""
        result = await self.range(key, revision=revision, consistency=consistency,
                                  timeout=timeout)
        return result.kvs[0] if result.kvs else None

    async def range(
        self, key: Key, range_end: Key | None = None, *, prefix: bool = False,
        from_key: bool = False, limit: int = 0, revision: int = 0,
        sort_target: SortTarget = "key", sort_order: SortOrder = None,
        keys_only: bool = False, count_only: bool = False,
        consistency: str = "linearizable", timeout: float | None = None,
    ) -> RangeResult:
        """The keys of [key, range_end) (`prefix`: starting with `key`; `from_key`: every
        key >= `key`; neither: `key` alone), as etcd's Range."""
        request = kvops.range_request(
            key, range_end, prefix=prefix, from_key=from_key, limit=limit,
            revision=revision, sort_target_name=sort_target, sort_order_name=sort_order,
            keys_only=keys_only, count_only=count_only,
            serializable=consistency == EVENTUAL,
        )
        self._check(request.ByteSize(), etcd_check.check_range, request)
        response = await self.read_query(functools.partial(_range, request), consistency,
                                         timeout=timeout)
        return kvops.range_result(self._with_header(response))

    async def delete_range(
        self, key: Key, range_end: Key | None = None, *, prefix: bool = False,
        from_key: bool = False, prev_kv: bool = False, timeout: float | None = None,
    ) -> DeleteResult:
        """Delete the keys of a range (as `range` selects them)."""
        request = kvops.delete_request(key, range_end, prefix=prefix, from_key=from_key,
                                       prev_kv=prev_kv)
        return kvops.delete_result(await self._kv(KV_DELETE_RANGE, request, timeout))

    async def txn(
        self, compare: Sequence[Compare] = (), success: Sequence[Op] = (),
        failure: Sequence[Op] = (), *, timeout: float | None = None,
    ) -> TxnResult:
        """If every compare holds, run `success`, else `failure`: one revision, atomic."""
        request = kvops.txn_request(compare, success, failure)
        if etcd_check.is_txn_readonly(request):  # served as a read, as etcd does
            self._check(request.ByteSize(), etcd_check.check_txn, request,
                        self._limits.max_txn_ops)
            response = await self.read_query(functools.partial(_read_txn, request),
                                             timeout=timeout)
            return kvops.txn_result(self._with_header(response))
        return kvops.txn_result(await self._kv(KV_TXN, request, timeout))

    async def compare_and_swap(
        self, key: Key, expected: Key | None, new: Key, *, timeout: float | None = None
    ) -> bool:
        """Set `key` to `new` if it holds `expected` (None: if it is absent); whether it did."""
        response = await self._kv(KV_TXN, kvops.cas_request(key, expected, new), timeout)
        return bool(response.succeeded)

    async def compact(
        self, revision: int, *, physical: bool = False, timeout: float | None = None
    ) -> None:
        """Drop the history below `revision` (reads there then fail with Compacted)."""
        request = kvops.compaction_request(revision, physical=physical)
        await self._kv(KV_COMPACTION, request, timeout)

    async def hash_kv(self, revision: int = 0) -> tuple[int, int, int]:
        """etcd's HashKV of this member's applied state at `revision` (0: the current
        one; a negative one hashes nothing, as etcd): (hash, current revision, compacted
        revision). Compacted or future revisions raise etcd's errors. The hash runs in a
        thread on copies of the store (O(keys + history), `dengine.kv.hashkv`)."""
        data, changes, compact, current = self.query_local(_hash_inputs)
        if 0 < revision <= compact:
            raise etcd_check.compacted()
        if revision > current:
            raise etcd_check.future_revision()
        value = await asyncio.get_running_loop().run_in_executor(
            None, hashkv.hash_kv, data, changes, compact, revision or current)
        return value, current, compact

    async def _kv(self, field: int, request: Any, timeout: float | None) -> Any:
        """Check and propose an etcd write request; its etcd response (KvError raised)."""
        data = request.SerializeToString()
        if field == KV_PUT:
            self._check(len(data), etcd_check.check_put, request)
        elif field == KV_DELETE_RANGE:
            self._check(len(data), etcd_check.check_delete_range, request)
        elif field == KV_TXN:
            self._check(len(data), etcd_check.check_txn, request, self._limits.max_txn_ops)
        result = await self.kv_request(field, data, timeout=timeout)
        response = result.response
        if isinstance(response, KvError):
            raise response
        return self._with_header(response)

    def _check(self, size: int, check: Callable[..., None], *args: Any) -> None:
        """etcd's checks before proposing (or reading): its errors, as KvError."""
        etcd_check.check_request_size(size, self._limits.max_request_bytes)
        check(*args)

    def _with_header(self, response: Any) -> Any:
        ids = self.header_ids()
        header = response.header
        header.cluster_id, header.member_id, header.raft_term = ids
        return response


def _hash_inputs(store: Any) -> tuple[dict[bytes, bytes], Any, int, int]:
    return (store.copy_packed(), store.copy_changes(), store.compact_revision,
            store.revision)


def _range(request: Any, store: Any) -> Any:
    return store.range(request)


def _read_txn(request: Any, store: Any) -> Any:
    return store.read_txn(request)

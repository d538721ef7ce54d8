"""The in-memory key-value store and what applying a decoded command does to it.

`Store.apply` is a pure function of (store, command) -> result: no clock, no I/O, the
same on every replica. The file state machine wraps a store for durability (WAL,
checkpoints), the memory state machine and the simulator use one bare. `apply_ops` and
`insert_all` are the batch forms the apply path uses (one call per chunk); they do
exactly what `apply` does op by op (tested).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from dengine.api import WriteResult
from dengine.kv.codec import OP_CONFIG, OP_DELETE, OP_INSERT, OP_REJECTED
from dengine.proto import Membership

Op = tuple[int, int, int, bytes, bytes]  # index, term, op, key, value

# The outcome of applying one entry: the API's `WriteResult` (one class from the state
# machine to the caller). Later commands (compare-and-swap) fill `value`.
ApplyResult = WriteResult


_new = object.__new__


def results_of(ops: list[Op]) -> list[ApplyResult]:
    """One ApplyResult per op. A frozen dataclass's __init__ costs ~1 us per entry, so a
    succeeded result is built by setting `index` only: the other fields keep the class
    defaults."""
    out: list[ApplyResult] = []
    put = out.append
    for op in ops:
        if op[2] == OP_REJECTED:
            put(ApplyResult(op[0], succeeded=False))
        else:
            result = _new(ApplyResult)
            result.__dict__["index"] = op[0]
            put(result)
    return out


class Store:
    """Key -> value. `get` is the dict's own method (reads are hot)."""

    __slots__ = ("_data", "get")

    def __init__(self, data: dict[bytes, bytes] | None = None) -> None:
        self._data: dict[bytes, bytes] = {} if data is None else data
        self.get = self._data.get

    def __len__(self) -> int:
        return len(self._data)

    @property
    def data(self) -> Mapping[bytes, bytes]:
        """The live map, read-only (snapshots serialize it; copy it to keep it)."""
        return self._data

    def copy(self) -> dict[bytes, bytes]:
        """A copy of the whole map (checkpoints, tests and tools)."""
        return dict(self._data)

    def apply(self, op: int, key: bytes, value: bytes) -> bool:
        """Apply one decoded command; False for a rejected one (it changes nothing).

        Config entries and no-ops change nothing here (membership is the state
        machine's); they succeed.
        """
        if op == OP_INSERT:
            self._data[key] = value
        elif op == OP_DELETE:
            self._data.pop(key, None)
        return op != OP_REJECTED

    def apply_ops(self, ops: Iterable[Op]) -> Membership | None:
        """Apply decoded ops in order; return the last membership among them, if any.
        Ops other than insert, delete and config (storage's bookkeeping) are skipped."""
        membership = None
        data = self._data
        pop = data.pop
        for _, _, op, key, value in ops:
            if op == OP_INSERT:
                data[key] = value
            elif op == OP_DELETE:
                pop(key, None)
            elif op == OP_CONFIG:
                membership = Membership.FromString(value)
        return membership

    def insert_all(self, keys: Iterable[bytes], values: Iterable[bytes]) -> None:
        """Insert key[i] -> value[i] in order (a chunk of inserts only)."""
        self._data.update(zip(keys, values, strict=True))

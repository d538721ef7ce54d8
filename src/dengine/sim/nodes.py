"""The simulator's per-node state and its clients' pending requests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dengine.kv.mvcc import MvccStore
from dengine.proto import SnapshotMetadata
from dengine.raft import MemoryRaftLog, RaftCore
from dengine.sim.config import TICK_MS
from dengine.sim.workloads import Done


@dataclass
class PendingWrite:
    client: int
    term: int  # the term it was proposed in: applied with another term = failed
    op_slot: int  # position in the history (-1: none)
    done: Done | None = None  # told the outcome: applied (or None: unknown), if it applies


@dataclass
class PendingRead:
    client: int
    key: bytes
    call: int
    ctx: bytes
    index: int = -1  # read index, once the core answered
    serve: Callable[[MvccStore], None] | None = None  # instead of a get of `key`


# A store's image in a snapshot: revision, compact revision, live (key, packed), changelog,
# leases (id, granted TTL).
Image = tuple[int, int, tuple[tuple[bytes, bytes], ...], tuple[Any, ...],
              tuple[tuple[int, int], ...]]


class SimLog(MemoryRaftLog):
    """MemoryRaftLog that can also record a snapshot the node took itself."""

    def save_snapshot(self, metadata: SnapshotMetadata) -> None:
        """Compact up to `metadata.last_included`, which now describes the log's start."""
        self.compact_prefix(metadata.last_included.index)
        self._snapshot = metadata


class SimNode:
    """One node: its durable log (survives crash) and its volatile core and state machine."""

    def __init__(self, node_id: int) -> None:
        self.id = node_id
        self.log = SimLog()
        self.core: RaftCore | None = None
        self.kv = MvccStore()
        self.applied = 0
        self.period = TICK_MS
        self.reads: dict[bytes, PendingRead] = {}
        self.incarnation = 0
        self.lead_term = 0  # last term this node was seen leading
        self.lead_commit = -1  # its commit index when elected, until its first commit

    @property
    def up(self) -> bool:
        return self.core is not None

"""etcd's watch over the store's changelog: which changes a watch delivers (pure).

A watch is a key range, filters and a cursor: the revision up to which it has seen every
change (`after`). `collect` reads the changes above the cursor from `MvccStore`'s
changelog (`changes_since`), keeps those of the range the filters let through, and stops
at a revision boundary once a batch is full: a revision's events are never split, so a
watch resumed from the cursor of any batch misses nothing and repeats nothing. The
cursor of a batch moves over the revisions it scanned, matching or not (a watch of an
idle range is current to the store's revision). Callers hold the state machine's lock
(`StateMachine.read`); the changes returned are immutable tuples, safe to use after.

History: the changelog holds the changes above the store's `compact_revision` C. A
cursor at C or above is served from it; a cursor at C - 1 (etcd's start revision C, the
oldest etcd accepts) gets the puts of revision C from the state at C (the state there is
kept; a delete at exactly C is gone, as in etcd, whose compaction drops it too); a cursor
below that raises `Compacted` with `compact_revision` C: etcd's cancel.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from dengine.api import EventType, Key, KeyValue, WatchEvent
from dengine.errors import Compacted, InvalidRequest
from dengine.kv.mvcc import META_SIZE, Change, MvccStore, pack_meta, unpack_meta
from dengine.kv.ops import key_range
from dengine.proto.etcd import rpc_pb2 as pb
from dengine.proto.etcd.kv_pb2 import Event

NOPUT = pb.WatchCreateRequest.NOPUT
NODELETE = pb.WatchCreateRequest.NODELETE
PUT = Event.PUT
DELETE = Event.DELETE

MAX_EVENTS = 1000  # a batch stops at the first revision boundary past this many events
MAX_BYTES = 1024 * 1024  # ... or past this many bytes of keys and values


class WatchRange(NamedTuple):
    """The keys a watch covers, as etcd's watch: `range_end` b"" = `key` alone, b"\\0" =
    every key >= `key`, else [key, range_end) (empty when range_end <= key)."""

    key: bytes
    range_end: bytes

    def contains(self, k: bytes) -> bool:
        end = self.range_end
        if not end:
            return k == self.key
        if end == b"\x00":
            return k >= self.key
        return self.key <= k < end

    @property
    def empty(self) -> bool:
        """etcd refuses such a watch ("mvcc: watcher range is empty")."""
        end = self.range_end
        return bool(end) and end != b"\x00" and self.key >= end


def watch_range(key: bytes, range_end: bytes) -> WatchRange:
    """etcd's normalisation of a create request: an empty key is b"\\0" (the smallest)."""
    return WatchRange(key or b"\x00", range_end)


class Batch(NamedTuple):
    """What a watch gets from one pull: matching `changes` in revision order (whole
    revisions), and the `revision` it is now current to (every change at or below it has
    been looked at)."""

    changes: list[Change]
    revision: int


def collect(store: MvccStore, after: int, rng: WatchRange, *, noput: bool = False,
            nodelete: bool = False, max_events: int = MAX_EVENTS,
            max_bytes: int = MAX_BYTES) -> Batch:
    """The changes above revision `after` that the watch delivers (see the module
    docstring); raises Compacted when the history above `after` is gone."""
    out: list[Change] = []
    compact = store.compact_revision
    if after < compact:
        if after < compact - 1:
            raise compacted(compact)
        out.extend(_puts_at(store, compact, rng, noput))
        after = compact
    contains = rng.contains
    size = 0
    last = after
    for change in store.changes_since(after):
        rev = change[0]
        if rev != last:
            if len(out) >= max_events or size >= max_bytes:
                return Batch(out, last)  # every change up to `last` is in
            last = rev
        key = change[1]
        if not contains(key):
            continue
        new = change[2]
        if new is None:
            if nodelete:
                continue
        elif noput:
            continue
        out.append(change)
        size += len(key) + (len(new) if new is not None else 0)
    return Batch(out, max(after, store.revision))


def compacted(compact_revision: int) -> Compacted:
    """The error of a watch whose cursor is below the history (`compact_revision`: the
    store's compaction point, etcd's WatchResponse.compact_revision)."""
    return Compacted(compact_revision=compact_revision)


def _puts_at(store: MvccStore, rev: int, rng: WatchRange, noput: bool) -> list[Change]:
    """The puts of revision `rev` (the compaction point: the state there is kept)."""
    if noput or rev <= 1:
        return []
    resp = store.range(pb.RangeRequest(key=rng.key, range_end=rng.range_end, revision=rev))
    return [Change(rev, kv.key, pack_meta(kv.create_revision, kv.mod_revision, kv.version,
                                          kv.lease) + kv.value, None)
            for kv in resp.kvs if kv.mod_revision == rev]


class WatchSpec(NamedTuple):
    """A watch as the Python API asks for it (`spec`): range, start (0: from now),
    filters and prev_kv."""

    range: WatchRange
    start_revision: int
    prev_kv: bool
    noput: bool
    nodelete: bool
    progress_notify: bool

    def create_request(self) -> pb.WatchCreateRequest:
        filters = [f for f, on in ((NOPUT, self.noput), (NODELETE, self.nodelete)) if on]
        return pb.WatchCreateRequest(
            key=self.range.key, range_end=self.range.range_end,
            start_revision=self.start_revision, prev_kv=self.prev_kv, filters=filters,
            progress_notify=self.progress_notify)


_FILTERS = {"noput": NOPUT, "nodelete": NODELETE}


def spec(key: Key, range_end: Key | None = None, *, prefix: bool = False,
         start_revision: int = 0, prev_kv: bool = False, filters: Sequence[Any] = (),
         progress_notify: bool = False) -> WatchSpec:
    """A watch's arguments checked (InvalidRequest): key and range as `range` takes them
    (`prefix`: every key starting with `key`), filters "noput"/"nodelete"."""
    k, end = key_range(key, range_end, prefix=prefix)
    if isinstance(start_revision, bool) or not isinstance(start_revision, int) or not (
            0 <= start_revision < 1 << 63):
        raise InvalidRequest(f"start_revision must be an integer >= 0, got {start_revision!r}")
    if isinstance(filters, str | bytes):
        filters = (filters,)
    codes = set()
    for f in filters:
        code = _FILTERS.get(f.lower()) if isinstance(f, str) else (
            f if f in (NOPUT, NODELETE) and not isinstance(f, bool) else None)
        if code is None:
            raise InvalidRequest(f"unknown watch filter {f!r} (expected 'noput' or 'nodelete')")
        codes.add(code)
    rng = watch_range(k, end)
    if rng.empty:
        raise InvalidRequest("watch range is empty (range_end must be above key)")
    return WatchSpec(rng, start_revision, bool(prev_kv), NOPUT in codes, NODELETE in codes,
                     bool(progress_notify))


def watch_event(change: Change, prev_kv: bool) -> WatchEvent:
    """The Python API's event of a change."""
    rev, key, new, prev = change
    if new is None:
        kv = KeyValue(key, b"", 0, rev, 0, 0)
        kind = EventType.DELETE
    else:
        c, m, v, lease = _meta(new)
        kv = KeyValue(key, new[META_SIZE:], c, m, v, lease)
        kind = EventType.PUT
    before = None
    if prev_kv and prev is not None:
        c, m, v, lease = _meta(prev)
        before = KeyValue(key, prev[META_SIZE:], c, m, v, lease)
    return WatchEvent(kind, kv, before)


def event_from_pb(event: Event) -> WatchEvent:
    """The Python API's event of an etcd Event message."""
    kv = event.kv
    prev = event.prev_kv if event.HasField("prev_kv") else None
    return WatchEvent(
        EventType(event.type),
        KeyValue(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease),
        None if prev is None else KeyValue(prev.key, prev.value, prev.create_revision,
                                           prev.mod_revision, prev.version, prev.lease))


def make_event(change: Change, prev_kv: bool) -> Event:
    """The etcd Event of a change (its prev_kv when asked for and there was one)."""
    event = Event()
    fill_event(event, change, prev_kv)
    return event


def fill_event(event: Any, change: Change, prev_kv: bool) -> None:
    """Fill an etcd Event message (e.g. a repeated field's new element) from a change."""
    rev, key, new, prev = change
    kv = event.kv
    if new is None:
        event.type = DELETE
        kv.key = key
        kv.mod_revision = rev
    else:
        c, m, v, lease = _meta(new)
        kv.key = key
        kv.create_revision = c
        kv.mod_revision = m
        kv.version = v
        kv.lease = lease
        kv.value = new[META_SIZE:]
    if prev_kv and prev is not None:
        c, m, v, lease = _meta(prev)
        p = event.prev_kv
        p.key = key
        p.create_revision = c
        p.mod_revision = m
        p.version = v
        p.lease = lease
        p.value = prev[META_SIZE:]


def add_events(events: Any, changes: Iterable[Change], prev_kv: bool) -> None:
    """Append the etcd Events of `changes` to a repeated Event field."""
    add = events.add
    for change in changes:
        fill_event(add(), change, prev_kv)


def event_size(change: Change, prev_kv: bool) -> int:
    """About the encoded size of a change's Event (fragmenting)."""
    n = 32 + len(change[1]) * (2 if prev_kv else 1)
    if change[2] is not None:
        n += len(change[2])
    if prev_kv and change[3] is not None:
        n += len(change[3])
    return n


def _meta(packed: bytes) -> tuple[int, int, int, int]:
    return unpack_meta(packed)


__all__ = [
    "DELETE",
    "MAX_BYTES",
    "MAX_EVENTS",
    "NODELETE",
    "NOPUT",
    "PUT",
    "Batch",
    "WatchRange",
    "WatchSpec",
    "add_events",
    "collect",
    "compacted",
    "event_from_pb",
    "event_size",
    "fill_event",
    "make_event",
    "spec",
    "watch_event",
    "watch_range",
]

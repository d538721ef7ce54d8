"""The MVCC store's changelog: one `(revision, key, new, prev)` per key change, oldest
first (`new`/`prev` packed versions, None = deleted / absent), kept as four columns.

Columns, not a tuple per change: a tuple per put was one more object the garbage
collector tracks (a young collection every few hundred puts) and ~100 bytes more per
change; with the revisions in an array, reads at a past revision and compaction find
their place by bisection and cut the columns at C speed.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence

ChangeTuple = tuple[int, bytes, bytes | None, bytes | None]


class Changelog:
    """The changes, oldest first; revisions never decrease."""

    __slots__ = ("keys", "news", "prevs", "revs")

    def __init__(self, changes: Iterable[ChangeTuple] = ()) -> None:
        self.revs = array("q")
        self.keys: list[bytes] = []
        self.news: list[bytes | None] = []
        self.prevs: list[bytes | None] = []
        columns = list(zip(*changes, strict=True))
        if columns:
            revs, keys, news, prevs = columns
            self.revs.extend(revs)
            self.keys.extend(keys)
            self.news.extend(news)
            self.prevs.extend(prevs)

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[ChangeTuple]:
        return zip(self.revs, self.keys, self.news, self.prevs, strict=True)

    def copy(self) -> Changelog:
        """A copy (four C-level copies: checkpoints take it under a lock)."""
        out = Changelog()
        out.revs = self.revs[:]
        out.keys = self.keys[:]
        out.news = self.news[:]
        out.prevs = self.prevs[:]
        return out

    def last_revision(self) -> int:
        """The revision of the newest change (0: none)."""
        return self.revs[-1] if self.revs else 0

    def append(self, rev: int, key: bytes, new: bytes | None, prev: bytes | None) -> None:
        self.revs.append(rev)
        self.keys.append(key)
        self.news.append(new)
        self.prevs.append(prev)

    def extend_run(self, first: int, keys: Sequence[bytes], news: list[bytes],
                   prevs: list[bytes | None]) -> None:
        """Changes of revisions first, first + 1, ... (one per key, a run of puts)."""
        self.revs.extend(range(first, first + len(keys)))
        self.keys.extend(keys)
        self.news.extend(news)
        self.prevs.extend(prevs)

    def packed_at(self, key: bytes, rev: int, live: bytes | None) -> bytes | None:
        """`key` as of `rev`, given its live packed version: the `prev` of its oldest
        change above `rev`, else `live`."""
        start = bisect_right(self.revs, rev)
        try:
            return self.prevs[self.keys.index(key, start)]
        except ValueError:
            return live

    def overlay(self, lo: bytes, hi: bytes | None, rev: int) -> dict[bytes, bytes | None]:
        """key -> its version as of `rev` (None: absent), for the keys of [lo, hi) (hi
        None: no bound) changed above `rev`: the `prev` of each one's oldest change there."""
        start = bisect_right(self.revs, rev)
        out: dict[bytes, bytes | None] = {}
        for key, prev in zip(self.keys[start:], self.prevs[start:], strict=True):
            if lo <= key and (hi is None or key < hi) and key not in out:
                out[key] = prev
        return out

    def since(self, rev: int) -> Iterator[ChangeTuple]:
        """The changes above `rev`, oldest first."""
        start = bisect_right(self.revs, rev)
        return zip(self.revs[start:], self.keys[start:], self.news[start:],
                   self.prevs[start:], strict=True)

    def compact(self, rev: int) -> None:
        """Drop the changes at or below `rev`."""
        end = bisect_right(self.revs, rev)
        if end:
            del self.revs[:end]
            del self.keys[:end]
            del self.news[:end]
            del self.prevs[:end]

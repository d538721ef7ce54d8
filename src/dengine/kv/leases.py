"""The store's lease table (etcd's lessor, its replicated part): `lease id -> Lease(granted
TTL, attached keys)`, changed only by applied commands (kv/mvcc.py). Pure: no clock; when
a lease expires is the leader's lessor's business (dengine.node.lessor)."""

from __future__ import annotations

from collections.abc import Iterable


class Lease:
    """One lease: its granted TTL (seconds) and the keys attached to it."""

    __slots__ = ("keys", "ttl")

    def __init__(self, ttl: int) -> None:
        self.ttl = ttl
        self.keys: set[bytes] = set()


JOURNAL = 4096  # recent grants and revokes kept for `changes_since`


class LeaseTable:
    """Every lease of one store. `version` counts grants and revokes (a reader's cue to
    look again); the last few of them are kept (`changes_since`), so that the leader's
    lessor follows 10,000s of leases without copying the table at every grant."""

    __slots__ = ("_journal", "_journal_base", "_leases", "version")

    def __init__(self, leases: Iterable[tuple[int, int]] = ()) -> None:
        self._leases: dict[int, Lease] = {lease_id: Lease(ttl) for lease_id, ttl in leases}
        self.version = 0
        self._journal: list[tuple[int, int | None]] = []  # (lease id, TTL; None: revoked)
        self._journal_base = 0  # the version before the journal's first change

    def _note(self, lease_id: int, ttl: int | None) -> None:
        self.version += 1
        journal = self._journal
        journal.append((lease_id, ttl))
        if len(journal) > JOURNAL:
            drop = len(journal) // 2
            del journal[:drop]
            self._journal_base += drop

    def changes_since(self, version: int) -> list[tuple[int, int | None]] | None:
        """The grants (lease id, TTL) and revokes (lease id, None) after `version`, in order;
        None when they are no longer all known (the reader copies `ttls` instead)."""
        start = version - self._journal_base
        if start < 0 or version > self.version:
            return None
        return self._journal[start:]

    def __len__(self) -> int:
        return len(self._leases)

    def __contains__(self, lease_id: int) -> bool:
        return lease_id in self._leases

    def grant(self, lease_id: int, ttl: int) -> None:
        self._leases[lease_id] = Lease(ttl)
        self._note(lease_id, ttl)

    def revoke(self, lease_id: int) -> Lease | None:
        """Remove the lease; it (with the keys to delete) or None if unknown."""
        lease = self._leases.pop(lease_id, None)
        if lease is not None:
            self._note(lease_id, None)
        return lease

    def attach(self, key: bytes, lease_id: int) -> None:
        lease = self._leases.get(lease_id)
        if lease is not None:
            lease.keys.add(key)

    def detach(self, key: bytes, lease_id: int) -> None:
        lease = self._leases.get(lease_id)
        if lease is not None:
            lease.keys.discard(key)

    def ttls(self) -> dict[int, int]:
        """A copy of `lease id -> granted TTL` (seconds)."""
        return {lease_id: lease.ttl for lease_id, lease in self._leases.items()}

    def ids(self) -> list[int]:
        return list(self._leases)

    def info(self, lease_id: int, keys: bool = False) -> tuple[int, list[bytes]] | None:
        """(granted TTL, the attached keys in order if `keys`) of a lease; None if absent."""
        lease = self._leases.get(lease_id)
        if lease is None:
            return None
        return lease.ttl, sorted(lease.keys) if keys else []

    def packed(self) -> list[tuple[int, int]]:
        """(id, granted TTL) of every lease, by id (persistence)."""
        return sorted((lease_id, lease.ttl) for lease_id, lease in self._leases.items())

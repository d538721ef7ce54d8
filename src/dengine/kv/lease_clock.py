"""The leader's lease expiry clock, pure: deadlines over a store's lease table, with the
time passed in by the caller (dengine.node.lessor drives it with time.monotonic on a
node, the simulator with a node's virtual clock). docs/etcd-model.md, "Leases".

Nothing here is replicated: a node that is not the primary holds no deadline. The
primary gives every lease its full TTL plus `grace` when promoted, a lease first seen
afterwards its TTL from then, a keep-alive its TTL from then; `expired(now)` hands out
the leases whose deadline passed, once each, for the caller to propose their revoke.
"""

from __future__ import annotations

import heapq


class LeaseClock:
    """Deadlines (in the caller's seconds) of the leases of one store."""

    def __init__(self, grace: float) -> None:
        self.grace = grace  # added to every TTL at promotion (an election timeout)
        self.primary_term = 0  # the term this clock is primary at (0: not primary)
        self.version = -1  # the lease table version last synced
        self._deadlines: dict[int, float] = {}
        self._ttls: dict[int, int] = {}
        self._heap: list[tuple[float, int]] = []
        self.revoking: set[int] = set()

    def promote(self, term: int, version: int, ttls: dict[int, int], now: float) -> None:
        """Become primary at `term`: every lease gets its TTL + grace from `now`."""
        self._ttls = dict(ttls)
        self.version = version
        self._deadlines = {i: now + ttl + self.grace for i, ttl in self._ttls.items()}
        self._heap = [(d, i) for i, d in self._deadlines.items()]
        heapq.heapify(self._heap)
        self.revoking.clear()
        self.primary_term = term

    def demote(self) -> None:
        self.primary_term = 0
        self.version = -1
        self._deadlines = {}
        self._ttls = {}
        self._heap = []
        self.revoking.clear()

    def __len__(self) -> int:
        return len(self._deadlines)

    def sync(self, version: int, ttls: dict[int, int] | None, now: float) -> None:
        """The table as of `version` (`ttls` None: unchanged since the last sync): leases
        gone are forgotten, new ones start their TTL at `now`."""
        if ttls is None or version == self.version:
            return
        deadlines = self._deadlines
        for lease_id in [i for i in deadlines if i not in ttls]:
            del deadlines[lease_id]
            self.revoking.discard(lease_id)
        for lease_id, ttl in ttls.items():
            if lease_id not in deadlines:
                deadline = deadlines[lease_id] = now + ttl
                heapq.heappush(self._heap, (deadline, lease_id))
        self._ttls = dict(ttls)
        self.version = version

    def update(self, version: int, changes: list[tuple[int, int | None]], now: float
               ) -> None:
        """`sync` from the grants (lease id, TTL) and revokes (lease id, None) made since
        the last sync (`LeaseTable.changes_since`), without a copy of the whole table."""
        deadlines, ttls = self._deadlines, self._ttls
        for lease_id, ttl in changes:
            if ttl is None:
                ttls.pop(lease_id, None)
                deadlines.pop(lease_id, None)
                self.revoking.discard(lease_id)
            else:
                ttls[lease_id] = ttl
                deadline = deadlines[lease_id] = now + ttl
                heapq.heappush(self._heap, (deadline, lease_id))
        self.version = version

    def renew(self, lease_id: int, now: float) -> int:
        """A keep-alive: the granted TTL, the deadline now + TTL; 0 if unknown or expired."""
        deadline = self._deadlines.get(lease_id)
        if deadline is None or deadline <= now or lease_id in self.revoking:
            return 0
        ttl = self._ttls[lease_id]
        deadline = self._deadlines[lease_id] = now + ttl
        heapq.heappush(self._heap, (deadline, lease_id))
        return ttl

    def remaining(self, lease_id: int, now: float) -> int:
        """Whole seconds left; -1 if unknown."""
        deadline = self._deadlines.get(lease_id)
        if deadline is None:
            return -1
        return max(0, int(deadline - now))

    def expired(self, now: float, limit: int) -> list[int]:
        """Up to `limit` leases whose deadline passed and whose revoke is not under way
        (they are marked as being revoked)."""
        out: list[int] = []
        heap = self._heap
        deadlines = self._deadlines
        while heap and heap[0][0] <= now and len(out) < limit:
            deadline, lease_id = heapq.heappop(heap)
            if deadlines.get(lease_id) != deadline or lease_id in self.revoking:
                continue  # renewed since (a later entry holds it), or gone
            self.revoking.add(lease_id)
            out.append(lease_id)
        return out

    def revoke_failed(self, lease_id: int) -> None:
        """The revoke of `lease_id` was not committed: hand it out again later."""
        if lease_id in self.revoking:
            self.revoking.discard(lease_id)
            deadline = self._deadlines.get(lease_id)
            if deadline is not None:
                heapq.heappush(self._heap, (deadline, lease_id))

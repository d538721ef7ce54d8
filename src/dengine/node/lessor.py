"""The leader's lessor: when each lease expires, by the leader's monotonic clock
(docs/etcd-model.md, "Leases").

The lease table itself (ids, granted TTLs, attached keys) is replicated state in the MVCC
store, changed only by log entries. What is not replicated is the expiry clock: the
leader keeps `lease id -> deadline` (monotonic seconds) here, and nowhere else. When a
deadline passes, the leader proposes a revoke through the log like a client would; every
replica then deletes the lease's keys at the same index. A follower's lessor does
nothing; nothing expires on a replica by its own clock.

Leadership: a node that becomes leader at term T is *primary* once it has applied every
entry up to its own first entry of T (so that its store holds every lease granted
before). Then every lease gets its full TTL again, plus one election timeout (a deposed
leader that had not noticed yet may have renewed a lease up to about then), as etcd's
lessor Promote does; so no failover expires a lease before its last keep-alive + TTL.
A node that stops leading forgets the deadlines (etcd's Demote).

Keep-alives (`renew`) and remaining TTLs (`remaining`) are answered by the primary only.
Expired leases are revoked at most `REVOKES_PER_S` per second (etcd's leaseRevokeRate).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from dengine.errors import DengineError, KvError, NotLeader
from dengine.proto.etcd.rpc_pb2 import LeaseRevokeRequest

log = logging.getLogger("dengine.node")

CHECK_S = 0.1  # how often the primary looks for expired leases
REVOKES_PER_S = 1000  # etcd's leaseRevokeRate
KV_LEASE_REVOKE = 8  # the WriteCommand field of a lease revoke (common.proto)


def min_ttl(election_timeout_ms: int) -> int:
    """etcd's minimum lease TTL: 1.5 election timeouts, rounded up to whole seconds (a
    lease shorter than that could expire during a normal failover)."""
    return max(1, math.ceil(1.5 * election_timeout_ms / 1000))


class Lessor:
    """The expiry clock of one node's leases (primary on the leader only)."""

    def __init__(
        self,
        *,
        election_timeout_s: float,
        is_leader: Callable[[], bool],
        term: Callable[[], int],
        applied_index: Callable[[], int],
        last_index: Callable[[], int],
        read_local: Callable[[Callable[[Any], Any]], Any],
        propose: Callable[[int, bytes], Awaitable[Any]],
        not_leader: Callable[[], NotLeader] | None = None,
        clock: Callable[[], float] = time.monotonic,
        check_s: float = CHECK_S,
    ) -> None:
        self.election_timeout_s = election_timeout_s
        self._is_leader = is_leader
        self._term = term
        self._applied = applied_index
        self._last_index = last_index
        self._read_local = read_local
        self._propose = propose
        self._not_leader = not_leader or (
            lambda: NotLeader("not the leader: leases are kept by the leader"))
        self.clock = clock
        self.check_s = check_s
        self.primary_term = 0  # the term this lessor is primary at (0: not primary)
        self._candidate: tuple[int, int] | None = None  # (term, index to apply first)
        self._deadlines: dict[int, float] = {}
        self._ttls: dict[int, int] = {}
        self._heap: list[tuple[float, int]] = []
        self._version = -1  # the lease table version last synced
        self._revoking: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._primary = asyncio.Event()
        self.revoked = 0  # expiry revokes applied (tests, status)

    # -- lifecycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="dengine-lessor")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._task = None
        self._tasks.clear()
        self._demote()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.check_s)
            try:
                self.check()
            except DengineError as e:  # stopped, failed: nothing to expire here
                log.debug("lessor: %s", e.message)
                self._demote()
            except Exception:
                log.exception("lessor check failed")

    # -- leadership

    def check(self) -> None:
        """One step: follow leadership (promote, demote), then revoke what expired."""
        if not self._is_leader():
            self._demote()
            return
        term = self._term()
        if self.primary_term != term:
            self._demote()
            if self._candidate is None or self._candidate[0] != term:
                # Primary once the entries of the terms before ours are applied.
                self._candidate = (term, self._last_index())
            if self._applied() < self._candidate[1] or not self._is_leader():
                return
            self._promote(term)
        self._sync()
        self._expire()

    def _promote(self, term: int) -> None:
        now = self.clock()
        ttls = self._read_local(_lease_table)
        extra = self.election_timeout_s
        self._ttls = ttls[1]
        self._version = ttls[0]
        self._deadlines = {lease_id: now + ttl + extra for lease_id, ttl in self._ttls.items()}
        self._heap = [(deadline, lease_id) for lease_id, deadline in self._deadlines.items()]
        heapq.heapify(self._heap)
        self.primary_term = term
        self._candidate = None
        self._primary.set()
        if self._deadlines:
            log.info("lessor: primary at term %d; %d leases get their full TTL again", term,
                     len(self._deadlines))

    def _demote(self) -> None:
        if self.primary_term or self._deadlines:
            self.primary_term = 0
            self._deadlines = {}
            self._ttls = {}
            self._heap = []
            self._revoking.clear()
        self._primary.clear()

    async def wait_primary(self, timeout: float) -> None:
        """Return once this node is the primary lessor; NotLeader if it is not the leader
        (at once or within `timeout`)."""
        if self.primary_term and self._is_leader():
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if not self._is_leader():
                raise self._not_leader()
            self.check()
            if self.primary_term:
                return
            left = deadline - loop.time()
            if left <= 0:
                raise NotLeader("the new leader has not taken over the leases yet")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, self.check_s)):
                    await self._primary.wait()

    # -- the table

    def _sync(self) -> None:
        """Take in the grants and revokes applied since the last look (new leases start
        their TTL now)."""
        version, ttls = self._read_local(_lease_table_if_changed(self._version))
        if ttls is None:
            return
        now = self.clock()
        deadlines = self._deadlines
        for lease_id in [i for i in deadlines if i not in ttls]:
            del deadlines[lease_id]
            self._revoking.discard(lease_id)
        for lease_id, ttl in ttls.items():
            if lease_id not in deadlines:
                deadline = deadlines[lease_id] = now + ttl
                heapq.heappush(self._heap, (deadline, lease_id))
        self._ttls = ttls
        self._version = version

    def renew(self, lease_id: int) -> int:
        """A keep-alive: the lease's granted TTL, its deadline reset; 0 if unknown or
        expired (etcd's answer). NotLeader unless primary."""
        if not self.primary_term or not self._is_leader():
            raise self._not_leader()
        self._sync()
        now = self.clock()
        deadline = self._deadlines.get(lease_id)
        if deadline is None or deadline <= now or lease_id in self._revoking:
            return 0
        ttl = self._ttls[lease_id]
        deadline = self._deadlines[lease_id] = now + ttl
        heapq.heappush(self._heap, (deadline, lease_id))
        return ttl

    def remaining(self, lease_id: int) -> int:
        """Whole seconds left before the lease expires; -1 if unknown. NotLeader unless
        primary."""
        if not self.primary_term or not self._is_leader():
            raise self._not_leader()
        self._sync()
        deadline = self._deadlines.get(lease_id)
        if deadline is None:
            return -1
        return max(0, int(deadline - self.clock()))

    # -- expiry

    def _expire(self) -> None:
        now = self.clock()
        heap = self._heap
        deadlines = self._deadlines
        budget = max(1, int(REVOKES_PER_S * self.check_s)) - len(self._revoking)
        while heap and heap[0][0] <= now and budget > 0:
            deadline, lease_id = heapq.heappop(heap)
            if deadlines.get(lease_id) != deadline or lease_id in self._revoking:
                continue  # renewed since (a later entry holds it), or gone
            self._revoking.add(lease_id)
            budget -= 1
            task = asyncio.create_task(self._revoke(lease_id, deadline))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _revoke(self, lease_id: int, deadline: float) -> None:
        request = LeaseRevokeRequest(ID=lease_id).SerializeToString()
        try:
            result = await self._propose(KV_LEASE_REVOKE, request)
        except DengineError as e:
            # Not proposed or outcome unknown (leadership lost, timeout): try again at the
            # next check while still primary; a new leader starts the TTL over.
            log.debug("lessor: revoke of expired lease %x failed: %s", lease_id, e.message)
            self._revoking.discard(lease_id)
            if self._deadlines.get(lease_id) == deadline:
                heapq.heappush(self._heap, (deadline, lease_id))
            return
        if not isinstance(result.response, KvError):
            self.revoked += 1
            log.debug("lessor: lease %x expired and revoked", lease_id)


def _lease_table(store: Any) -> tuple[int, dict[int, int]]:
    return int(store.leases.version), store.leases.ttls()


def _lease_table_if_changed(version: int) -> Callable[[Any], tuple[int, dict[int, int] | None]]:
    def read(store: Any) -> tuple[int, dict[int, int] | None]:
        current = int(store.leases.version)
        return current, None if current == version else store.leases.ttls()
    return read

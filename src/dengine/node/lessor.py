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
before). Then every lease gets its full TTL again, plus one election timeout, as etcd's
lessor Promote does (a margin: with keep-alives confirmed, below, every renewal happened
before this node was elected); so no failover expires a lease before its last
keep-alive + TTL.
A node that stops leading forgets the deadlines (etcd's Demote).

Keep-alives (`keep_alive`) and remaining TTLs (`remaining`) are answered by the primary
only. A keep-alive first confirms the leadership with a ReadIndex round (`confirm`), as
etcd's LeaseRenew does since 3.5.8 (etcd issue 15247): a deposed leader that has not
noticed yet would otherwise renew a lease the new leader never hears of, and the new
leader would expire it before the client's keep-alive + TTL. A round asked after the
keep-alive arrived and acknowledged by a quorum at this term means no later leader was
elected before it; every later one promotes after it, so gives the lease its full TTL
from a time after the keep-alive.
Expired leases are revoked at most `REVOKES_PER_S` per second (etcd's leaseRevokeRate).
The deadlines themselves are `dengine.kv.lease_clock.LeaseClock` (pure: the simulator
drives the same code with its virtual clocks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from dengine.errors import DengineError, KvError, NotLeader
from dengine.kv import LINEARIZABLE
from dengine.kv.lease_clock import LeaseClock
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
        confirm: Callable[[float], Awaitable[Any]],
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
        self._confirm = confirm
        self._not_leader = not_leader or (
            lambda: NotLeader("not the leader: leases are kept by the leader"))
        self.clock = clock
        self.check_s = check_s
        self.leases = LeaseClock(grace=election_timeout_s)
        self._candidate: tuple[int, int] | None = None  # (term, index to apply first)
        self._tasks: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._primary = asyncio.Event()
        self._table: Any = None  # the store's lease table at the last look (`_sync`)
        self.revoked = 0  # expiry revokes applied (tests, status)

    @property
    def primary_term(self) -> int:
        """The term this lessor is primary at (0: not primary)."""
        return self.leases.primary_term

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
        if self.leases.primary_term != term:
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
        version, ttls, self._table = self._read_local(_lease_table)
        self.leases.promote(term, version, ttls, self.clock())
        self._candidate = None
        self._primary.set()
        if ttls:
            log.info("lessor: primary at term %d; %d leases get their full TTL again", term,
                     len(ttls))

    def _demote(self) -> None:
        if self.leases.primary_term or len(self.leases):
            self.leases.demote()
        self._primary.clear()

    async def wait_primary(self, timeout: float) -> None:
        """Return once this node is the primary lessor; NotLeader if it is not the leader
        (at once or within `timeout`)."""
        if self.leases.primary_term and self._is_leader():
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if not self._is_leader():
                raise self._not_leader()
            self.check()
            if self.leases.primary_term:
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
        their TTL now): the changes themselves, or the whole table when they are no
        longer all known."""
        version, changes, ttls, self._table = self._read_local(
            _lease_changes(self.leases.version, self._table))
        if changes is not None:
            if changes:
                self.leases.update(version, changes, self.clock())
        else:
            self.leases.sync(version, ttls, self.clock())

    def _check_primary(self) -> None:
        if not self.leases.primary_term or not self._is_leader():
            raise self._not_leader()
        self._sync()

    async def keep_alive(self, lease_id: int, timeout: float) -> int:
        """A client's keep-alive: once primary and the leadership confirmed by a quorum
        (see the module docstring), `renew`. NotLeader (or the read's Unavailable,
        Timeout) when not confirmed within `timeout` seconds."""
        return (await self.keep_alive_many((lease_id,), timeout))[0]

    async def keep_alive_many(self, lease_ids: Sequence[int], timeout: float) -> list[int]:
        """Keep-alives of many leases under one confirmation (`keep_alive`'s)."""
        deadline = self.clock() + timeout
        await self.wait_primary(timeout)
        await self._confirm(max(0.0, deadline - self.clock()))
        return [self.renew(lease_id) for lease_id in lease_ids]

    def renew(self, lease_id: int) -> int:
        """The lease's granted TTL, its deadline reset; 0 if unknown or expired (etcd's
        answer). NotLeader unless primary. Only after a confirmation (`keep_alive`)."""
        self._check_primary()
        return self.leases.renew(lease_id, self.clock())

    def remaining(self, lease_id: int) -> int:
        """Whole seconds left before the lease expires; -1 if unknown. NotLeader unless
        primary."""
        self._check_primary()
        return self.leases.remaining(lease_id, self.clock())

    # -- expiry

    def _expire(self) -> None:
        budget = max(1, int(REVOKES_PER_S * self.check_s)) - len(self.leases.revoking)
        for lease_id in self.leases.expired(self.clock(), budget):
            task = asyncio.create_task(self._revoke(lease_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _revoke(self, lease_id: int) -> None:
        request = LeaseRevokeRequest(ID=lease_id).SerializeToString()
        try:
            result = await self._propose(KV_LEASE_REVOKE, request)
        except DengineError as e:
            # Not proposed or outcome unknown (leadership lost, timeout): try again at a
            # later check while still primary; a new leader starts the TTL over.
            log.debug("lessor: revoke of expired lease %x failed: %s", lease_id, e.message)
            self.leases.revoke_failed(lease_id)
            return
        if not isinstance(result.response, KvError):
            self.revoked += 1
            log.debug("lessor: lease %x expired and revoked", lease_id)


def read_index_round(node: Any) -> Callable[[float], Awaitable[Any]]:
    """A `Lessor`'s `confirm` on a `dengine.node.node.Node`: a linearizable read of
    nothing (one ReadIndex round, batched with the node's other linearizable reads)."""
    return lambda timeout: node.read_query(_nothing, LINEARIZABLE, timeout)


def _nothing(store: Any) -> None:
    return None


def _lease_table(store: Any) -> tuple[int, dict[int, int], Any]:
    return int(store.leases.version), store.leases.ttls(), store.leases


_Changes = tuple[int, list[tuple[int, int | None]] | None, dict[int, int] | None, Any]


def _lease_changes(version: int, known: Any) -> Callable[[Any], _Changes]:
    """A read of (the table's version, its changes since `version` or None, the whole
    table when they are not known, the table) when the last look was at `version` of
    table `known` (a restore replaces the table: its versions count anew)."""
    def read(store: Any) -> _Changes:
        table = store.leases
        current = int(table.version)
        changes = None
        if table is known and version >= 0:
            if current == version:
                return current, [], None, table
            changes = table.changes_since(version)
        return current, changes, None if changes is not None else table.ttls(), table
    return read

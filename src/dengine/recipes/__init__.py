"""Coordination recipes on etcd's data model: locks (with fencing tokens), leader
elections and a service registry, written against the one API of dengine (`dengine.api`),
so that they run on the embedded `Engine`, a `Client` and a `SyncClient` alike, and
interoperate with etcd's own recipes (etcdctl `lock`/`elect`, etcd's `concurrency`
package, the `v3lockpb`/`v3electionpb` services): the same keys, the same order.

`client.lock(name, ttl=10)`, `client.election(name)` (see `lock.py`, `election.py`; the
front doors get them from `RecipeCalls`). A service registry needs no recipe of its own:
a lease, a put under a prefix and a watch (README, "Locks, elections, a service registry").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dengine.api import Key
from dengine.recipes.common import NoElectionLeader, NotElectionLeader, SessionExpired
from dengine.recipes.election import Campaign, Election, Leadership
from dengine.recipes.lock import Lock

__all__ = ["Campaign", "Election", "Leadership", "Lock", "NoElectionLeader",
           "NotElectionLeader", "RecipeCalls", "SessionExpired"]


class RecipeCalls:
    """`lock` and `election` on a front door (a mixin of `Engine` and `Client`: both
    speak `dengine.api`, which is all the recipes use)."""

    def lock(self, name: Key, ttl: int = 10, *, timeout: float | None = None,
             on_lost: Callable[[], Any] | None = None) -> Lock:
        """`async with x.lock(b"name", ttl=10) as lock:` etcd's lock recipe (FIFO; a
        waiter that times out or is cancelled leaves the queue); `lock.fencing_token`
        strictly increases from holder to holder; `lock.lost` is set if its lease ends
        while held. See `dengine.recipes.lock`."""
        return Lock(self, name, ttl, timeout=timeout, on_lost=on_lost)

    def election(self, name: Key) -> Election:
        """An election: `campaign(value, ttl=10)` (async context manager), `leader()`,
        `observe()`, `proclaim(value)`, `resign()`. See `dengine.recipes.election`."""
        return Election(self, name)

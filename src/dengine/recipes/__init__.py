"""Coordination recipes on etcd's data model: locks (with fencing tokens), leader
elections and a service registry, written against the one API of dengine (`dengine.api`),
so that they run on the embedded `Engine`, a `Client` and a `SyncClient` alike, and
interoperate with etcd's own recipes (etcdctl `lock`/`elect`, etcd's `concurrency`
package, the `v3lockpb`/`v3electionpb` services): the same keys, the same order.

`client.lock(name, ttl=10)`, `client.election(name)` (see `lock.py`, `election.py`);
`registry.register(...)`/`registry.live(...)` (see `registry.py`).
"""

from __future__ import annotations

from dengine.recipes.common import NoElectionLeader, NotElectionLeader, SessionExpired
from dengine.recipes.election import Campaign, Election, Leadership
from dengine.recipes.lock import Lock

__all__ = ["Campaign", "Election", "Leadership", "Lock", "NoElectionLeader",
           "NotElectionLeader", "SessionExpired"]

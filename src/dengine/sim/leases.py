"""`lease`: etcd's leases under every fault, with the leader's expiry clock on each node's
own (skewed) virtual clock (`dengine.kv.lease_clock.LeaseClock`, the code the node's
lessor runs).

Clients grant leases (ID chosen by the client, TTL `TTL_UNITS` x 100 ms), attach keys to
them, keep them alive at the leader, and now and then abandon one (it must expire). Each
node's clock advances `TICK_MS` per tick of its own, so it runs up to 10 % off real time.
A leader is primary once it applied the entries up to its last index when elected, then
gives every lease its TTL + one election timeout; on each tick it proposes a revoke for
every lease past its deadline.

Checked: no lease is revoked by expiry before its last successful keep-alive (or its
grant) + TTL, less the clocks' 10 % and one tick (a node's clock reads the time of its
last tick) ("lease expiry"), whichever node renewed it and
whichever leader expires it; the replicas' lease tables are part of the snapshots the
simulator compares ("state machine safety"). Stats: grants, renewals, expiry revokes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dengine.errors import NotLeader, Unavailable
from dengine.kv.lease_clock import LeaseClock
from dengine.proto import WriteCommand
from dengine.proto.etcd import rpc_pb2 as pb
from dengine.sim.config import ELECTION_TICK, KEYS, MAX_SKEW_MS, TICK_MS
from dengine.sim.invariants import InvariantViolation
from dengine.sim.lincheck import Op

if TYPE_CHECKING:
    from dengine.sim.nodes import SimNode
    from dengine.sim.simulator import Simulator

UNIT_MS = 100  # one TTL "second" of the simulated world
TTL_UNITS = 3
GRACE_UNITS = ELECTION_TICK * TICK_MS / UNIT_MS  # an election timeout
SLOWEST = (TICK_MS - MAX_SKEW_MS) / TICK_MS  # real time per local time, at the fastest clock
# A node's clock reads the time of its last tick: a keep-alive between two ticks is dated
# up to one (real) tick period early.
RESOLUTION_MS = TICK_MS + MAX_SKEW_MS


def _grant(lease_id: int, ttl: int = TTL_UNITS) -> bytes:
    request = pb.LeaseGrantRequest(ID=lease_id, TTL=ttl).SerializeToString()
    return WriteCommand(lease_grant=request).SerializeToString()


def _revoke(lease_id: int) -> bytes:
    request = pb.LeaseRevokeRequest(ID=lease_id).SerializeToString()
    return WriteCommand(lease_revoke=request).SerializeToString()


class LeaseWorkload:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.local_ms: dict[int, int] = {}  # each node's own clock
        self.clocks: dict[tuple[int, int], LeaseClock] = {}  # (node, incarnation): volatile
        self.candidate: dict[int, tuple[int, int]] = {}  # node -> (term, index to apply)
        self.held: dict[int, int] = {}  # client -> its lease
        self.renewed: dict[int, int] = {}  # lease -> real time of its last keep-alive
        self.next_id = 0
        for name in ("lease_grants", "lease_renewals", "lease_expiry_revokes",
                     "lease_abandoned"):
            sim.stats.setdefault(name, 0)

    def _clock(self, node: SimNode) -> LeaseClock:
        key = (node.id, node.incarnation)
        clock = self.clocks.get(key)
        if clock is None:
            clock = self.clocks[key] = LeaseClock(grace=GRACE_UNITS)
        return clock

    def _now(self, node: SimNode) -> float:
        return self.local_ms.get(node.id, 0) / UNIT_MS

    def _primary(self, node: SimNode) -> LeaseClock | None:
        """The node's clock if it is the primary (promoting it when it may be)."""
        core = node.core
        assert core is not None
        clock = self._clock(node)
        if not core.is_leader():
            clock.demote()
            return None
        now = self._now(node)
        leases = node.kv.leases
        if clock.primary_term != core.term:
            clock.demote()
            cand = self.candidate.get(node.id)
            if cand is None or cand[0] != core.term:
                cand = self.candidate[node.id] = (core.term, core.log.last_index())
            if node.applied < cand[1]:
                return None
            clock.promote(core.term, leases.version, leases.ttls(), now)
        clock.sync(leases.version, leases.ttls(), now)
        return clock

    def _keep_alive_clock(self, node: SimNode) -> LeaseClock:
        """The clock a keep-alive sent to `node` renews on: NotLeader on a follower,
        Unavailable on a leader not yet primary (as the node's lessor answers)."""
        assert node.core is not None
        if not node.core.is_leader():
            raise NotLeader(leader_id=node.core.leader_id)
        clock = self._primary(node)
        if clock is None:
            raise Unavailable("the leader is not primary yet")
        return clock

    def on_tick(self, node: SimNode) -> None:
        self.local_ms[node.id] = self.local_ms.get(node.id, 0) + TICK_MS
        clock = self._primary(node)
        if clock is None:
            return
        assert node.core is not None
        for lease_id in clock.expired(self._now(node), 100):
            self._check_expiry(node, lease_id)
            node.core.propose([_revoke(lease_id)])
            self.sim.stats["lease_expiry_revokes"] += 1

    def _check_expiry(self, node: SimNode, lease_id: int) -> None:
        last = self.renewed.get(lease_id)
        ttl = node.kv.leases.info(lease_id)
        if last is None or ttl is None:
            return
        alive = self.sim.now - last
        if alive < ttl[0] * UNIT_MS * SLOWEST - RESOLUTION_MS:
            raise InvariantViolation(
                "lease expiry", node.id,
                f"lease {lease_id} expired by node {node.id} at {self.sim.now} ms, "
                f"{alive} ms after its last keep-alive (TTL {ttl[0] * UNIT_MS} ms)")

    # -- clients

    def choose(self, client: int) -> float:
        return self.sim.rng.random()

    def act(self, client: int, node: SimNode, r: float) -> None:
        sim = self.sim
        lease_id = self.held.get(client)
        if lease_id is None:
            self.next_id += 1
            lease_id = client * 1_000_000 + self.next_id
            sim.client_propose(client, node, _grant(lease_id))  # (NotLeader: nothing done)
            self.held[client] = lease_id
            self.renewed[lease_id] = sim.now
            sim.stats["lease_grants"] += 1
            return
        if r < 0.05:  # walk away: the lease must expire by itself
            del self.held[client]
            sim.stats["lease_abandoned"] += 1
            return
        if r < 0.3:
            key = sim.rng.choice(KEYS)
            request = pb.PutRequest(key=key, value=b"l%d" % lease_id, lease=lease_id)
            sim.client_propose(client, node, WriteCommand(
                put=request.SerializeToString()).SerializeToString())
            return
        clock = self._keep_alive_clock(node)
        if clock.renew(lease_id, self._now(node)):
            self.renewed[lease_id] = sim.now
            sim.stats["lease_renewals"] += 1
        elif lease_id not in node.kv.leases and sim.now - self.renewed[lease_id] > 1000:
            del self.held[client]  # gone (expired, or its grant never applied): a new one

    def observed(self, op: Op) -> None:
        return

    def check(self, history: list[Op]) -> None:
        return

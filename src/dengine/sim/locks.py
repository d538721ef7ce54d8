"""`lock`: etcd's lock recipe (`dengine.recipes.lock`) under every fault, on the leases
the `lease` workload runs (expiry by the leader's skewed clock, through the log).

Each client loops: grant a lease; claim (one txn: create `lock/<lease hex>` bound to the
lease unless it exists, and read the first created key of `lock/`: `recipes.common.claim`);
if that key is not its own, look again (one txn: the last key created before its own, and
its own key: `recipes.common.wait_deletes`) until none is left; then enter the critical
section by writing `in <token>` to `lock-cs`, stay a few actions, write `out <token>`,
and release by revoking the lease. The token is the create revision of its key (the
fencing token); both records are fenced as the recipe documents (the txn compares the
key's create revision with the token), so a holder whose lease ended writes nothing.
Between actions each client keeps its lease alive at the leader every RENEW_MS; one that
is busy or cut off for its TTL loses the key by expiry, and the next waiter takes over.
Now and then a waiter or a holder walks away (dies: its lease must expire), and a holder
pauses for 1.5 TTL (no keep-alives) and then goes on: its fenced records must fail once
its lease expired.
A waiter learns of its predecessor's delete by looking again (the recipe waits on a
watch of that key first; the decision is the same txn).

Checked afterwards, on the committed history (a node's changelog, which holds every
revision): each `in T` was written while T's key was the first created live key of
`lock/` (the lock was T's), and while no other holder's section was open (a section
ends with its `out`, or when its key is deleted: its lease ended); the tokens of
successive holders strictly increase ("lock safety").
Waiters also read the leader as an election's `leader()` does (the first created key:
the same recipe is etcd's election, a candidate's key holds its proposal), through a
linearizable (read index or lease) read: a read called after another one returned never
sees an earlier leader ("election order"). (A record whose outcome the client
did not learn is sent again: the same holder may write `in T` twice, even after its
`out T`, while its key lives; that is no other holder's section.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dengine.kv.mvcc import Applied, Change, MvccStore
from dengine.kv.ops import prefix_range_end
from dengine.kv.packed import META_SIZE, unpack_meta
from dengine.proto.etcd import rpc_pb2 as pb
from dengine.sim.invariants import InvariantViolation
from dengine.sim.leases import UNIT_MS, LeaseWorkload, _grant, _revoke
from dengine.sim.lincheck import Op
from dengine.sim.workloads import Done, txn_command

if TYPE_CHECKING:
    from dengine.sim.nodes import SimNode
    from dengine.sim.simulator import Simulator

PREFIX = b"lock/"
CS_KEY = b"lock-cs"
TTL_UNITS = 5  # 500 ms: several round trips, a few client timeouts
RENEW_MS = TTL_UNITS * UNIT_MS // 3  # as a client's lease(): every TTL / 3
PAUSE_MS = TTL_UNITS * UNIT_MS * 3 // 2  # past the TTL from the last keep-alive


@dataclass
class Contender:
    """One client's place in the recipe."""

    phase: str = "grant"  # grant, claim, wait, enter, hold, exit, release
    lease: int = 0
    token: int = 0
    holds: int = 0  # actions left in the critical section
    renew_at: int = 0  # sim time of the next keep-alive
    paused_until: int = 0  # no action at all (no keep-alive either) until then

    @property
    def key(self) -> bytes:
        return PREFIX + b"%x" % self.lease

    @property
    def proposal(self) -> bytes:
        """What it proclaims as a candidate of the election (its lease's client)."""
        return b"c%d" % (self.lease // 1_000_000)


def _range(key: bytes, **fields: object) -> pb.RequestOp:
    return pb.RequestOp(request_range=pb.RangeRequest(key=key, **fields))  # type: ignore[arg-type]


def first_created() -> pb.RequestOp:
    return _range(PREFIX, range_end=prefix_range_end(PREFIX), limit=1,
                  sort_target=pb.RangeRequest.CREATE, sort_order=pb.RangeRequest.ASCEND)


def claim_request(c: Contender) -> pb.TxnRequest:
    """recipes.common.claim's txn."""
    return pb.TxnRequest(
        compare=[pb.Compare(key=c.key, target=pb.Compare.CREATE, result=pb.Compare.EQUAL,
                            create_revision=0)],
        success=[pb.RequestOp(request_put=pb.PutRequest(key=c.key, value=c.proposal,
                                                         lease=c.lease)),
                 first_created()],
        failure=[_range(c.key), first_created()])


def look_request(c: Contender) -> pb.TxnRequest:
    """recipes.common.wait_deletes's txn: the last key created before ours, and ours."""
    return pb.TxnRequest(success=[
        _range(PREFIX, range_end=prefix_range_end(PREFIX), limit=1,
               sort_target=pb.RangeRequest.CREATE, sort_order=pb.RangeRequest.DESCEND,
               max_create_revision=c.token - 1),
        _range(c.key)])


def record_request(c: Contender, what: bytes) -> pb.TxnRequest:
    """A critical-section record fenced by the token (recipes.lock's documented guard)."""
    return pb.TxnRequest(
        compare=[pb.Compare(key=c.key, target=pb.Compare.CREATE, result=pb.Compare.EQUAL,
                            create_revision=c.token)],
        success=[pb.RequestOp(request_put=pb.PutRequest(
            key=CS_KEY, value=b"%s %d" % (what, c.token)))])


class LockWorkload(LeaseWorkload):
    def __init__(self, sim: Simulator) -> None:
        super().__init__(sim)
        self.contenders: dict[int, Contender] = {}
        self.observations: list[Observation] = []
        for name in ("lock_sections", "lock_waits", "lock_lost", "lock_releases",
                     "lock_walked_away", "lock_paused"):
            sim.stats.setdefault(name, 0)

    def act(self, client: int, node: SimNode, r: float) -> None:
        sim = self.sim
        c = self.contenders.setdefault(client, Contender())
        if sim.now < c.paused_until:
            return
        if c.lease and sim.now >= c.renew_at:
            self._keep_alive(c, node)
            return
        if c.phase in ("wait", "hold") and r < 0.03:
            sim.stats["lock_walked_away"] += 1  # dies: its key goes when its lease expires
            self._restart(c)
            return
        if c.phase == "hold" and r < 0.15:
            sim.stats["lock_paused"] += 1  # paused past its TTL: its records must fail
            c.paused_until = sim.now + PAUSE_MS
            return
        if c.phase == "grant":
            self.next_id += 1
            c.lease = client * 1_000_000 + self.next_id
            self.renewed[c.lease] = sim.now
            c.renew_at = sim.now + RENEW_MS
            sim.client_propose(client, node, _grant(c.lease, TTL_UNITS),
                               done=self._for(c, self._granted))
            sim.stats["lease_grants"] += 1
        elif c.phase == "claim":
            sim.client_propose(client, node, txn_command(claim_request(c)),
                               done=self._for(c, self._claimed))
        elif c.phase == "wait" and r > 0.7:
            self._read_leader(client, node, sim.cfg.lease_reads and r > 0.85)
        elif c.phase == "wait":
            sim.client_propose(client, node, txn_command(look_request(c)),
                               done=self._for(c, self._looked))
        elif c.phase in ("enter", "exit"):
            what = b"in" if c.phase == "enter" else b"out"
            sim.client_propose(client, node, txn_command(record_request(c, what)),
                               done=self._for(c, self._recorded))
        elif c.phase == "hold":
            c.holds -= 1
            if c.holds <= 0:
                c.phase = "exit"
        elif c.phase == "release":
            sim.client_propose(client, node, _revoke(c.lease),
                               done=self._for(c, self._released))

    @staticmethod
    def _for(c: Contender, then: Callable[[Contender, Applied | None], None]) -> Done:
        """`then` for the outcome of a request made in the contender's present phase; the
        outcome of an earlier one (it timed out and was sent again) comes too late."""
        phase, lease = c.phase, c.lease

        def done(applied: Applied | None) -> None:
            if c.phase == phase and c.lease == lease:
                then(c, applied)

        return done

    def _read_leader(self, client: int, node: SimNode, lease: bool) -> None:
        """An election's leader(): the first created key, by a linearizable read."""
        call = self.sim.now
        self.sim.client_read(client, node, lease,
                             serve=lambda store: self._observe(call, store))

    def _observe(self, call: int, store: MvccStore) -> None:
        kvs = store.range(first_created().request_range).kvs
        if kvs:
            kv = kvs[0]
            self.observations.append(Observation(call, self.sim.now, kv.create_revision,
                                                 kv.key, kv.value))

    def _keep_alive(self, c: Contender, node: SimNode) -> None:
        clock = self._keep_alive_clock(node)
        c.renew_at = self.sim.now + RENEW_MS
        if clock.renew(c.lease, self._now(node)):
            self.renewed[c.lease] = self.sim.now
            self.sim.stats["lease_renewals"] += 1

    @staticmethod
    def _response(applied: Applied | None, cls: type) -> object | None:
        """The etcd response of an applied command, None if unknown or an error."""
        if applied is None or not isinstance(applied.response, cls):
            return None
        return applied.response

    def _granted(self, c: Contender, applied: Applied | None) -> None:
        if self._response(applied, pb.LeaseGrantResponse) is not None:
            c.phase = "claim"
        elif applied is not None:
            self._lost(c)  # refused: another lease

    def _claimed(self, c: Contender, applied: Applied | None) -> None:
        if applied is not None and not isinstance(applied.response, pb.TxnResponse):
            self._lost(c)  # the lease is gone (expired before the claim applied)
            return
        resp = self._response(applied, pb.TxnResponse)
        if resp is None:
            return  # unknown: claim again (the txn is idempotent)
        assert isinstance(resp, pb.TxnResponse)
        if resp.succeeded:
            c.token = resp.header.revision
        else:
            c.token = resp.responses[0].response_range.kvs[0].create_revision
        first = resp.responses[1].response_range.kvs
        self._turn(c, bool(first) and first[0].create_revision == c.token)

    def _turn(self, c: Contender, mine: bool) -> None:
        """After a claim or a look: hold it, or wait."""
        if mine:
            c.phase = "enter"
        else:
            c.phase = "wait"
            self.sim.stats["lock_waits"] += 1

    def _looked(self, c: Contender, applied: Applied | None) -> None:
        resp = self._response(applied, pb.TxnResponse)
        if resp is None:
            return
        assert isinstance(resp, pb.TxnResponse)
        before, own = (resp.responses[0].response_range.kvs,
                       resp.responses[1].response_range.kvs)
        if not own or own[0].create_revision != c.token:
            self._lost(c)  # the lease ended while waiting
        else:
            self._turn(c, not before)

    def _recorded(self, c: Contender, applied: Applied | None) -> None:
        resp = self._response(applied, pb.TxnResponse)
        if resp is None:
            return  # unknown: write it again (the check allows a repeated record)
        assert isinstance(resp, pb.TxnResponse)
        if not resp.succeeded:
            self._lost(c)  # the key is gone: the lock is lost
        elif c.phase == "enter":
            c.phase, c.holds = "hold", self.sim.rng.randint(0, 3)
            self.sim.stats["lock_sections"] += 1
        else:
            c.phase = "release"

    def _released(self, c: Contender, applied: Applied | None) -> None:
        if applied is not None:
            self.sim.stats["lock_releases"] += 1
            self._restart(c)

    def _lost(self, c: Contender) -> None:
        """Leave the lease to expire (as a holder that was cut off would) and start over."""
        self.sim.stats["lock_lost"] += 1
        self._restart(c)

    @staticmethod
    def _restart(c: Contender) -> None:
        c.phase, c.lease, c.token, c.holds = "grant", 0, 0, 0

    def check(self, history: list[Op]) -> None:
        node = max((n for n in self.sim.nodes.values() if n.up), key=lambda n: n.applied)
        check_lock_history(node.kv.changes())
        check_observations(self.observations)
        self.sim.stats["leader_observations"] = len(self.observations)


@dataclass(frozen=True)
class Observation:
    """A linearizable read of the election's leader (the first created key of `lock/`),
    called and answered at these sim times."""

    call: int
    ret: int
    revision: int  # the leader key's create revision
    key: bytes
    value: bytes


def check_observations(observations: list[Observation]) -> None:
    """Leaders are observed in election order: a read called after another returned
    never sees an earlier leader, and each leader's value is its own proposal."""
    done = sorted(observations, key=lambda o: o.ret)
    latest: Observation | None = None
    i = 0
    for o in sorted(observations, key=lambda o: o.call):
        while i < len(done) and done[i].ret < o.call:
            if latest is None or done[i].revision > latest.revision:
                latest = done[i]
            i += 1
        if latest is not None and o.revision < latest.revision:
            raise InvariantViolation(
                "election order", 0,
                f"a read called at {o.call} ms saw the leader created at {o.revision} after "
                f"one answered at {latest.ret} ms saw the leader created at "
                f"{latest.revision}")
        lease = int(o.key[len(PREFIX):], 16)
        if o.value != b"c%d" % (lease // 1_000_000):
            raise InvariantViolation(
                "election order", 0, f"leader {o.key!r} proclaims {o.value!r}")


def check_lock_history(changes: Iterable[Change]) -> None:
    """The lock safety checks of the module docstring over a store's changelog."""
    live: dict[bytes, int] = {}  # key of lock/ -> its create revision
    open_token = 0  # the section open now (0: none)
    last_token = 0
    for change in changes:
        rev, key, new = change.revision, change.key, change.new
        if key.startswith(PREFIX):
            if new is None:
                created = live.pop(key, 0)
                if created and created == open_token:
                    open_token = 0  # its lease ended: the section ends with it
            elif key not in live:
                live[key] = unpack_meta(new)[0]
            continue
        if key != CS_KEY or new is None:
            continue
        what, _, token_text = new[META_SIZE:].partition(b" ")
        token = int(token_text)
        if what == b"out":
            if open_token == token:
                open_token = 0
            continue
        if token == open_token:
            continue  # the same holder's record, written again
        first = min(live.values(), default=0)
        if first != token:
            raise InvariantViolation(
                "lock safety", 0,
                f"revision {rev}: holder {token} entered while the first lock key was "
                f"created at {first or 'none'}")
        if open_token:
            raise InvariantViolation(
                "lock safety", 0,
                f"revision {rev}: holder {token} entered while holder {open_token}'s "
                "critical section was open")
        if token < last_token:  # (equal: the last holder again, a record sent twice)
            raise InvariantViolation(
                "lock safety", 0,
                f"revision {rev}: fencing token {token} after {last_token}")
        open_token = last_token = token

"""What the simulated clients do (`SimConfig.workload`), and how their history is checked.

* `kv`: linearizable (and lease) gets, puts and deletes on a few keys; the history is
  checked with lincheck.
* `cas`: the same plus compare-and-swaps (an etcd txn "value(k) == expected, or
  version(k) == 0 for absent, then put k") and puts sent as etcd PutRequests; checked with
  lincheck's cas model.
* `lease`: dengine.sim.leases: grants, keep-alives and expiry by the leader's (skewed)
  clock; no lease expires before its last keep-alive + TTL.
* `lock`: dengine.sim.locks: etcd's lock recipe on those leases; no two holders'
  critical sections overlap and fencing tokens increase (checked on the store's history).
* `bank`: dengine.sim.bank's transfers: ranges over every account (read index, lease or
  serializable), then a txn guarded by both accounts' mod_revision; checked with
  check_bank on every read, and on every node's final state.

Every request is built with the generated etcd messages and proposed as a WriteCommand
carrying its bytes, as the server does (docs/etcd-model.md); the simulator applies them with
the store the nodes use (kv.mvcc.MvccStore).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dengine.errors import DengineError
from dengine.kv import encode_delete, encode_insert
from dengine.kv.mvcc import Applied, MvccStore
from dengine.proto import WriteCommand
from dengine.proto.etcd import rpc_pb2 as pb
from dengine.sim.bank import BankRead, BankSpec, BankWrite, balances_of, check_bank, plan_transfer
from dengine.sim.config import KEYS
from dengine.sim.invariants import InvariantViolation
from dengine.sim.lincheck import Op, check

if TYPE_CHECKING:
    from dengine.sim.leases import LeaseWorkload
    from dengine.sim.nodes import SimNode
    from dengine.sim.simulator import Simulator

WORKLOADS = ("kv", "cas", "bank", "lease", "lock")

Done = Callable[[Applied | None], None]  # a write's apply outcome; None: unknown


def txn_command(req: pb.TxnRequest) -> bytes:
    return WriteCommand(txn=req.SerializeToString()).SerializeToString()


def put_command(key: bytes, value: bytes) -> bytes:
    return WriteCommand(put=pb.PutRequest(key=key, value=value).SerializeToString()
                        ).SerializeToString()


def cas_request(key: bytes, expected: bytes | None, new: bytes) -> pb.TxnRequest:
    """etcd's compare-and-swap: value == expected (version == 0: absent), then put."""
    if expected is None:
        cmp = pb.Compare(key=key, target=pb.Compare.VERSION, result=pb.Compare.EQUAL,
                         version=0)
    else:
        cmp = pb.Compare(key=key, target=pb.Compare.VALUE, result=pb.Compare.EQUAL,
                         value=expected)
    return pb.TxnRequest(compare=[cmp], success=[_put(key, new)])


def _put(key: bytes, value: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))


def resolve_op(op: Op, applied: Applied | None, now: int) -> Op | None:
    """A history op whose write took effect returns at `now`; a cas says whether it
    swapped (None: it stays open, its outcome unknown)."""
    if op.kind != "cas":
        return dataclasses.replace(op, ret=now)
    swapped = succeeded(applied)
    return None if swapped is None else dataclasses.replace(op, output=swapped, ret=now)


def succeeded(applied: Applied | None) -> bool | None:
    """Whether a txn took its success branch; None if unknown or not a txn."""
    if applied is None or not isinstance(applied.response, pb.TxnResponse):
        return None
    return bool(applied.response.succeeded)


class RegisterWorkload:
    """`kv` and `cas`: register ops on KEYS, recorded in `sim.history` for lincheck."""

    def __init__(self, sim: Simulator, cas: bool) -> None:
        self.sim = sim
        self.cas = cas
        self.seen: dict[tuple[int, Any], Any] = {}  # client's last view of a key

    def choose(self, client: int) -> tuple[float, bytes]:
        rng = self.sim.rng
        return rng.random(), rng.choice(KEYS)

    def act(self, client: int, node: SimNode, choice: tuple[float, bytes]) -> None:
        sim = self.sim
        r, key = choice
        if r >= 0.45:
            lease = sim.cfg.lease_reads and r > 0.6
            sim.client_read(client, node, lease, key=key)
            return
        sim._next_value += 1
        value = f"v{sim._next_value}".encode()
        if r < 0.05:
            sim.client_propose(client, node, encode_delete(key),
                               Op(client, "delete", key, None, None, sim.now, None))
        elif self.cas and r < 0.25:
            expected = self.seen.get((client, key))
            sim.client_propose(client, node, txn_command(cas_request(key, expected, value)),
                               Op(client, "cas", key, value, None, sim.now, None,
                                  expected=expected))
        else:
            command = (put_command(key, value) if self.cas and r < 0.35
                       else encode_insert(key, value))
            sim.client_propose(client, node, command,
                               Op(client, "put", key, value, None, sim.now, None))

    def observed(self, op: Op) -> None:
        """A completed op of the history: what its client now believes the key holds."""
        if op.kind == "get" or (op.kind == "cas" and op.output):
            value = op.output if op.kind == "get" else op.value
            self.seen[(op.client_id, op.key)] = value

    def check(self, history: list[Op]) -> None:
        result = check(history)
        if not result.ok:
            raise InvariantViolation("linearizability", 0, result.explanation)


class BankWorkload:
    """`bank`: transfers between accounts, every read's balances checked at the end."""

    def __init__(self, sim: Simulator, spec: BankSpec) -> None:
        self.sim = sim
        self.spec = spec
        self.reads: list[BankRead] = []
        self.writes: list[BankWrite] = []
        self.views: dict[int, tuple[BankRead, dict[bytes, Any]]] = {}  # last read, per client

    def choose(self, client: int) -> float:
        return self.sim.rng.random()

    def _range(self, store: MvccStore) -> tuple[int, dict[bytes, Any]]:
        resp = store.range(pb.RangeRequest(key=self.spec.prefix, range_end=self.spec.range_end))
        return store.revision, {kv.key: kv for kv in resp.kvs}

    def _record(self, client: int, call: int, store: MvccStore, linearizable: bool) -> None:
        revision, kvs = self._range(store)
        balances = balances_of(self.spec, {k: kv.value for k, kv in kvs.items()})
        read = BankRead(client, call, self.sim.now, revision, balances, linearizable)
        self.reads.append(read)
        self.views[client] = (read, kvs)

    def act(self, client: int, node: SimNode, r: float) -> None:
        sim = self.sim
        view = self.views.get(client)  # kept until its txn is proposed
        if view is None or r < 0.1:
            call = sim.now
            if r < 0.25:  # serializable: this node's applied state, at once
                self._record(client, call, node.kv, linearizable=False)
                return
            lease = sim.cfg.lease_reads and r > 0.6
            sim.client_read(client, node, lease,
                            serve=lambda store: self._record(client, call, store, True))
            return
        read, kvs = view
        if all(b is None for b in read.balances):
            req = pb.TxnRequest(
                compare=[pb.Compare(key=k, target=pb.Compare.CREATE, result=pb.Compare.EQUAL,
                                    create_revision=0) for k in self.spec.keys],
                success=[_put(k, b"%d" % self.spec.initial) for k in self.spec.keys])
        else:
            plan = plan_transfer(sim.rng, read.balances)
            if plan is None:
                del self.views[client]
                return
            src, dst, amount = plan
            a, b = self.spec.keys[src], self.spec.keys[dst]
            va, vb = read.balances[src], read.balances[dst]
            assert va is not None and vb is not None
            req = pb.TxnRequest(
                compare=[pb.Compare(key=k, target=pb.Compare.MOD, result=pb.Compare.EQUAL,
                                    mod_revision=kvs[k].mod_revision) for k in (a, b)],
                success=[_put(a, b"%d" % (va - amount)), _put(b, b"%d" % (vb + amount))])
        call = sim.now

        def done(applied: Applied | None) -> None:
            if succeeded(applied):
                assert applied is not None
                self.writes.append(BankWrite(client, call, sim.now, applied.revision))
                sim.stats["bank_transfers"] = sim.stats.get("bank_transfers", 0) + 1

        sim.client_propose(client, node, txn_command(req), done=done)
        del self.views[client]  # the next transfer starts from a new read

    def observed(self, op: Op) -> None:
        return

    def check(self, history: list[Op]) -> None:
        problem = check_bank(self.spec, self.reads, self.writes)
        for node in self.sim.nodes.values():
            if problem is None and node.up:
                _, kvs = self._range(node.kv)
                final = balances_of(self.spec, {k: kv.value for k, kv in kvs.items()})
                if any(b is not None for b in final):
                    problem = check_bank(self.spec, [], [], final)
                    if problem is not None:
                        problem = f"node {node.id} at revision {node.kv.revision}: {problem}"
        self.sim.stats["bank_reads"] = len(self.reads)
        self.sim.stats["bank_linearizable_reads"] = sum(r.linearizable for r in self.reads)
        if problem is not None:
            raise InvariantViolation("bank total", 0, problem)


def make_workload(sim: Simulator) -> RegisterWorkload | BankWorkload | LeaseWorkload:
    name = sim.cfg.workload
    if name not in WORKLOADS:
        raise DengineError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
    if name == "lease":
        from dengine.sim.leases import LeaseWorkload
        return LeaseWorkload(sim)
    if name == "lock":
        from dengine.sim.locks import LockWorkload
        return LockWorkload(sim)
    if name == "bank":
        return BankWorkload(sim, BankSpec(accounts=sim.cfg.accounts))
    return RegisterWorkload(sim, cas=name == "cas")

"""The clients of a whole-node run: closed-loop writers and readers, and their history.

Each client does one operation at a time on a node: a put (a third of them as etcd
PutRequests, as the gRPC server proposes them) or a delete (unique values), or etcd's
compare-and-swap txn ("value == the client's last view of the key, or absent, then put";
its history op says whether it swapped) through `Node.propose`, or a read of one key
through `Node.read` at linearizable, lease or eventual consistency, or an etcd
compaction (`CompactionRequest` at one of the last revisions it saw), or an etcd range
of one key at a past revision (linearizable or lease), or a lease operation: grant
(etcd's `LeaseGrantRequest`, TTL 1 s, the minimum), put its own key `lease-k<client>`
bound to it, keep it alive at the node's lessor (`Lessor.renew`, as etcd's LeaseKeepAlive
at the leader), revoke it, or walk away from it (it must expire). It asks the node
it believes leads (`NotLeader` tells it which), or another one at random; it gives up on
an answer after 0.2-1.5 s (drawn per operation) and then tries another node. Outcomes,
as a real client sees them:

* a write whose future resolves is acknowledged (call and return times recorded);
* a write refused at once (`NotLeader`, not running) was never proposed: left out;
* a write that fails later (timeout, leadership lost, the node died) has an unknown
  outcome: recorded with `ret=None` (it may or may not have been applied);
* a read is recorded only when it returned a value; eventual reads go to their own check;
* compactions and reads at past revisions are not in the linearizability history (a
  compaction changes no value): they go to the compaction check (`checks.py`), with
  their outcome (done, refused with etcd's error, unknown; compacted or a value).

After healing, `final_reads` reads every key at linearizable consistency: a write
acknowledged and then lost (a power cut ate it) shows up as a stale final read.
"""

from __future__ import annotations

import functools
import random
from typing import TYPE_CHECKING, Any

from dengine.errors import DengineError, KvError, NotLeader
from dengine.kv import EVENTUAL, LEASE, LINEARIZABLE
from dengine.kv.codec import encode_delete, encode_insert
from dengine.kv.etcd_check import COMPACTED
from dengine.proto import WriteCommand
from dengine.proto.etcd import rpc_pb2 as pb
from dengine.sim.lincheck import Op
from dengine.sim.workloads import cas_request, put_command, txn_command

if TYPE_CHECKING:
    from dengine.sim.nodesim.world import Member, World

KEYS = (b"k0", b"k1", b"k2")
TIMEOUT_S = 1.0  # what the node is given
GIVE_UP_S = 1.5  # a client waits at most this long for an answer (a paused or dead node)
MIN_GIVE_UP_S = 0.2  # and at least this long (each operation draws its own timeout)


LEASE_TTL = 1  # seconds: etcd's minimum for a 100 ms election timeout


class _Client:
    __slots__ = ("busy_on", "id", "leader", "lease", "seq", "token")

    def __init__(self, client_id: int) -> None:
        self.id = client_id
        self.lease = 0  # the lease it holds (0: none)
        self.leader = 1
        self.seq = 0
        self.token = 0  # the operation in flight (0: none)
        self.busy_on = 0  # the node it waits for


class Clients:
    def __init__(self, world: World, rng: random.Random) -> None:
        self.world = world
        self.rng = rng
        self.clients = [_Client(i) for i in range(world.config.clients)]
        self.history: list[Op] = []
        self.lines: list[str] = []
        self.eventual: list[tuple[int, bytes, bytes | None, float]] = []
        self.values_written: set[bytes] = set()
        self.stats = {"writes_ok": 0, "writes_unknown": 0, "reads_ok": 0, "refused": 0,
                      "eventual_reads": 0, "lease_reads": 0, "cas_swapped": 0, "cas_failed": 0,
                      "compactions_ok": 0, "compactions_refused": 0, "past_reads_ok": 0,
                      "past_reads_compacted": 0, "leases_granted": 0, "lease_keepalives": 0,
                      "lease_keepalives_expired": 0, "lease_puts": 0, "lease_revokes": 0,
                      "leases_abandoned": 0}
        # Compactions: (revision, call ms, return ms or None if unknown, done); reads at
        # a past revision: (node, key, revision, value or COMPACTED, call ms, return ms).
        self.compactions: list[tuple[int, float, float | None, bool]] = []
        self.past_reads: list[tuple[int, bytes, int, bytes | str | None, float, float]] = []
        self.max_revision = 0  # the newest store revision an answer showed
        self._tokens = 0
        self._running = False
        # token -> (client, kind, key, value, call ms, consistency or put form, cas expects)
        self._inflight: dict[
            int, tuple[_Client, str, bytes, bytes | None, float, str, bytes | None]] = {}
        self._seen: dict[tuple[int, bytes], bytes | None] = {}  # a client's last view
        # NodeSimConfig.batches: its own generator, so the others' draws are unchanged.
        self._filler_rng = (random.Random(world.config.seed ^ 0x5EED)
                            if world.config.batches else None)

    def start(self) -> None:
        self._running = True
        for c in self.clients:
            self.world.after(self.rng.uniform(0.0, 0.05), functools.partial(self._next, c))

    def stop(self) -> None:
        self._running = False

    def history_lines(self) -> list[str]:
        return self.lines

    # -- one operation

    def _pick(self, c: _Client) -> Member:
        members = self.world.members
        if self.rng.random() < 0.3 or c.leader not in members:
            return members[self.rng.choice(sorted(members))]
        return members[c.leader]

    def _next(self, c: _Client) -> None:
        if not self._running or c.token:
            return
        m = self._pick(c)
        r = self.rng.random()
        key = self.rng.choice(KEYS)
        c.seq += 1
        expected = None
        if r < 0.3:
            # a third as etcd PutRequests (as the gRPC server proposes them)
            kind, value = "put", f"c{c.id}-{c.seq}".encode()
            level = "etcd" if self.rng.random() < 1 / 3 else ""
            self.values_written.add(value)
        elif r < 0.38:
            kind, value, level = "delete", None, ""
        elif r < 0.48:
            # etcd's compare-and-swap txn on the client's last view of the key
            kind, value, level = "cas", f"c{c.id}-{c.seq}".encode(), ""
            expected = self._seen.get((c.id, key))
            self.values_written.add(value)
        elif r < 0.51 and self.max_revision:
            # etcd's Compact at one of the last revisions seen (value: the revision)
            revision = max(1, self.max_revision - self.rng.randint(0, 20))
            kind, value, level = "compact", str(revision).encode(), ""
        elif r < 0.58 and self.max_revision:
            revision = self.rng.randint(1, self.max_revision)
            kind, value = "past", str(revision).encode()
            level = (LINEARIZABLE, LEASE)[self.rng.randrange(2)]
        elif r < 0.66:
            level = ""
            if not c.lease:
                kind, value = "grant", str(self.rng.getrandbits(62) or 1).encode()
            else:
                value = str(c.lease).encode()
                kind = self.rng.choice(("keepalive",) * 5 + ("lput",) * 3 + ("revoke", "walk"))
                if kind == "walk":
                    c.lease = 0
                    self.stats["leases_abandoned"] += 1
                    self.world.after(self.rng.uniform(0.0, 0.02), lambda: self._next(c))
                    return
                if kind == "lput":
                    key = f"lease-k{c.id}".encode()
        else:
            kind, value = "get", None
            level = (LINEARIZABLE, LEASE, EVENTUAL)[self.rng.choice((0, 0, 1, 1, 2))]
        self._tokens += 1
        token = c.token = self._tokens
        c.busy_on = m.node_id
        self._inflight[token] = (c, kind, key, value, self.world.now_ms, level, expected)
        if not self.world.call_on(m, self._submit, m, token):
            self._finish(token, "refused")
            return
        self.world.after(self.rng.uniform(MIN_GIVE_UP_S, GIVE_UP_S),
                         lambda: self._give_up(c, token))

    def _give_up(self, c: _Client, token: int) -> None:
        """No answer in time: the outcome is unknown; the next try goes to another node."""
        if token in self._inflight:
            others = sorted(i for i in self.world.members if i != c.busy_on)
            if others:
                c.leader = self.rng.choice(others)
            self._finish(token, "unknown")

    def _submit(self, m: Member, token: int) -> None:
        """On the node's loop: hand the operation to the node."""
        op = self._inflight.get(token)
        node = m.node
        if op is None or node is None:
            return
        c, kind, key, value, _, level, expected = op
        future: Any
        try:
            if kind in ("grant", "keepalive", "lput", "revoke"):
                assert value is not None
                future = self._lease_op(m, token, kind, key, int(value))
                if future is None:
                    return
            elif kind == "put":
                assert value is not None
                command = put_command(key, value) if level else encode_insert(key, value)
                future = node.propose(self._with_filler(c, [command]), TIMEOUT_S)
            elif kind == "cas":
                assert value is not None
                command = txn_command(cas_request(key, expected, value))
                future = node.propose(self._with_filler(c, [command]), TIMEOUT_S)
            elif kind == "delete":
                future = node.propose(self._with_filler(c, [encode_delete(key)]), TIMEOUT_S)
            elif kind == "compact":
                assert value is not None
                compaction = pb.CompactionRequest(revision=int(value)).SerializeToString()
                future = node.propose(
                    [WriteCommand(compaction=compaction).SerializeToString()], TIMEOUT_S)
            elif kind == "past":
                assert value is not None
                request = pb.RangeRequest(key=key, revision=int(value))
                future = node.read_query(functools.partial(_range, request), level, TIMEOUT_S)
            else:
                future = node.read([key], level, TIMEOUT_S)
        except NotLeader as e:
            if e.leader_id:
                c.leader = e.leader_id
            self._finish(token, "refused")
            return
        except DengineError:
            self._finish(token, "refused")
            return
        future.add_done_callback(lambda f: self._done(token, f))

    def _with_filler(self, c: _Client, commands: list[bytes]) -> list[bytes]:
        """`commands`, a third of the time followed by a put of the client's filler key
        (NodeSimConfig.batches; the answer's first result stays the client's own)."""
        if self._filler_rng is not None and self._filler_rng.random() < 1 / 3:
            commands.append(encode_insert(b"filler-c%d" % c.id, b"%d" % c.seq))
        return commands

    def _lease_op(self, m: Member, token: int, kind: str, key: bytes, lease: int) -> Any:
        node = m.node
        assert node is not None
        if kind == "keepalive":  # the lessor's, once primary and its leadership confirmed
            if m.lessor is None or m.loop is None:
                raise node.not_leader()
            return m.loop.create_task(m.lessor.keep_alive(lease, TIMEOUT_S))
        if kind == "grant":
            grant = pb.LeaseGrantRequest(ID=lease, TTL=LEASE_TTL).SerializeToString()
            command = WriteCommand(lease_grant=grant)
        elif kind == "lput":
            put = pb.PutRequest(key=key, value=b"v", lease=lease).SerializeToString()
            command = WriteCommand(put=put)
        else:
            command = WriteCommand(
                lease_revoke=pb.LeaseRevokeRequest(ID=lease).SerializeToString())
        return node.propose([command.SerializeToString()], TIMEOUT_S)

    def _done(self, token: int, future: Any) -> None:
        if future.cancelled():
            self._finish(token, "unknown")
            return
        error = future.exception()
        if isinstance(error, KvError) and str(error) == COMPACTED:
            self._finish(token, "ok", COMPACTED)  # a read at a compacted revision
            return
        if error is not None:
            if isinstance(error, NotLeader) and error.leader_id:
                op = self._inflight.get(token)
                if op is not None:
                    op[0].leader = error.leader_id
            self._finish(token, "unknown")
            return
        result = future.result()
        if isinstance(result, list):
            result = result[0] if result else None
        self._finish(token, "ok", result)

    def _finish(self, token: int, outcome: str, result: Any = None) -> None:
        op = self._inflight.pop(token, None)
        if op is None:
            return  # already finished (given up, or the node died)
        c, kind, key, value, call, level, expected = op
        now = self.world.now_ms
        c.token = 0
        stats = self.stats
        self.max_revision = max(self.max_revision, getattr(result, "revision", 0))
        if kind in ("grant", "keepalive", "lput", "revoke"):
            self._lease_done(c, kind, outcome, result, call)
        elif kind == "compact":
            assert value is not None
            response = getattr(result, "response", None)
            if outcome == "ok":
                done = not isinstance(response, KvError)
                stats["compactions_ok" if done else "compactions_refused"] += 1
                self.compactions.append((int(value), call, now, done))
                self.lines.append(f"{call:.3f}-{now:.3f} c{c.id} compact {value.decode()} -> "
                                  f"{'done' if done else response}")
            elif outcome == "unknown":
                self.compactions.append((int(value), call, None, True))
        elif kind == "past":
            assert value is not None
            if outcome == "ok":
                got: bytes | str | None = COMPACTED
                if result != COMPACTED:
                    got = result.kvs[0].value if result.kvs else None
                    self.max_revision = max(self.max_revision, result.header.revision)
                stats["past_reads_compacted" if got == COMPACTED else "past_reads_ok"] += 1
                self.past_reads.append((c.busy_on, key, int(value), got, call, now))
                self.lines.append(f"{call:.3f}-{now:.3f} c{c.id} n{c.busy_on} get {key!r} "
                                  f"at {value.decode()} -> {got!r}")
        elif kind == "cas":
            response = getattr(result, "response", None)
            if outcome == "ok" and isinstance(response, pb.TxnResponse):
                stats["cas_swapped" if response.succeeded else "cas_failed"] += 1
                if response.succeeded:
                    self._seen[(c.id, key)] = value
                self._record(Op(c.id, "cas", key, value=value, output=response.succeeded,
                                call=call, ret=now, expected=expected))
            elif outcome == "unknown":
                stats["writes_unknown"] += 1
                self._record(Op(c.id, "cas", key, value=value, call=call, ret=None,
                                expected=expected))
            else:
                stats["refused"] += 1
        elif kind in ("put", "delete"):
            if outcome == "ok":
                stats["writes_ok"] += 1
                self._record(Op(c.id, kind, key, value=value, call=call, ret=now))  # type: ignore[arg-type]
            elif outcome == "unknown":
                stats["writes_unknown"] += 1
                self._record(Op(c.id, kind, key, value=value, call=call, ret=None))  # type: ignore[arg-type]
            else:
                stats["refused"] += 1
        elif outcome == "ok":
            if level == EVENTUAL:
                stats["eventual_reads"] += 1
                self.eventual.append((c.busy_on, key, result, now))
                self.lines.append(f"{call:.3f}-{now:.3f} c{c.id} n{c.busy_on} eventual "
                                  f"get {key!r} -> {result!r}")
            else:
                stats["reads_ok"] += 1
                if level == LEASE:
                    stats["lease_reads"] += 1
                self._seen[(c.id, key)] = result
                self._record(Op(c.id, "get", key, output=result, call=call, ret=now))
        if self._running:
            self.world.after(self.rng.uniform(0.0, 0.02), lambda: self._next(c))

    def _lease_done(self, c: _Client, kind: str, outcome: str, result: Any, call: float
                    ) -> None:
        """A lease call's answer. A grant or keep-alive renewed the lease somewhere between
        its `call` and its answer; the check counts from `call`, the earliest (an answer
        can be late: a node frozen or a reply delayed after the renewal)."""
        stats = self.stats
        response = getattr(result, "response", None)
        failed = outcome != "ok" or isinstance(response, KvError)
        if kind == "grant":
            if not failed:
                c.lease = int(response.ID)  # type: ignore[union-attr]
                stats["leases_granted"] += 1
                self.world.checks.kept_alive(c.lease, call / 1000.0)
        elif kind == "keepalive":
            if outcome == "ok" and result > 0:
                stats["lease_keepalives"] += 1
                self.world.checks.kept_alive(c.lease, call / 1000.0)
            elif outcome == "ok":
                stats["lease_keepalives_expired"] += 1  # expired (or unknown): gone
                c.lease = 0
        elif kind == "lput":
            if not failed:
                stats["lease_puts"] += 1
            elif outcome == "ok":
                c.lease = 0  # "requested lease not found": it expired
        elif outcome != "refused":
            stats["lease_revokes"] += outcome == "ok"
            c.lease = 0

    def _record(self, op: Op) -> None:
        self.history.append(op)
        self.lines.append(op.describe())

    def node_gone(self, node_id: int) -> None:
        """A node died: what its clients waited for has an unknown outcome."""
        for token, op in list(self._inflight.items()):
            if op[0].busy_on == node_id:
                self._finish(token, "unknown")

    # -- after healing

    def final_reads(self) -> None:
        """Read every key at linearizable consistency through the leader (history)."""
        world = self.world
        reader = _Client(len(self.clients))
        self.clients.append(reader)
        for key in KEYS:
            for _attempt in range(20):
                lead = world.leader()
                if lead is None:
                    world.step_until(world.clock.now + 0.1)
                    continue
                self._tokens += 1
                token = reader.token = self._tokens
                reader.busy_on = lead.node_id
                self._inflight[token] = (reader, "get", key, None, world.now_ms, LINEARIZABLE,
                                         None)
                done = len(self.history)
                world.call_on(lead, self._submit, lead, token)
                world.step_until(world.clock.now + GIVE_UP_S,
                                 lambda t=token: t not in self._inflight)  # type: ignore[misc]
                self._inflight.pop(token, None)
                if len(self.history) > done:
                    break
            else:
                from dengine.sim.nodesim.checks import Violation

                raise Violation("liveness", 0, f"no linearizable read of {key!r} after healing")


def _range(request: pb.RangeRequest, store: Any) -> pb.RangeResponse:
    return store.range(request)

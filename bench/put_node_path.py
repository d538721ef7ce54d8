"""put_node_path.py: the node layer's cost per embedded put, alone (ns): Engine.put ->
Node.propose -> Node._propose -> Pending.register -> Pending.resolve -> the PutResult, for
rounds of 256 puts driven by hand (coroutine.send, no task), with a fake Raft core and
the apply's results made beforehand. No I/O, no loop turns: what the code between the
caller and Raft costs per put. Compare trees from one venv:
`PYTHONPATH=<tree>/src .venv/bin/python bench/put_node_path.py` (docs/performance.md,
"The put's node path against a3fb033 (session 17)")."""
import asyncio, statistics, time
from dengine.config import NodeConfig
import dengine.node.engine as engine_mod
from dengine.node.engine import Engine
from dengine.node.node import Node
from dengine.node.pending import Pending
from dengine.proto import Entry
from dengine.raft import Role
try:  # a3fb033 made every result at apply
    from dengine.storage.state_machine import InsertResults
    def results_for(first, n):
        return InsertResults(list(range(first, first + n)), 100 + first)
except ImportError:
    from dengine.storage import ApplyResult
    def results_for(first, n):
        return [ApplyResult(index=first + i) for i in range(n)]

B, ROUNDS = 256, 60


class FakeCore:
    term, idx = 3, 0

    def propose_batch(self, commands):
        first = self.idx + 1
        self.idx += len(commands)
        return self.term, first


class Wake:
    def set(self):
        pass


async def main():
    node = object.__new__(Node)  # only what the put's path reads
    node._running, node.role, node.node_id = True, Role.LEADER, 1
    node._loop = asyncio.get_running_loop()
    node._pending = Pending(0.01)
    node._due = node._pending.due
    node._in_proposals, node._incoming_bytes, node._wake = [], 0, Wake()
    node._urgent_in_turn, node._urgent_through = False, 0
    node._core = core = FakeCore()
    eng = object.__new__(Engine)
    eng._node = node
    eng._limits = engine_mod.Limits.of(NodeConfig(
        node_id=1, data_dir="/tmp/unused", cluster_id="c", listen_peer="127.0.0.1:1"))
    eng._pending_proposals = eng._pending_proposal_bytes = 0
    eng._max_pending_proposals, eng._max_pending_proposal_bytes = 10_000, 1 << 40
    eng._put_ids, eng._etcd_cluster_id = (0, 0, -1), 7
    keys = [b"%08d" % i for i in range(B)]
    value = bytes(256)
    put = eng.put
    times = []
    for _ in range(ROUNDS):
        first = core.idx + 1
        entries = [Entry(index=first + i, term=3) for i in range(B)]
        results = results_for(first, B)
        t0 = time.perf_counter_ns()
        coros = [put(k, value) for k in keys]
        for c in coros:
            c.send(None)  # up to the await of the write's future
        node._propose(core)
        node._pending.resolve(entries, results)
        for c in coros:
            try:
                c.send(None)
            except StopIteration:
                pass
        times.append((time.perf_counter_ns() - t0) / B)
    times = sorted(times[10:])
    print(f"ns per put: median {statistics.median(times):.0f}  p10 {times[len(times) // 10]:.0f}")

asyncio.run(main())

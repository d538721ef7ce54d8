"""Fingerprint the simulator's behaviour: `python tools/sim_digest.py [--quick]`.

Runs `dengine.sim` over a fixed set of configurations and seeds and prints, per
configuration and in total, a SHA-256 over each run's client history, stats, violation and
step count, and a second SHA-256 that also covers every message the cores sent (in send
order, serialized deterministically). A refactoring of the core that changes no behaviour
leaves both digests unchanged; record them before the change and compare after.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
import time

from dengine.proto import Message
from dengine.sim.config import SimConfig, SimResult
from dengine.sim.simulator import Simulator

# (label, config without seed, seeds): 3 and 5 nodes, with snapshots and membership changes.
CONFIGS: list[tuple[str, SimConfig, range]] = [
    ("3 nodes", SimConfig(nodes=3), range(0, 300)),
    ("5 nodes", SimConfig(nodes=5), range(0, 200)),
    ("3 nodes --snapshot-every 20", SimConfig(nodes=3, snapshot_every=20), range(0, 150)),
    ("3 nodes --snapshot-every 20 --membership",
     SimConfig(nodes=3, snapshot_every=20, membership=True), range(0, 150)),
    ("5 nodes --snapshot-every 15 --membership",
     SimConfig(nodes=5, snapshot_every=15, membership=True), range(0, 100)),
]


class _TracingSimulator(Simulator):
    """The simulator, hashing every message a core sends."""

    def __init__(self, config: SimConfig) -> None:
        super().__init__(config)
        self.trace = hashlib.sha256()

    def _send(self, msg: Message) -> None:
        self.trace.update(msg.SerializeToString(deterministic=True))
        super()._send(msg)


def _result_bytes(result: SimResult) -> bytes:
    v = result.violation
    violation = None if v is None else (v.invariant, v.node, str(v))
    parts = (
        result.config.seed,
        result.steps_run,
        violation,
        sorted(result.stats.items()),
        [(op.client_id, op.kind, op.key, op.value, op.output, op.call, op.ret)
         for op in result.history],
    )
    return repr(parts).encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="first 10 seeds of each config")
    args = parser.parse_args()
    total_result = hashlib.sha256()
    total_trace = hashlib.sha256()
    runs = failures = 0
    started = time.perf_counter()
    for label, base, seeds in CONFIGS:
        if args.quick:
            seeds = seeds[:10]
        result_digest = hashlib.sha256()
        trace_digest = hashlib.sha256()
        for seed in seeds:
            sim = _TracingSimulator(dataclasses.replace(base, seed=seed))
            result = sim.run()
            runs += 1
            failures += not result.ok
            data = _result_bytes(result)
            result_digest.update(data)
            trace_digest.update(data)
            trace_digest.update(sim.trace.digest())
        total_result.update(result_digest.digest())
        total_trace.update(trace_digest.digest())
        print(f"{label:42} seeds {seeds.start}:{seeds.stop}  "
              f"results {result_digest.hexdigest()[:16]}  messages {trace_digest.hexdigest()[:16]}")
    print(f"runs={runs} violations={failures} elapsed={time.perf_counter() - started:.0f}s")
    print(f"results digest  {total_result.hexdigest()}")
    print(f"messages digest {total_trace.hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

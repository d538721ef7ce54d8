"""Deterministic cluster simulator and linearizability checker (`python -m dengine.sim`).

`Simulator(SimConfig(nodes=3, seed=7, steps=3000)).run()` returns a `SimResult`; its
`violation` names the broken invariant and `config.replay_command()` replays the run.
`lincheck.check(history)` is the linearizability checker, usable on its own.
"""

from dengine.sim.config import FAULT_KINDS, SimConfig, SimResult
from dengine.sim.invariants import InvariantChecker, InvariantViolation
from dengine.sim.lincheck import CheckResult, Op, check
from dengine.sim.simulator import Simulator

__all__ = [
    "FAULT_KINDS",
    "CheckResult",
    "InvariantChecker",
    "InvariantViolation",
    "Op",
    "SimConfig",
    "SimResult",
    "Simulator",
    "check",
]

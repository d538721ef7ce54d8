"""What one simulated run is (SimConfig), what it found (SimResult), and the constants of
the simulated world: tick lengths, election timing, fault kinds, liveness bounds."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from dengine.raft import LogStorage, RaftConfig, RaftCore
from dengine.sim.invariants import InvariantViolation
from dengine.sim.lincheck import Op

CoreFactory = Callable[[RaftConfig, LogStorage, random.Random], RaftCore]

FAULT_KINDS = ("loss", "dup", "delay", "partition", "oneway", "crash", "skew", "churn")

TICK_MS = 10  # nominal tick period; each node's period stays within TICK_MS +- MAX_SKEW_MS
MAX_SKEW_MS = 1
ELECTION_TICK = 10
HEARTBEAT_TICK = 2
DRIFT_TICKS = 2  # lease = (ELECTION_TICK - DRIFT_TICKS) ticks: safe for +-10 % clock rates
# Chance a leader is crashed or isolated within 15 ms of being elected / of its first
# commit (the old-term entries a Figure 8 leader commits too early), and during churn.
STRIKE_ELECTED_P = 0.2
STRIKE_FIRST_COMMIT_P = 0.5
STRIKE_CHURN_P = 0.9
CLIENT_TIMEOUT_MS = 2 * ELECTION_TICK * TICK_MS
# Liveness bounds, counted from the moment all faults heal.
LEADER_BOUND_MS = 10 * ELECTION_TICK * TICK_MS
SETTLE_BOUND_MS = 40 * ELECTION_TICK * TICK_MS
KEYS = tuple(f"k{i}".encode() for i in range(4))
BARRIER_KEY = b"__barrier"


@dataclass(frozen=True)
class SimConfig:
    """What one run simulates. `faults` is a subset of FAULT_KINDS."""

    nodes: int = 3
    seed: int = 0
    steps: int = 3000
    faults: frozenset[str] = frozenset(FAULT_KINDS)
    clients: int = 4
    lease_reads: bool = True
    # Replication batching; 0 = drawn from the seed. Small values make followers catch up
    # over many appends, when counting replicas of an old term's entries goes wrong.
    max_entries_per_msg: int = 0
    max_inflight: int = 0
    # Take a snapshot and compact the log whenever this many applied entries are in it
    # (0 = never): exercises snapshot transfer to followers that fell behind.
    snapshot_every: int = 0
    # Add membership changes to the faults: a voter is removed (or demoted to learner)
    # and later added back, one single-server change at a time.
    membership: bool = False
    # What the clients do (sim/workloads.py): kv (get/put/delete), cas (+ compare-and-swap
    # txns), bank (transfers between `accounts` accounts as txns guarded by mod_revision).
    workload: str = "kv"
    accounts: int = 5
    core: str = ""  # "module:Class" of a RaftCore subclass, for the replay command only
    store: str = ""  # "module:Class" of an MvccStore subclass, for the replay command only

    def replay_command(self) -> str:
        cmd = (
            f"python -m dengine.sim --nodes {self.nodes} --seeds {self.seed}:{self.seed + 1} "
            f"--steps {self.steps}"
        )
        if self.faults != frozenset(FAULT_KINDS):
            cmd += f" --faults {','.join(sorted(self.faults)) or 'none'}"
        if not self.lease_reads:
            cmd += " --no-lease-reads"
        if self.max_entries_per_msg:
            cmd += f" --max-entries-per-msg {self.max_entries_per_msg}"
        if self.max_inflight:
            cmd += f" --max-inflight {self.max_inflight}"
        if self.snapshot_every:
            cmd += f" --snapshot-every {self.snapshot_every}"
        if self.membership:
            cmd += " --membership"
        if self.workload != "kv":
            cmd += f" --workload {self.workload}"
        if self.workload == "bank" and self.accounts != 5:
            cmd += f" --accounts {self.accounts}"
        if self.core:
            cmd += f" --core {self.core}"
        if self.store:
            cmd += f" --store {self.store}"
        return cmd


@dataclass
class SimResult:
    """Outcome of one run. `violation` is None when every check held."""

    config: SimConfig
    steps_run: int
    violation: InvariantViolation | None
    history: list[Op]
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.violation is None

    def describe(self) -> str:
        if self.violation is None:
            return f"seed {self.config.seed}: ok ({self.steps_run} steps)"
        return (
            f"seed {self.config.seed}: {self.violation.invariant} violated on node "
            f"{self.violation.node} at step {self.steps_run}: {self.violation.detail}\n"
            f"  replay: {self.config.replay_command()}"
        )

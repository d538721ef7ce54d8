"""What one whole-node run is (NodeSimConfig) and what it found (NodeSimResult)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dengine.node.lessor import Lessor
from dengine.node.ports import CoreFactory
from dengine.sim.nodesim.disk import FencedDisk

if TYPE_CHECKING:
    from dengine.node.node import Node
    from dengine.sim.nodesim.checks import Violation

# Fault kinds of the whole-node simulator (`--faults`).
NODE_FAULT_KINDS = ("net", "partition", "oneway", "kill", "power", "power_all", "pause",
                    "strike", "diskerr", "slow", "skew", "snapcut", "freeze", "jump",
                    "bitrot")


def _load(spec: str) -> Any:
    module, sep, name = spec.partition(":")
    if not sep:
        raise ValueError(f"expected MODULE:NAME, got {spec!r}")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class NodeSimConfig:
    """One run of real nodes on the simulated clock, disk and network."""

    nodes: int = 3  # voters
    learners: int = 0  # added as learners once a leader exists
    seed: int = 0
    seconds: float = 3.0  # virtual seconds of client load under faults, before healing
    faults: frozenset[str] = frozenset(NODE_FAULT_KINDS)
    clients: int = 4
    disk_latency_ms: float = 2.0  # each job of a node's threads takes up to this long
    checkpoint_bytes: int = 8 * 1024  # the state machine's WAL checkpoints often
    segment_bytes: int = 16 * 1024  # and the Raft log rolls segments often
    # A snapshot every this many applied entries, the log compacted behind it (keeping a
    # tail of a tenth): lagging nodes then catch up by snapshot transfer (0: none).
    snapshot_entries: int = 20
    # Membership changes under load: remove a voter (or the leader), wipe it, add it back
    # as a learner, promote it (`dengine.sim.nodesim.admin`).
    membership: bool = False
    # The nodes batch writes (NodeConfig.batch_writes) and a third of the clients' writes
    # carry a second command (a put of the client's filler key, which no check reads), so
    # batch entries meet every fault. Off by default: it changes every seed's schedule
    # (the seeds the teeth and regression tests name were found without it).
    batches: bool = False
    # A rolling upgrade under load (with `batches`): every voter but node 1 starts on the
    # older release (log format 1: it announces none and makes no batch entry), and each is
    # restarted on this release at a random time. Checked: no member of the older release
    # ever receives an append carrying a batch entry ("log format").
    upgrade: bool = False
    node: str = ""  # "module:Class" of a Node subclass (a broken variant)
    core: str = ""  # "module:Class" of a RaftCore subclass (a broken variant)
    disk: str = ""  # "module:Class" of a FencedDisk subclass (a broken variant)
    lessor: str = ""  # "module:Class" of a Lessor subclass (a broken variant)

    def node_class(self) -> type[Node]:
        from dengine.sim.nodesim.broken import SimNode

        cls = _load(self.node) if self.node else SimNode
        if not (isinstance(cls, type) and issubclass(cls, SimNode)):
            raise ValueError(f"{self.node!r} is not a dengine.sim.nodesim.broken.SimNode")
        return cls

    def core_factory(self) -> CoreFactory | None:
        return _load(self.core) if self.core else None

    def disk_class(self) -> type[FencedDisk]:
        cls = _load(self.disk) if self.disk else FencedDisk
        if not (isinstance(cls, type) and issubclass(cls, FencedDisk)):
            raise ValueError(f"{self.disk!r} is not a dengine.sim.nodesim.disk.FencedDisk")
        return cls

    def lessor_class(self) -> type[Lessor]:
        cls = _load(self.lessor) if self.lessor else Lessor
        if not (isinstance(cls, type) and issubclass(cls, Lessor)):
            raise ValueError(f"{self.lessor!r} is not a dengine.node.lessor.Lessor")
        return cls

    def replay_command(self) -> str:
        cmd = (f"python -m dengine.sim --whole-node --nodes {self.nodes} "
               f"--seeds {self.seed}:{self.seed + 1} --seconds {self.seconds:g}")
        if self.learners:
            cmd += f" --learners {self.learners}"
        if self.membership:
            cmd += " --membership"
        if self.batches:
            cmd += " --batches"
        if self.upgrade:
            cmd += " --upgrade"
        if self.snapshot_entries != NodeSimConfig.snapshot_entries:
            cmd += f" --snapshot-every {self.snapshot_entries}"
        if self.faults != frozenset(NODE_FAULT_KINDS):
            cmd += f" --faults {','.join(sorted(self.faults)) or 'none'}"
        if self.node:
            cmd += f" --node {self.node}"
        if self.core:
            cmd += f" --core {self.core}"
        if self.disk:
            cmd += f" --disk {self.disk}"
        if self.lessor:
            cmd += f" --lessor {self.lessor}"
        return cmd


@dataclass
class NodeSimResult:
    """Outcome of one run. `violation` is None when every check held."""

    config: NodeSimConfig
    violation: Violation | None
    history: list[str]  # one line per client operation, in completion order
    stats: dict[str, int]
    virtual_seconds: float

    @property
    def ok(self) -> bool:
        return self.violation is None

    @property
    def steps_run(self) -> int:
        return self.stats.get("steps", 0)

    def describe(self) -> str:
        if self.violation is None:
            return f"seed {self.config.seed}: ok ({self.steps_run} steps)"
        v = self.violation
        return (f"seed {self.config.seed}: {v.invariant} violated on node {v.node} at "
                f"{self.virtual_seconds * 1000:.1f} ms: {v.detail}\n"
                f"  replay: {self.config.replay_command()}")

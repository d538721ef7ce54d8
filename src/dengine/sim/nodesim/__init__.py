"""Whole-node deterministic simulation: real `Node`s on a virtual clock, a simulated disk
and a simulated network (docs/simulation.md, "Whole nodes")."""

from dengine.sim.nodesim.config import NODE_FAULT_KINDS, NodeSimConfig, NodeSimResult
from dengine.sim.nodesim.world import World


def run(config: NodeSimConfig) -> NodeSimResult:
    """Run one seed."""
    return World(config).run()


__all__ = ["NODE_FAULT_KINDS", "NodeSimConfig", "NodeSimResult", "World", "run"]

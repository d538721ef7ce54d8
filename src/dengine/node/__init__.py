"""Node runtime: the asyncio driver of the Raft core, the peer transport, the embedded Engine."""

from dengine.node.engine import Consistency, Engine
from dengine.node.node import Node, NodeStatus
from dengine.node.transport import Transport

__all__ = ["Consistency", "Engine", "Node", "NodeStatus", "Transport"]

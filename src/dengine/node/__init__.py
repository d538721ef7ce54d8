"""Node runtime: the asyncio driver of the Raft core, the peer transport, the embedded Engine."""

from dengine.node.engine import Consistency, Engine
from dengine.node.node import MemberInfo, Node, NodeStatus
from dengine.node.transport import Transport

__all__ = ["Consistency", "Engine", "MemberInfo", "Node", "NodeStatus", "Transport"]

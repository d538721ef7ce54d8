"""Node runtime: the asyncio driver of the Raft core, the peer transport, the embedded Engine."""

from dengine.api import MemberInfo, NodeStatus
from dengine.node.engine import Consistency, Engine
from dengine.node.node import Node
from dengine.node.transport import Transport

__all__ = ["Consistency", "Engine", "MemberInfo", "Node", "NodeStatus", "Transport"]

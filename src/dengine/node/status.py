"""What a node reports about itself: `NodeStatus` and `MemberInfo`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NodeStatus:
    """A point-in-time view of one node, for `Engine.status()` and the Status RPC."""

    node_id: int
    cluster_id: str
    role: str
    term: int
    leader_id: int
    commit_index: int
    applied_index: int
    first_log_index: int
    last_log_index: int
    voters: list[int]
    learners: list[int]
    snapshot_index: int = 0  # last_included index of the snapshot the log starts from

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MemberInfo:
    """One member of the latest configuration this node has appended."""

    id: int
    address: str  # peer address
    client_address: str  # "" if unknown
    role: str  # "voter" | "learner"
    match_index: int  # leader's view; 0 if unknown (or this node does not lead)
    is_leader: bool

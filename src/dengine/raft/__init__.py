"""Sans-I/O Raft consensus core: `RaftCore.step/tick/propose/read_index -> Ready`.

Proposals on a non-leader raise `dengine.errors.NotLeader(leader_id=...)` (the node fills
in the leader's address). See docs/raft.md and the driver contract in `dengine.raft.core`.
"""

from dengine.errors import NotLeader
from dengine.raft.core import RaftConfig, RaftCore, Ready, Role, SoftState
from dengine.raft.log import RaftLog
from dengine.raft.progress import Progress, ProgressState
from dengine.raft.readonly import ReadState

__all__ = [
    "NotLeader",
    "Progress",
    "ProgressState",
    "RaftConfig",
    "RaftCore",
    "RaftLog",
    "ReadState",
    "Ready",
    "Role",
    "SoftState",
]

"""Sans-I/O Raft consensus core: `RaftCore.step/tick/propose/read_index -> Ready`.

Proposals on a non-leader raise `dengine.errors.NotLeader(leader_id=...)` (the node fills
in the leader's address). See docs/raft.md and the driver contract in `dengine.raft.core`.
The log contract the core reads through (`LogStorage`) lives in `dengine.raft.storage`.
"""

from dengine.errors import NotLeader
from dengine.raft.core import RaftCore
from dengine.raft.log import LogView
from dengine.raft.progress import Progress, ProgressState
from dengine.raft.storage import LogCompacted, LogStorage, LogUnavailable, MemoryRaftLog
from dengine.raft.types import RaftConfig, ReadState, Ready, Role, SoftState

__all__ = [
    "LogCompacted",
    "LogStorage",
    "LogUnavailable",
    "LogView",
    "MemoryRaftLog",
    "NotLeader",
    "Progress",
    "ProgressState",
    "RaftConfig",
    "RaftCore",
    "ReadState",
    "Ready",
    "Role",
    "SoftState",
]

"""Durable storage: the Raft log, hard state, state machines and snapshots."""

from dengine.storage.file_state_machine import FileStateMachine
from dengine.storage.log_api import LogCompacted, LogStorage, LogUnavailable, MemoryRaftLog
from dengine.storage.raft_log import RaftLog
from dengine.storage.state_machine import ApplyResult, MemoryStateMachine, StateMachine

__all__ = [
    "ApplyResult",
    "FileStateMachine",
    "LogCompacted",
    "LogStorage",
    "LogUnavailable",
    "MemoryRaftLog",
    "MemoryStateMachine",
    "RaftLog",
    "StateMachine",
]

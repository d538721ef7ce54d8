"""Durable storage: the Raft log, hard state, state machines and snapshots.

`FileRaftLog` implements the core's log contract, `dengine.raft.storage.LogStorage`.
"""

from dengine.storage.file_state_machine import FileStateMachine
from dengine.storage.raft_log import FileRaftLog
from dengine.storage.state_machine import ApplyResult, MemoryStateMachine, StateMachine

__all__ = [
    "ApplyResult",
    "FileRaftLog",
    "FileStateMachine",
    "MemoryStateMachine",
    "StateMachine",
]

"""Durable storage: the Raft log, hard state, state machines and snapshots."""

from dengine.storage.log_api import LogCompacted, LogStorage, LogUnavailable, MemoryRaftLog

__all__ = ["LogCompacted", "LogStorage", "LogUnavailable", "MemoryRaftLog"]

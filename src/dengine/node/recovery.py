"""Recovery at start: open the log and the state machine and bring them back in step.

The state machine's applies are not fsynced one by one (the Raft log is the durable
record of what it has not synced), so at start it re-applies the committed entries
above its durable point. A snapshot from the leader is installed in the state machine,
then in the log; a crash in between is finished here.
"""

from __future__ import annotations

import logging

from dengine.config import NodeConfig
from dengine.errors import StorageError
from dengine.node.datadir import DataDir
from dengine.node.ports import NodeLog, SnapshotFiles
from dengine.storage import FileRaftLog, FileStateMachine
from dengine.storage.state_machine import StateMachine

log = logging.getLogger(__name__)

_APPLY_CHUNK = 4096  # entries per apply_chunk call while re-applying


def open_storage(
    config: NodeConfig, data_dir: DataDir, store: SnapshotFiles
) -> tuple[NodeLog, StateMachine, int]:
    """Open the log and state machine and re-apply committed entries the state machine has
    not seen; (log, state machine, applied index). Blocking: run it on the log thread."""
    raft_log = FileRaftLog(data_dir.raft, segment_bytes=config.log_segment_bytes)
    # Applies are not fsynced: an entry's durable record is the Raft log until the
    # state machine syncs, so the log is compacted only below durable_index().
    sm = FileStateMachine(
        data_dir.sm, checkpoint_bytes=config.wal_checkpoint_bytes,
        sync_apply=False, replayable_from=raft_log.first_index(),
    )
    finish_interrupted_install(config.node_id, raft_log, sm)
    store.prune(raft_log.snapshot_metadata(), leftovers=True)
    return raft_log, sm, reapply(config.node_id, raft_log, sm)


def reapply(node_id: int, raft_log: NodeLog, sm: StateMachine) -> int:
    """Apply the committed entries above the state machine's; the applied index."""
    applied = sm.last_applied().index
    commit = min(raft_log.hard_state().commit, raft_log.last_index())
    start = max(applied + 1, raft_log.first_index())
    if start > applied + 1:
        raise StorageError(
            f"state machine applied up to {applied} but the log starts at "
            f"{raft_log.first_index()}: a snapshot is needed (not supported yet)"
        )
    while start <= commit:
        hi = min(commit + 1, start + _APPLY_CHUNK)
        sm.apply_chunk(raft_log.entries(start, hi))
        start = hi
    if commit > applied:
        log.info("node %d: re-applied log entries %d..%d", node_id, applied + 1, commit)
    return max(applied, commit)


def finish_interrupted_install(node_id: int, raft_log: NodeLog, sm: StateMachine) -> None:
    """A snapshot from the leader is installed in the state machine, then in the log;
    after a crash in between, the state machine is at a point the log does not hold:
    finish the install (the log restarts after the snapshot)."""
    applied = sm.last_applied()
    if applied.index < raft_log.first_index():
        return  # in the compacted prefix, or nothing applied
    if applied.index <= raft_log.last_index() and raft_log.term(applied.index) == applied.term:
        return
    snap = sm.snapshot_metadata()
    if snap is None or (snap.last_included.index, snap.last_included.term) != (
        applied.index, applied.term
    ):
        raise StorageError(
            f"the state machine is at ({applied.term}, {applied.index}), which the Raft "
            f"log (entries {raft_log.first_index()}..{raft_log.last_index()}) does not "
            "hold, and no snapshot explains it: the log is not the one it was applied from"
        )
    log.warning("node %d: finishing the install of the snapshot at index %d that a "
                "crash interrupted", node_id, applied.index)
    raft_log.install_snapshot(snap)

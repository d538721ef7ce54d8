"""Recovery at start: open the log and the state machine and bring them back in step.

`dengine.storage.recovery.open_storage` opens both and decides how their points relate
(the same code `dengine check` runs on a dry-run disk): a snapshot install cut by a crash
is finished, and a state machine ahead of a log whose tail was cut restarts the log after
its point, with a snapshot written here. The state machine's applies are not fsynced one
by one (the Raft log is the durable record of what it has not synced), so then it
re-applies the committed entries above its durable point.
"""

from __future__ import annotations

import logging

from dengine.config import NodeConfig
from dengine.errors import StorageError
from dengine.node.datadir import DataDir
from dengine.node.ports import NodeLog, SnapshotFiles
from dengine.proto import LogId, Membership, SnapshotMetadata
from dengine.storage import recovery
from dengine.storage.fileio import FileIO
from dengine.storage.state_machine import StateMachine

log = logging.getLogger(__name__)

_APPLY_CHUNK = 4096  # entries per apply_chunk call while re-applying


def open_storage(
    config: NodeConfig, data_dir: DataDir, store: SnapshotFiles,
    fileio: FileIO | None = None, background_checkpoints: bool = True,
) -> tuple[NodeLog, StateMachine, int]:
    """Open the log and state machine (on `fileio`, default the real disk) and re-apply
    committed entries the state machine has not seen; (log, state machine, applied index).
    Blocking: run it on the log thread."""

    def write_snapshot(sm: StateMachine, point: LogId, membership: Membership
                       ) -> SnapshotMetadata:
        return store.write(sm.image(), point, membership)

    opened = recovery.open_storage(
        data_dir.raft, data_dir.sm, write_snapshot=write_snapshot,
        segment_bytes=config.log_segment_bytes, checkpoint_bytes=config.wal_checkpoint_bytes,
        fileio=fileio, background_checkpoints=background_checkpoints,
    )
    raft_log, sm = opened.raft_log, opened.sm
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

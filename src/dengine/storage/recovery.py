"""Opening a node's Raft log and state machine and bringing them back in step.

Start-up and `dengine check` both go through `open_storage`: the node with the real disk,
the check with a `DryRunDisk` that changes nothing. So the check reaches start-up's verdict
by the same code: the same `CorruptionError` or `StorageError`, or the same repairs (torn
tails cut, leftovers deleted, the log restarted after the state machine's point).

How the state machine's applied point relates to the log (`plan_recovery`):

* inside the log, with the log's term there, or in its compacted prefix: nothing to do
  (the node re-applies the committed entries above it);
* equal to the state machine's snapshot metadata and not held by the log: a snapshot
  install cut by a crash (the state machine is installed first, then the log); it is
  finished (`FINISH_INSTALL`);
* beyond the log's last entry: the log lost its tail (a torn or damaged last record of a
  segment is cut at recovery, and what the state machine had applied may be in it). The
  state machine only applies committed entries, so its point is a committed prefix of
  the log: the log restarts after it, as after a snapshot (`RESTART_LOG`), with the term
  the state machine recorded with its last applied entry, and the membership it applied
  (checkpoints and WAL records carry the config entries). A snapshot file of the state at
  that point is written, so that the node can send it to a follower that needs it. Sanity
  checks guard against a log that is not the one the state machine was applied from: the
  point's term may not be below the log's last term nor above the hard state's term;
* anything else (a different term at the same index, a state machine behind the
  compaction point): the log is not the one the state machine was applied from, or
  entries the state machine never made durable were compacted. Start-up refuses.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from dengine.errors import StorageError
from dengine.proto import HardState, LogId, Membership, SnapshotMetadata
from dengine.storage.file_state_machine import FileStateMachine
from dengine.storage.fileio import FileIO
from dengine.storage.raft_log import FileRaftLog

log = logging.getLogger("dengine.storage")

NOTHING, FINISH_INSTALL, RESTART_LOG = "nothing", "finish install", "restart log"

# Writes a snapshot file of the state machine's state at a point; returns its metadata.
SnapshotWriter = Callable[[FileStateMachine, LogId, Membership], SnapshotMetadata]


@dataclass
class Plan:
    """What recovery does to bring the log and the state machine in step."""

    action: str
    point: LogId  # the state machine's last applied entry
    snapshot: SnapshotMetadata | None = None  # FINISH_INSTALL: the install to finish
    membership: Membership | None = None  # RESTART_LOG: the membership at `point`
    lost: tuple[int, int] | None = None  # RESTART_LOG: log entries lost (first, last)

    def describe(self) -> str:
        p = self.point
        if self.action == FINISH_INSTALL:
            return (f"finish the install of the snapshot at ({p.term}, {p.index}) that a "
                    "crash interrupted: the log restarts after it")
        if self.action == RESTART_LOG:
            assert self.lost is not None
            return (f"the Raft log lost entries {self.lost[0]}..{self.lost[1]} (its tail was "
                    f"cut), which the state machine had applied: write a snapshot at "
                    f"({p.term}, {p.index}) and restart the log after it")
        return "log and state machine in step"


@dataclass
class Storage:
    """An opened, recovered log and state machine, and what recovery did."""

    raft_log: FileRaftLog
    sm: FileStateMachine
    plan: Plan


def open_storage(
    raft_dir: str | os.PathLike[str],
    sm_dir: str | os.PathLike[str],
    *,
    write_snapshot: SnapshotWriter,
    fileio: FileIO | None = None,
    segment_bytes: int = 64 * 1024 * 1024,
    checkpoint_bytes: int = 64 * 1024 * 1024,
    background_checkpoints: bool = True,
) -> Storage:
    """Open and recover both, then bring the state machine and log in step (`Plan`).

    Raises CorruptionError / StorageError when start-up must refuse; an OSError of the
    file system (a read-only or vanished directory, a full disk) becomes a one-line
    StorageError naming the file."""
    try:
        raft_log = FileRaftLog(raft_dir, segment_bytes=segment_bytes, fileio=fileio)
        try:
            # Applies are not fsynced: an entry's durable record is the Raft log until the
            # state machine syncs, so the log is compacted only below durable_index().
            sm = FileStateMachine(
                sm_dir, checkpoint_bytes=checkpoint_bytes, fileio=fileio,
                sync_apply=False, replayable_from=raft_log.first_index(),
                background_checkpoint=background_checkpoints,
            )
        except BaseException:
            raft_log.close()
            raise
        try:
            plan = plan_recovery(raft_log, sm)
            carry_out(plan, raft_log, sm, write_snapshot)
        except BaseException:
            sm.close()
            raft_log.close()
            raise
    except OSError as e:
        raise os_error(e, "cannot open storage") from None
    return Storage(raft_log, sm, plan)


def os_error(e: OSError, what: str) -> StorageError:
    """A StorageError of one line for a file-system error."""
    where = f" {e.filename}" if e.filename else ""
    return StorageError(f"{what}:{where}: {e.strerror or e}")


def plan_recovery(raft_log: FileRaftLog, sm: FileStateMachine) -> Plan:
    """Decide how to bring them in step (see the module doc); StorageError to refuse."""
    applied = sm.last_applied()
    point = LogId(index=applied.index, term=applied.term)
    first, last = raft_log.first_index(), raft_log.last_index()
    held = f"the Raft log (entries {first}..{last})"
    if applied.index < first - 1:
        raise StorageError(
            f"the state machine applied up to {applied.index}, but {held} was compacted "
            f"through {first - 1}: the entries in between are lost"
        )
    if applied.index < first:
        return Plan(NOTHING, point)
    if applied.index <= last and raft_log.term(applied.index) == applied.term:
        return Plan(NOTHING, point)
    snap = sm.snapshot_metadata()
    if snap is not None and (snap.last_included.index, snap.last_included.term) == (
        applied.index, applied.term
    ):
        return Plan(FINISH_INSTALL, point, snapshot=snap)
    foreign = (f"the state machine is at ({applied.term}, {applied.index}), which {held} "
               "does not hold")
    if applied.index <= last:
        raise StorageError(
            f"{foreign} (entry {applied.index} has term {raft_log.term(applied.index)}) and "
            "no snapshot explains it: the log is not the one it was applied from"
        )
    last_term = raft_log.term(last)
    hs_term = raft_log.hard_state().term
    if applied.term < last_term:
        raise StorageError(f"{foreign}, and its term is below the log's last term "
                           f"{last_term}: the log is not the one it was applied from")
    if applied.term > hs_term:
        raise StorageError(f"{foreign}, and its term is above the hard state's term "
                           f"{hs_term}: the log is not the one it was applied from")
    membership = sm.membership() or _log_membership(raft_log)
    if membership is None or not membership.voters:
        raise StorageError(f"{foreign}, and no membership is known at that point")
    return Plan(RESTART_LOG, point, membership=membership, lost=(last + 1, applied.index))


def _log_membership(raft_log: FileRaftLog) -> Membership | None:
    """The latest membership the log holds (a config entry, else its snapshot's)."""
    configs = raft_log.config_indexes()
    if configs:
        membership = Membership()
        membership.CopyFrom(raft_log.entries(configs[-1], configs[-1] + 1)[0].payload.config)
        return membership
    snap = raft_log.snapshot_metadata()
    return snap.membership if snap is not None else None


def carry_out(
    plan: Plan, raft_log: FileRaftLog, sm: FileStateMachine, write_snapshot: SnapshotWriter
) -> None:
    """Make the plan durable: install the log's new starting point, and lower a saved
    commit index that the log no longer reaches (commit is not durable Raft state: the
    leader teaches it again; the core must not believe in entries it does not hold)."""
    if plan.action == FINISH_INSTALL:
        assert plan.snapshot is not None
        log.warning("%s: finishing the install of the snapshot at index %d that a crash "
                    "interrupted", raft_log.directory, plan.point.index)
        raft_log.install_snapshot(plan.snapshot)
    elif plan.action == RESTART_LOG:
        assert plan.membership is not None
        log.warning("%s: %s", raft_log.directory, plan.describe())
        metadata = write_snapshot(sm, plan.point, plan.membership)
        raft_log.install_snapshot(metadata)
    hs = raft_log.hard_state()
    if hs.commit > raft_log.last_index():
        log.warning("%s: the saved commit index %d is beyond the log's last entry %d: "
                    "lowered", raft_log.directory, hs.commit, raft_log.last_index())
        raft_log.set_hard_state(
            HardState(term=hs.term, voted_for=hs.voted_for, commit=raft_log.last_index())
        )

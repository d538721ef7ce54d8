"""Offline integrity check of a data directory (behind `dengine check`).

Every file is recognised by its name, scanned with the same record codec recovery uses,
and reported without changing anything on disk. The verdict is start-up's own: the log
and state machine are opened by `recovery.open_storage`, the code a node starts with,
through a `DryRunDisk` that records what start-up would change instead of changing it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from dengine.errors import CorruptionError, StorageError
from dengine.proto import Entry, HardState, LogId, Membership, SnapshotMetadata
from dengine.storage import kvfile, records
from dengine.storage.checkpoints import CHECKPOINT_FILE, decode_checkpoint_meta, parse_wal_name
from dengine.storage.file_state_machine import decode_wal_ops
from dengine.storage.fileio import DryRunDisk, FileIO, RealDisk
from dengine.storage.raft_log import decode_meta, parse_segment_name
from dengine.storage.recovery import Plan, open_storage
from dengine.storage.state_machine import OP_SNAPSHOT_META

OK, TORN, CORRUPT, DAMAGED, OTHER = "ok", "torn tail", "CORRUPT", "damaged", "-"


@dataclass
class FileReport:
    path: str
    kind: str
    records: int = 0
    first_index: int | None = None
    last_index: int | None = None
    status: str = OK
    detail: str = ""

    @property
    def index_range(self) -> str:
        if self.first_index is None:
            return "-"
        return f"{self.first_index}..{self.last_index}"


def _kind(name: str) -> tuple[str, bytes] | None:
    if parse_segment_name(name) is not None:
        return "raft log segment", records.MAGIC_SEGMENT
    if name == "hardstate":
        return "raft hard state", records.MAGIC_HARD_STATE
    if name == "meta":
        return "raft log metadata", records.MAGIC_LOG_META
    if parse_wal_name(name) is not None:
        return "state machine WAL", records.MAGIC_WAL
    if name == CHECKPOINT_FILE:
        return "state machine checkpoint", records.MAGIC_CHECKPOINT
    if name == kvfile.SNAPSHOT_FILE:
        return "snapshot", records.MAGIC_SNAPSHOT
    return None


def inspect_file(io: FileIO, path: str) -> FileReport:
    """Scan one file and describe it: records, index range, torn tail or corruption."""
    name = os.path.basename(path)
    if name.endswith(".tmp"):
        return FileReport(path, "temporary file", status=OTHER, detail="removed at next start")
    if name == "node.json":  # dengine.node.datadir's; start-up reads it first
        try:
            ident = json.loads(io.read(path))
            detail = (f"node {ident['node_id']} of cluster {ident['cluster_id']!r}, "
                      f"format {ident.get('format', 1)}")
        except (ValueError, KeyError, TypeError, OSError):
            return FileReport(path, "node identity", status=OTHER, detail="unreadable")
        return FileReport(path, "node identity", status=OK, detail=detail)
    found = _kind(name)
    if found is None:
        return FileReport(path, "unknown file", status=OTHER)
    kind, magic = found
    data = io.read(path)
    scan = records.scan(data, path, magic)
    report = FileReport(path, kind, records=len(scan.records))
    if scan.corruption is not None:
        report.status = CORRUPT
        report.detail = f"offset {scan.corruption.offset}: {scan.corruption.reason}"
        return report
    try:
        _describe(report, scan, data)
    except CorruptionError as e:
        report.status = CORRUPT
        report.detail = f"offset {e.offset}: {e.reason}"
        return report
    if scan.torn:
        report.status = TORN
        report.detail = (
            f"offset {scan.valid_end}: {scan.torn_reason} "
            f"({scan.size - scan.valid_end} bytes, truncated at next start); " + report.detail
        ).rstrip("; ")
    return report


def _describe(report: FileReport, scan: records.ScanResult, data: bytes) -> None:
    """Fill the index range and a one-line summary of the file's content."""
    path = scan.path
    if report.kind == "raft log segment":
        indexes = []
        for payload, offset in zip(scan.records, scan.offsets, strict=True):
            try:
                indexes.append(Entry.FromString(payload).index)
            except DecodeError as e:
                raise CorruptionError(path, offset, f"undecodable entry: {e}") from None
        if indexes:
            report.first_index, report.last_index = indexes[0], indexes[-1]
    elif report.kind == "raft hard state":
        if scan.records:
            try:
                hs = HardState.FromString(scan.records[-1])
            except DecodeError as e:
                raise CorruptionError(path, scan.offsets[-1], f"undecodable: {e}") from None
            report.detail = f"term {hs.term}, voted for {hs.voted_for}, commit {hs.commit}"
    elif report.kind == "raft log metadata":
        if scan.records:
            generation, index, term, snap = decode_meta(scan.records[0], path)
            report.detail = f"generation {generation}, compacted through {index} (term {term})"
            if snap is not None:
                report.detail += f", snapshot at {snap.last_included.index}"
    elif report.kind == "state machine WAL":
        indexes = []
        ops = 0
        for payload, offset in zip(scan.records, scan.offsets, strict=True):
            for index, _, op, _, _ in decode_wal_ops(payload, path, offset):
                ops += 1
                if op != OP_SNAPSHOT_META:
                    indexes.append(index)
        if indexes:
            report.first_index, report.last_index = indexes[0], indexes[-1]
        report.detail = f"format version {scan.version}, {ops} ops"
    elif scan.records:  # checkpoint or snapshot: a metadata record, then keys (or blocks)
        report.records = len(scan.records) - 1
        if report.kind == "snapshot":
            last, count, _, (revision, compact, changes, leases, _) = kvfile.decode_snapshot_meta(
                scan.records[0], path, scan.offsets[0]
            )
            sha = hashlib.sha256(data).hexdigest()
            report.detail = (
                f"format version {scan.version}, {count} keys at ({last.term}, {last.index}), "
                f"revision {revision}, {_compaction(compact)}, {changes} changes, "
                f"{len(leases)} leases, sha256 {sha[:16]}..."
            )
        else:
            head = decode_checkpoint_meta(scan.records[0], path, scan.offsets[0])
            last = head.last_applied
            report.detail = (
                f"format version {scan.version}, {head.key_count} keys at ({last.term}, "
                f"{last.index}), revision {head.revision}, "
                f"{_compaction(head.compact_revision)}, {head.change_count} changes, "
                f"{len(head.leases)} leases, replay from WAL "
                f"{head.wal_seq}"
            )
        report.first_index = report.last_index = last.index


def _compaction(compact_revision: int) -> str:
    return "never compacted" if compact_revision < 0 else f"compacted at {compact_revision}"


def inspect_data_dir(data_dir: str, fileio: FileIO | None = None) -> list[FileReport]:
    """Reports for every file under `data_dir` (recursively), in path order."""
    io = fileio or RealDisk()
    if not io.isdir(data_dir):
        raise StorageError(f"data directory not found: {data_dir}")
    reports = []
    pending = [data_dir]
    while pending:
        directory = pending.pop()
        for name in io.listdir(directory):
            path = os.path.join(directory, name)
            if io.isdir(path):
                pending.append(path)
            else:
                reports.append(inspect_file(io, path))
    return sorted(reports, key=lambda r: r.path)


@dataclass
class CheckResult:
    """`dengine check`: the files, and what start-up would do with them."""

    reports: list[FileReport]
    error: str | None  # why start-up would refuse (None: it would start)
    plan: Plan | None  # how start-up would bring the log and state machine in step
    actions: list[tuple[str, str, str]]  # (operation, path, detail) start-up would do

    @property
    def starts(self) -> bool:
        return self.error is None


def check_data_dir(data_dir: str, fileio: FileIO | None = None) -> CheckResult:
    """Report every file, and open the storage the way start-up does, changing nothing."""
    io = fileio or RealDisk()
    reports = inspect_data_dir(data_dir, io)
    dry = DryRunDisk(io)
    error: str | None = None
    plan: Plan | None = None
    failed_path = ""

    def pretend_snapshot(_sm: object, point: LogId, membership: Membership) -> SnapshotMetadata:
        dry.actions.append(("write snapshot", os.path.join(data_dir, "snapshots"),
                            f"at ({point.term}, {point.index})"))
        return SnapshotMetadata(last_included=point, membership=membership)

    quiet = logging.getLogger("dengine.storage")
    was_disabled, quiet.disabled = quiet.disabled, True  # the repairs are reported below
    try:
        storage = open_storage(os.path.join(data_dir, "raft"), os.path.join(data_dir, "sm"),
                               fileio=dry, write_snapshot=pretend_snapshot)
        storage.sm.close()
        storage.raft_log.close()
        plan = storage.plan
    except CorruptionError as e:
        error, failed_path = e.message, e.path
    except StorageError as e:
        error = e.message
    finally:
        quiet.disabled = was_disabled
    truncated = {os.path.normpath(p) for op, p, _ in dry.actions if op == "truncate"}
    for r in reports:
        path = os.path.normpath(r.path)
        if failed_path and path == os.path.normpath(failed_path):
            r.status, r.detail = CORRUPT, error or r.detail
        elif r.status == CORRUPT and path in truncated:
            # Damage in the unsynced tail of the last state machine WAL, which the Raft
            # log re-applies: recovery drops it like a torn tail.
            r.status = TORN
            r.detail = f"{r.detail}; an unsynced tail the Raft log re-applies: truncated"
        elif r.status in (CORRUPT, TORN) and r.kind == "snapshot":
            r.status = DAMAGED
            r.detail = (f"{r.detail}; not read at start-up: replaced by a new snapshot when "
                        "a follower refuses it")
    actions = [a for a in dry.actions if a[0] not in ("create", "mkdir")]
    return CheckResult(reports, error, plan, actions)

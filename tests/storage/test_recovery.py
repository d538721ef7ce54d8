"""Start-up recovery (`recovery.open_storage`) and `dengine check` agree on every fault.

Each fault is applied to a data dir; start-up either refuses (the same error check prints,
exit status 1) or proceeds (exit status 0), and check changes no file.
"""

from __future__ import annotations

import hashlib
import os

import pytest
from click.testing import CliRunner
from storage_helpers import config_entry, log_entries

from dengine.cli import cli
from dengine.errors import CorruptionError, StorageError
from dengine.proto import HardState, LogId, Membership, SnapshotMetadata
from dengine.storage import FileRaftLog, FileStateMachine
from dengine.storage.fileio import RealDisk
from dengine.storage.kvfile import write_snapshot
from dengine.storage.records import MAGIC_SEGMENT, scan
from dengine.storage.recovery import FINISH_INSTALL, NOTHING, RESTART_LOG, open_storage
from dengine.storage.state_machine import image_of, store_of

SEGMENT = "seg-000000-00000000000000000001"


def build(root, *, compact: bool = True) -> None:
    """Entries 1..20 (a config entry, then inserts in term 2), all committed and applied;
    the state machine checkpointed at 10."""
    entries = [config_entry(1, 1, [1, 2, 3]), *log_entries(2, 19, term=2)]
    log = FileRaftLog(root / "raft", segment_bytes=1 << 20)
    log.append(entries)
    log.set_hard_state(HardState(term=2, voted_for=1, commit=20))
    if compact:
        log.compact_prefix(2)
    log.close()
    sm = FileStateMachine(root / "sm", background_checkpoint=False)
    sm.apply_chunk(entries[:10])
    sm.checkpoint()
    sm.apply_chunk(entries[10:])
    sm.close()


def writer(root):
    def write(sm, point: LogId, membership: Membership) -> SnapshotMetadata:
        directory = str(root / "snapshots" / f"snap-{point.index}")
        checksum = write_snapshot(RealDisk(), directory, sm.image(), point, membership)
        return SnapshotMetadata(last_included=point, checksum=checksum, membership=membership)
    return write


def start(root):
    return open_storage(root / "raft", root / "sm", write_snapshot=writer(root))


def files(root) -> dict[str, str]:
    out = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                out[path] = hashlib.sha256(f.read()).hexdigest()
    return out


def run_check(root) -> tuple[int, str]:
    before = files(root)
    result = CliRunner().invoke(cli, ["check", str(root)], terminal_width=200)
    assert files(root) == before, "dengine check changed a file"
    return result.exit_code, result.output


def valid_end(path, magic) -> int:
    with open(path, "rb") as f:
        return scan(f.read(), str(path), magic).valid_end


def flip(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


def damage(root, fault: str) -> None:
    raft, sm = root / "raft", root / "sm"
    if fault == "segment last record flipped":
        flip(raft / SEGMENT, valid_end(raft / SEGMENT, MAGIC_SEGMENT) - 1)
    elif fault == "segment cut in half":
        os.truncate(raft / SEGMENT, valid_end(raft / SEGMENT, MAGIC_SEGMENT) // 2)
    elif fault == "hardstate byte flipped":
        flip(raft / "hardstate", os.path.getsize(raft / "hardstate") - 1)
    elif fault == "checkpoint cut in half":
        os.truncate(sm / "checkpoint", os.path.getsize(sm / "checkpoint") // 2)
    elif fault == "meta byte flipped":
        flip(raft / "meta", os.path.getsize(raft / "meta") - 3)
    elif fault == "meta cut in half":
        os.truncate(raft / "meta", os.path.getsize(raft / "meta") // 2)
    elif fault != "none":
        raise AssertionError(fault)


REFUSED = ["hardstate byte flipped", "checkpoint cut in half", "meta byte flipped",
           "meta cut in half"]
STARTS = ["none", "segment last record flipped", "segment cut in half"]


@pytest.mark.parametrize("fault", REFUSED + STARTS)
def test_check_and_start_up_agree(tmp_path, fault):
    build(tmp_path)
    damage(tmp_path, fault)
    code, out = run_check(tmp_path)
    if fault in REFUSED:
        with pytest.raises(CorruptionError) as info:
            start(tmp_path)
        assert code == 1, out
        assert "start-up refuses" in out and "CORRUPT" in out
        assert os.path.basename(info.value.path) in out
    else:
        storage = start(tmp_path)
        storage.sm.close()
        storage.raft_log.close()
        assert code == 0, out
        assert "start-up proceeds" in out and "CORRUPT" not in out
        if fault != "none":
            assert "torn tail" in out and "restart the log after it" in out


@pytest.mark.parametrize("fault", ["segment last record flipped", "segment cut in half"])
def test_state_machine_ahead_of_a_cut_log_restarts_the_log_after_its_point(tmp_path, fault):
    """The tail of the log that the state machine applied was cut: the applied point is
    committed, so the log restarts after it (as after a snapshot), on every restart."""
    build(tmp_path)
    damage(tmp_path, fault)
    storage = start(tmp_path)
    assert storage.plan.action == RESTART_LOG
    log, sm = storage.raft_log, storage.sm
    assert log.first_index() == 21 and log.last_index() == 20 and log.term(20) == 2
    snap = log.snapshot_metadata()
    assert snap is not None and snap.last_included == LogId(index=20, term=2)
    assert [m.id for m in snap.membership.voters] == [1, 2, 3]
    assert log.hard_state() == HardState(term=2, voted_for=1, commit=20)
    assert sm.get(b"k20") == b"v20"
    sm.close()
    log.close()
    # The snapshot written is a real one: its file has the checksum the log records.
    snap_file = tmp_path / "snapshots" / "snap-20" / "snapshot.bin"
    assert hashlib.sha256(snap_file.read_bytes()).digest() == snap.checksum
    again = start(tmp_path)  # the next restart finds them in step
    assert again.plan.action == NOTHING and again.raft_log.first_index() == 21
    again.sm.close()
    again.raft_log.close()
    assert run_check(tmp_path)[0] == 0


def test_state_machine_ahead_of_a_foreign_log_refuses(tmp_path):
    """A log whose last term is above the state machine's point is not the one it was
    applied from: refused, by start-up and check alike."""
    build(tmp_path, compact=False)
    log = FileRaftLog(tmp_path / "raft")
    log.truncate_suffix(5)
    log.append(log_entries(5, 2, term=3))
    log.close()
    with pytest.raises(StorageError, match="not the one it was applied from"):
        start(tmp_path)
    code, out = run_check(tmp_path)
    assert code == 1 and "not the one it was applied from" in out


def test_interrupted_snapshot_install_is_finished(tmp_path):
    build(tmp_path)
    sm = FileStateMachine(tmp_path / "sm")
    membership = sm.membership()
    store = store_of(sm.image())
    store.insert_all([b"k30"], [b"v30"])
    sm.close()
    point = LogId(index=30, term=3)
    directory = str(tmp_path / "incoming")
    checksum = write_snapshot(RealDisk(), directory, image_of(store), point, membership)
    metadata = SnapshotMetadata(last_included=point, checksum=checksum, membership=membership)
    sm = FileStateMachine(tmp_path / "sm")
    sm.apply_snapshot_from_file(metadata, directory)  # ... then a crash before the log's
    sm.close()
    code, out = run_check(tmp_path)
    assert code == 0 and "finish the install" in out
    storage = start(tmp_path)
    assert storage.plan.action == FINISH_INSTALL and storage.raft_log.first_index() == 31
    storage.sm.close()
    storage.raft_log.close()


def test_check_names_the_node_and_refuses_an_unreadable_identity(tmp_path):
    build(tmp_path)
    (tmp_path / "node.json").write_text('{"format": 2, "node_id": 3, "cluster_id": "c0ffee"}')
    code, out = run_check(tmp_path)
    assert code == 0 and "node 3 of cluster 'c0ffee'" in out
    (tmp_path / "node.json").write_text("{not json")
    code, out = run_check(tmp_path)
    assert code == 1 and "node.json is unreadable" in out
    (tmp_path / "node.json").write_text('{"format": 1, "node_id": 3, "cluster_id": "c0ffee"}')
    code, out = run_check(tmp_path)
    assert code == 1 and "start-up refuses" in out and "has format 1" in out

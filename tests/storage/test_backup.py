"""Backup files (dengine.storage.backup) and restoring one into a data dir: the size rule
etcdctl checks, the trailing SHA-256, and truncated or damaged files refused clearly."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from dengine.cli import cli
from dengine.errors import ConfigError, StorageError
from dengine.kv.codec import OP_DELETE, OP_INSERT
from dengine.node.restore import parse_initial_cluster, restore
from dengine.proto import LogId, Member, Membership
from dengine.storage.backup import HEADER_SIZE, BackupBody, backup_info, read_backup
from dengine.storage.kvfile import StoreImage
from dengine.storage.state_machine import image_of, store_of


def _image() -> StoreImage:
    store = store_of(StoreImage())
    for i in range(300):
        store.apply(OP_INSERT, f"k{i % 50}".encode(), f"v{i}".encode() * 10)
    store.apply(OP_DELETE, b"k1", b"")
    return image_of(store)


def _backup(tmp_path: Path, image: StoreImage | None = None) -> Path:
    body = BackupBody(tmp_path / "work", image or _image(), LogId(index=420, term=3),
                      Membership(voters=[Member(id=1, address="10.0.0.1:9181")]))
    path = tmp_path / "b.db"
    try:
        path.write_bytes(b"".join(body.chunks(1000)))
    finally:
        body.close()
    assert not (tmp_path / "work").exists()
    return path


def test_round_trip_and_etcds_size_rule(tmp_path: Path) -> None:
    image = _image()
    path = _backup(tmp_path, image)
    data = path.read_bytes()
    assert len(data) % 512 == 32  # what etcdctl snapshot save checks
    assert hashlib.sha256(data[:-32]).digest() == data[-32:]
    info, snap, _ = read_backup(str(path), tmp_path / "x")
    assert (info.revision, info.keys, info.last_included.index) == (
        image.revision, len(image.items), 420)
    assert snap.image.revision == image.revision
    assert dict(snap.image.items) == dict(image.items)
    assert list(snap.image.changes) == list(image.changes)


@pytest.mark.parametrize("damage", ["truncate", "truncate-page", "flip", "flip-resealed",
                                    "foreign"])
def test_damaged_backups_are_refused(tmp_path: Path, damage: str) -> None:
    path = _backup(tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[:-100]
        expected = "truncated"
    elif damage == "truncate-page":  # still a multiple of 512 + 32: the hash tells
        data = data[:-544] + data[-32:]
        expected = "corrupt"
    elif damage == "flip":
        data[HEADER_SIZE + 40] ^= 0xFF
        expected = "SHA-256"
    elif damage == "flip-resealed":  # a valid trailer over a damaged record: the CRC tells
        data[HEADER_SIZE + 80] ^= 0xFF
        data[-32:] = hashlib.sha256(bytes(data[:-32])).digest()
        expected = "corrupt snapshot inside"
    else:
        data = bytearray(b"\0" * 4096 + hashlib.sha256(b"\0" * 4096).digest())
        expected = "not a dengine snapshot"
    path.write_bytes(bytes(data))
    with pytest.raises(StorageError, match=expected):
        read_backup(str(path), tmp_path / "x")
    result = CliRunner().invoke(cli, ["snapshot", "status", str(path)])
    assert result.exit_code != 0
    # nothing is written by a refused restore
    with pytest.raises(StorageError, match=expected):
        restore(str(path), str(tmp_path / "new"), 1, {1: "127.0.0.1:9181"})
    assert not (tmp_path / "new").exists()


def test_restore_builds_a_data_dir_of_a_new_cluster(tmp_path: Path) -> None:
    path = _backup(tmp_path)
    members = parse_initial_cluster("node1=http://127.0.0.1:7001,2=127.0.0.1:7002")
    assert members == {1: "127.0.0.1:7001", 2: "127.0.0.1:7002"}
    one = restore(str(path), str(tmp_path / "d1"), 1, members, "tok")
    two = restore(str(path), str(tmp_path / "d2"), 2, members, "tok")
    assert one.cluster_id == two.cluster_id  # the same for every member
    assert restore(str(path), str(tmp_path / "d3"), 1, members, "other").cluster_id != (
        one.cluster_id)
    identity = json.loads((tmp_path / "d2" / "node.json").read_text())
    assert (identity["node_id"], identity["cluster_id"]) == (2, one.cluster_id)
    check = CliRunner().invoke(cli, ["check", str(tmp_path / "d1"), "--json"])
    assert json.loads(check.output)["start_up"] == "proceeds", check.output
    with pytest.raises(ConfigError, match="not empty"):
        restore(str(path), str(tmp_path / "d1"), 1, members)
    with pytest.raises(ConfigError, match="not in --initial-cluster"):
        restore(str(path), str(tmp_path / "d4"), 3, members)
    for bad in ("", "x=1.2.3.4:5", "1=nohost", "1=a:1,1=b:2"):
        with pytest.raises(ConfigError):
            parse_initial_cluster(bad)
    info = backup_info(str(path))
    status = CliRunner().invoke(cli, ["snapshot", "status", str(path), "-w", "json"])
    assert json.loads(status.output)["hash"] == info.sha256


def test_save_from_unreachable_endpoints_is_one_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "b.db"
    result = CliRunner().invoke(cli, ["snapshot", "save", str(target), "--endpoints",
                                      "127.0.0.1:1"])
    assert result.exit_code != 0
    assert "cannot connect to 127.0.0.1:1: Connection refused" in str(result.exception)
    assert not target.exists() and not (tmp_path / "b.db.part").exists()

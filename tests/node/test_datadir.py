"""The data dir identity file: a dir belongs to one node of one cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from dengine.errors import ClusterMismatch, StorageError
from dengine.node.datadir import DataDir


def test_first_claim_writes_identity_and_layout(tmp_path: Path) -> None:
    d = DataDir(tmp_path / "data")
    assert d.claim(3, "prod") is True
    assert d.read_identity() == (3, "prod")
    assert d.raft.is_dir() and d.sm.is_dir() and d.snapshots.is_dir()
    assert not list(d.path.glob("*.tmp"))
    assert DataDir(tmp_path / "data").claim(3, "prod") is False


@pytest.mark.parametrize(("node_id", "cluster"), [(4, "prod"), (3, "staging")])
def test_foreign_dir_is_refused(tmp_path: Path, node_id: int, cluster: str) -> None:
    DataDir(tmp_path).claim(3, "prod")
    with pytest.raises(ClusterMismatch, match="belongs to node 3 of cluster 'prod'"):
        DataDir(tmp_path).claim(node_id, cluster)
    assert DataDir(tmp_path).read_identity() == (3, "prod")


@pytest.mark.parametrize(
    "content", [b"", b"{not json", b'{"format": 9, "node_id": 1, "cluster_id": "c"}',
                b'{"format": 1, "node_id": "1", "cluster_id": "c"}', b"[1, 2]"]
)
def test_unreadable_identity_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "node.json").write_bytes(content)
    with pytest.raises(StorageError, match=r"node\.json is unreadable"):
        DataDir(tmp_path).claim(1, "c")


def test_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(StorageError):
        DataDir(tmp_path / "f").claim(1, "c")

"""The data dir identity file: a dir belongs to one node of one cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from dengine.config import NodeConfig
from dengine.errors import ClusterMismatch, ConfigError, StorageError
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
                b'{"format": 2, "node_id": "1", "cluster_id": "c"}', b"[1, 2]"]
)
def test_unreadable_identity_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "node.json").write_bytes(content)
    with pytest.raises(StorageError, match=r"node\.json is unreadable"):
        DataDir(tmp_path).claim(1, "c")


def test_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(StorageError):
        DataDir(tmp_path / "f").claim(1, "c")


# -- cluster identity: derived from the initial cluster token and members (etcd's way)

MEMBERS = {1: "10.0.0.1:9181", 2: "10.0.0.2:9181", 3: "10.0.0.3:9181"}


def member_config(node_id: int, token: str = "prod", data_dir: str = "", **kw: object
                  ) -> NodeConfig:
    peers = {i: a for i, a in MEMBERS.items() if i != node_id}
    return NodeConfig(node_id=node_id, listen_peer=MEMBERS[node_id], peers=peers,
                      initial_cluster_token=token, data_dir=data_dir, **kw)  # type: ignore[arg-type]


def test_initial_members_derive_one_id_and_other_clusters_another() -> None:
    ids = {member_config(n).initial_cluster_id() for n in MEMBERS}
    assert len(ids) == 1
    [cluster] = ids
    assert len(cluster) == 16 and int(cluster, 16) >= 0
    assert member_config(1, token="staging").initial_cluster_id() != cluster
    fewer = NodeConfig(node_id=1, listen_peer=MEMBERS[1], peers={2: MEMBERS[2]},
                       initial_cluster_token="prod")
    assert fewer.initial_cluster_id() != cluster


def test_first_start_records_the_derived_id_and_restarts_check_it(tmp_path: Path) -> None:
    config = member_config(3)
    assert DataDir(tmp_path).claim_for(config) == config.initial_cluster_id()
    assert DataDir(tmp_path).read_identity() == (3, config.initial_cluster_id())
    assert DataDir(tmp_path).claim_for(config) == config.initial_cluster_id()


def test_data_dir_of_another_cluster_is_refused(tmp_path: Path) -> None:
    """Every cluster used to default to the id 'dengine': node 3's data dir from another
    cluster was accepted and served its data."""
    other = member_config(3, token="cluster-b")
    DataDir(tmp_path).claim_for(other)
    with pytest.raises(ClusterMismatch, match=r"initial cluster token 'cluster-b'.*another"):
        DataDir(tmp_path).claim_for(member_config(3, token="cluster-a"))
    assert DataDir(tmp_path).read_identity() == (3, other.initial_cluster_id())


def test_initial_members_may_change_and_an_explicit_id_must_match(tmp_path: Path) -> None:
    """A restart keeps the stored id: the members (addresses) may have moved since."""
    stored = DataDir(tmp_path).claim_for(member_config(3))
    moved = member_config(3).replace(peers={1: "10.9.9.9:9181"}, listen_peer="10.9.9.3:1")
    assert DataDir(tmp_path).claim_for(moved) == stored
    assert DataDir(tmp_path).claim_for(moved.replace(cluster_id=stored)) == stored
    with pytest.raises(ClusterMismatch, match=r"not of cluster 'else' \(cluster_id\)"):
        DataDir(tmp_path).claim_for(moved.replace(cluster_id="else"))


def test_old_data_dirs_keep_the_old_default_id(tmp_path: Path) -> None:
    (tmp_path / "node.json").write_text('{"format": 2, "node_id": 3, "cluster_id": "dengine"}')
    assert DataDir(tmp_path).claim_for(member_config(3)) == "dengine"


def test_a_data_dir_before_revisions_is_refused_naming_both_formats(tmp_path: Path) -> None:
    (tmp_path / "node.json").write_text('{"format": 1, "node_id": 3, "cluster_id": "c"}')
    with pytest.raises(StorageError, match=r"has format 1 .*reads format 2 only") as raised:
        DataDir(tmp_path).claim_for(member_config(3))
    assert "empty data dir" in raised.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.json"]  # nothing touched


def test_joining_node_takes_the_clusters_id_and_keeps_it(tmp_path: Path) -> None:
    joiner = NodeConfig(node_id=4, listen_peer="10.0.0.4:9181", join="10.0.0.1:9081")
    with pytest.raises(ConfigError, match="needs the cluster's id"):
        DataDir(tmp_path).claim_for(joiner)
    assert DataDir(tmp_path).claim_for(joiner.replace(cluster_id="abc")) == "abc"
    # Later starts, with or without --join in the configuration, keep the learnt id.
    assert DataDir(tmp_path).claim_for(joiner) == "abc"
    assert DataDir(tmp_path).claim_for(joiner.replace(join="")) == "abc"
    with pytest.raises(ClusterMismatch):
        DataDir(tmp_path).claim_for(joiner.replace(cluster_id="xyz"))

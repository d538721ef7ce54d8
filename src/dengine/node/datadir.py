"""A node's data directory: layout, and the identity file that ties it to one node.

    DATA_DIR/node.json     {"format": 1, "node_id": N, "cluster_id": "...", "joined": bool},
                           written once
    DATA_DIR/raft/         FileRaftLog (segments + hard state)
    DATA_DIR/sm/           FileStateMachine (checkpoint + WAL)
    DATA_DIR/snapshots/    snapshot files

Starting a node on a data dir that belongs to another node id or cluster would mix two
logs: refuse it with ClusterMismatch before opening any storage.

The cluster id (`claim_for`): an explicit `cluster_id` setting, else at the first start the
id derived from the initial cluster token and members (`NodeConfig.initial_cluster_id`),
or for a node joining with `--join` the id learnt from the cluster (`dengine serve` asks
it). Later starts check the stored id against the same: a data dir of another cluster is
refused. Data dirs of earlier releases hold the old default id `dengine`: kept as is
(their peers hold it too), with the derived id not checked.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from dengine.config import NodeConfig
from dengine.errors import ClusterMismatch, ConfigError, StorageError

log = logging.getLogger(__name__)

IDENTITY_FILE = "node.json"
IDENTITY_FORMAT = 1
LEGACY_CLUSTER_ID = "dengine"  # every cluster's id before ids were derived


class DataDir:
    """Paths inside one node's data directory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.raft = self.path / "raft"
        self.sm = self.path / "sm"
        self.snapshots = self.path / "snapshots"
        self.identity = self.path / IDENTITY_FILE

    def claim_for(self, config: NodeConfig) -> str:
        """Check or record that this dir belongs to this node of its cluster (see the
        module doc); the cluster id to run with. ClusterMismatch for another node's or
        another cluster's dir, StorageError when the dir cannot be used."""
        existing = self._open()
        explicit = config.cluster_id
        if existing is None:
            if explicit:
                cluster_id = explicit
            elif config.join:
                raise ConfigError(
                    "a node joining with --join needs the cluster's id: set cluster_id "
                    "(`dengine serve --join` learns it from the cluster)"
                )
            else:
                cluster_id = config.initial_cluster_id()
            self._write_identity(config.node_id, cluster_id, joined=bool(config.join))
            self._make_subdirs()
            return cluster_id
        have_id, have_cluster, joined = existing
        if have_id != config.node_id:
            raise ClusterMismatch(
                f"data dir {self.path} belongs to node {have_id} of cluster {have_cluster!r}, "
                f"not node {config.node_id}; use that node id, or another data dir"
            )
        if explicit:
            expected, why = explicit, "cluster_id"
        elif joined or config.join or have_cluster == LEGACY_CLUSTER_ID:
            # Learnt from the cluster when it joined (the peers' Hello and --join check it);
            # or written by an earlier release, whose peers hold the same old default.
            expected, why = have_cluster, ""
        else:
            expected = config.initial_cluster_id()
            why = (f"the initial cluster token {config.initial_cluster_token!r} and members "
                   f"{config.initial_members()}")
        if expected != have_cluster:
            raise ClusterMismatch(
                f"data dir {self.path} belongs to node {have_id} of cluster {have_cluster!r}, "
                f"not of cluster {expected!r} (from {why}): it is another cluster's data "
                "dir; use an empty "
                f"data dir (or this cluster's), or, if the initial members changed since "
                f"this node's first start, set cluster_id = {have_cluster!r}"
            )
        self._make_subdirs()
        return have_cluster

    def claim(self, node_id: int, cluster_id: str) -> bool:
        """Check or record that this dir belongs to (node_id, cluster_id): True on first
        start (the identity file was just written), False when the dir was already ours."""
        first = self._open() is None
        self.claim_for(NodeConfig(node_id=node_id, cluster_id=cluster_id))
        return first

    def _open(self) -> tuple[int, str, bool] | None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create data dir {self.path}: {e.strerror}") from None
        if not self.path.is_dir():
            raise StorageError(f"data dir {self.path} is not a directory")
        return self._read()

    def _make_subdirs(self) -> None:
        try:
            for sub in (self.raft, self.sm, self.snapshots):
                sub.mkdir(exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot use data dir {self.path}: {e.strerror}") from None

    def read_identity(self) -> tuple[int, str] | None:
        """(node_id, cluster_id) recorded in this dir, or None if it has none yet."""
        found = self._read()
        return None if found is None else found[:2]

    def _read(self) -> tuple[int, str, bool] | None:
        try:
            raw = self.identity.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StorageError(f"cannot read {self.identity}: {e.strerror}") from None
        try:
            doc = json.loads(raw)
            if doc.get("format") != IDENTITY_FORMAT:
                raise ValueError(f"unsupported format {doc.get('format')!r}")
            node_id, cluster_id = doc["node_id"], doc["cluster_id"]
            joined = doc.get("joined", False)
            if not isinstance(node_id, int) or not isinstance(cluster_id, str):
                raise ValueError("node_id must be an integer and cluster_id a string")
        except (ValueError, KeyError, AttributeError) as e:
            raise StorageError(f"{self.identity} is unreadable: {e}") from None
        return node_id, cluster_id, joined is True

    def _write_identity(self, node_id: int, cluster_id: str, *, joined: bool) -> None:
        """Write-temp, fsync, rename, fsync the directory: the file is whole or absent."""
        doc = {"format": IDENTITY_FORMAT, "node_id": node_id, "cluster_id": cluster_id,
               "joined": joined}
        tmp = self.identity.with_suffix(".json.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, json.dumps(doc).encode() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.identity)
            dir_fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            raise StorageError(f"cannot write {self.identity}: {e.strerror}") from None

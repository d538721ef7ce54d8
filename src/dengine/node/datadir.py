"""A node's data directory: layout, and the identity file that ties it to one node.

    DATA_DIR/node.json     {"format": 1, "node_id": N, "cluster_id": "..."}, written once
    DATA_DIR/raft/         FileRaftLog (segments + hard state)
    DATA_DIR/sm/           FileStateMachine (checkpoint + WAL)
    DATA_DIR/snapshots/    snapshot files

Starting a node on a data dir that belongs to another node id or cluster would mix two
logs: refuse it with ClusterMismatch before opening any storage.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dengine.errors import ClusterMismatch, StorageError

IDENTITY_FILE = "node.json"
IDENTITY_FORMAT = 1


class DataDir:
    """Paths inside one node's data directory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.raft = self.path / "raft"
        self.sm = self.path / "sm"
        self.snapshots = self.path / "snapshots"
        self.identity = self.path / IDENTITY_FILE

    def claim(self, node_id: int, cluster_id: str) -> bool:
        """Check or record that this dir belongs to (node_id, cluster_id).

        Returns True on first start (the identity file was just written), False when the
        dir was already ours; raises ClusterMismatch when it belongs to someone else.
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create data dir {self.path}: {e.strerror}") from None
        if not self.path.is_dir():
            raise StorageError(f"data dir {self.path} is not a directory")
        existing = self.read_identity()
        if existing is None:
            self._write_identity(node_id, cluster_id)
            self._make_subdirs()
            return True
        have_id, have_cluster = existing
        if have_id != node_id or have_cluster != cluster_id:
            raise ClusterMismatch(
                f"data dir {self.path} belongs to node {have_id} of cluster {have_cluster!r}, "
                f"not node {node_id} of cluster {cluster_id!r}; use that node id and cluster "
                f"id, or another data dir"
            )
        self._make_subdirs()
        return False

    def _make_subdirs(self) -> None:
        try:
            for sub in (self.raft, self.sm, self.snapshots):
                sub.mkdir(exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot use data dir {self.path}: {e.strerror}") from None

    def read_identity(self) -> tuple[int, str] | None:
        """(node_id, cluster_id) recorded in this dir, or None if it has none yet."""
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
            if not isinstance(node_id, int) or not isinstance(cluster_id, str):
                raise ValueError("node_id must be an integer and cluster_id a string")
        except (ValueError, KeyError, AttributeError) as e:
            raise StorageError(f"{self.identity} is unreadable: {e}") from None
        return node_id, cluster_id

    def _write_identity(self, node_id: int, cluster_id: str) -> None:
        """Write-temp, fsync, rename, fsync the directory: the file is whole or absent."""
        doc = {"format": IDENTITY_FORMAT, "node_id": node_id, "cluster_id": cluster_id}
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

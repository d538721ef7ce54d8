"""A node's data directory: layout, and the identity file that ties it to one node.

    DATA_DIR/node.json     {"format": 2, "node_id": N, "cluster_id": "...", "joined": bool,
                            "initial_cluster_token": "...", "crc32c": C}, written once
    DATA_DIR/raft/         FileRaftLog (segments + hard state)
    DATA_DIR/sm/           FileStateMachine (checkpoint + WAL)
    DATA_DIR/snapshots/    snapshot files

Starting a node on a data dir that belongs to another node id or cluster would mix two
logs: refuse it with ClusterMismatch before opening any storage. A data dir of format 1
(before revisions: etcd's data model) is refused too, naming both formats.

The cluster id (`claim_for`): an explicit `cluster_id` setting, else at the first start the
id derived from the initial cluster token and members (`NodeConfig.initial_cluster_id`),
or for a node joining with `--join` the id learnt from the cluster (`dengine serve` asks
it). Later starts run with the stored id, and refuse a data dir whose recorded initial
cluster token differs from the configured one (another cluster's), or whose id differs
from an explicit `cluster_id`; the initial members may change (addresses move). Data dirs
of earlier releases hold the old default id `dengine` and no token: kept as is (their
peers hold the same id).

`crc32c` is the CRC32C of the other fields as `_canonical` writes them: JSON has no
checksum, and a flipped bit in the cluster id or the token would otherwise be read as
another identity. A file with a field this release does not know (a damaged name) or a
CRC that does not match is refused; one without `crc32c` (earlier releases) is read as
it is.

Files are read and written through a `FileIO` (the real disk by default; the whole-node
simulator's disk in `dengine.sim.nodesim`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crc32c import crc32c

from dengine.config import NodeConfig
from dengine.errors import ClusterMismatch, ConfigError, StorageError
from dengine.storage.fileio import FileIO, RealDisk

log = logging.getLogger(__name__)

IDENTITY_FILE = "node.json"
IDENTITY_FORMAT = 2  # the data dir of etcd's data model: keys with revisions (docs/formats.md)
LEGACY_CLUSTER_ID = "dengine"  # every cluster's id before ids were derived
_FIELDS = frozenset(("format", "node_id", "cluster_id", "joined", "initial_cluster_token",
                     "crc32c"))


def _canonical(doc: dict[str, Any]) -> bytes:
    """What node.json's CRC covers: every field but `crc32c`, keys sorted, compact."""
    return json.dumps({k: v for k, v in doc.items() if k != "crc32c"}, sort_keys=True,
                      separators=(",", ":")).encode()


@dataclass(frozen=True)
class _Identity:
    """node.json: whose data dir this is."""

    node_id: int
    cluster_id: str
    joined: bool  # the cluster id was learnt from the cluster (--join)
    token: str | None  # the initial cluster token of the first start (None: not recorded)


class DataDir:
    """Paths inside one node's data directory."""

    def __init__(self, path: str | os.PathLike[str], fileio: FileIO | None = None) -> None:
        self.path = Path(path)
        self.io = fileio or RealDisk()
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
        token = config.initial_cluster_token
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
                if not token and config.peers:
                    log.warning("no initial_cluster_token: cluster id %s is derived from the "
                                "initial members alone; give every cluster its own token",
                                cluster_id)
            self._write_identity(_Identity(config.node_id, cluster_id, bool(config.join), token))
            self._make_subdirs()
            return cluster_id
        have = existing
        if have.node_id != config.node_id:
            raise ClusterMismatch(
                f"data dir {self.path} belongs to node {have.node_id} of cluster "
                f"{have.cluster_id!r}, not node {config.node_id}; use that node id, or "
                "another data dir"
            )
        if explicit and explicit != have.cluster_id:
            raise ClusterMismatch(
                f"data dir {self.path} belongs to node {have.node_id} of cluster "
                f"{have.cluster_id!r}, not of cluster {explicit!r} (cluster_id); use an "
                "empty data dir, or this cluster's"
            )
        if not (explicit or have.joined or config.join or have.token is None
                or have.cluster_id == LEGACY_CLUSTER_ID) and have.token != token:
            raise ClusterMismatch(
                f"data dir {self.path} belongs to node {have.node_id} of cluster "
                f"{have.cluster_id!r} (initial cluster token {have.token!r}), not of this "
                f"node's cluster (initial cluster token {token!r}): it is another cluster's "
                "data dir; use an empty data dir, or this cluster's"
            )
        self._make_subdirs()
        return have.cluster_id

    def claim(self, node_id: int, cluster_id: str) -> bool:
        """Check or record that this dir belongs to (node_id, cluster_id): True on first
        start (the identity file was just written), False when the dir was already ours."""
        first = self._open() is None
        self.claim_for(NodeConfig(node_id=node_id, cluster_id=cluster_id))
        return first

    def _open(self) -> _Identity | None:
        io, path = self.io, str(self.path)
        try:
            if not io.exists(path):
                io.makedirs(path)
        except OSError as e:
            raise StorageError(f"cannot create data dir {self.path}: {e.strerror}") from None
        if not io.isdir(path):
            raise StorageError(f"data dir {self.path} is not a directory")
        return self._read()

    def _make_subdirs(self) -> None:
        io = self.io
        try:
            made = False
            for sub in (self.raft, self.sm, self.snapshots):
                if not io.isdir(str(sub)):
                    io.mkdir(str(sub))
                    made = True
            if made:
                io.fsync_dir(str(self.path))
        except OSError as e:
            raise StorageError(f"cannot use data dir {self.path}: {e.strerror}") from None

    def read_identity(self) -> tuple[int, str] | None:
        """(node_id, cluster_id) recorded in this dir, or None if it has none yet."""
        found = self._read()
        return None if found is None else (found.node_id, found.cluster_id)

    def _read(self) -> _Identity | None:
        try:
            raw = self.io.read(str(self.identity))
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StorageError(f"cannot read {self.identity}: {e.strerror}") from None
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            unknown = sorted(set(doc) - _FIELDS)
            if unknown:
                raise ValueError(f"unknown field {unknown[0]!r} (damaged?)")
            if "crc32c" in doc and doc["crc32c"] != crc32c(_canonical(doc)):
                raise ValueError("CRC32C mismatch (damaged)")
            if doc.get("format") == 1:
                raise StorageError(
                    f"data dir {self.path} has format 1 (written before revisions: its keys "
                    f"have no create/mod revision or version); this release reads format "
                    f"{IDENTITY_FORMAT} only and does not make revisions up (replicas that "
                    "did so on their own would disagree). Start this node on an empty data "
                    "dir (a member then catches up from its cluster), or copy the keys over "
                    "with the release that wrote it (docs/formats.md, 'Data directory')"
                )
            if doc.get("format") != IDENTITY_FORMAT:
                raise ValueError(f"unsupported format {doc.get('format')!r}")
            node_id, cluster_id = doc["node_id"], doc["cluster_id"]
            joined = doc.get("joined", False)
            token = doc.get("initial_cluster_token")
            if not isinstance(node_id, int) or not isinstance(cluster_id, str):
                raise ValueError("node_id must be an integer and cluster_id a string")
            if not isinstance(token, str | None):
                raise ValueError("initial_cluster_token must be a string")
        except (ValueError, KeyError, AttributeError) as e:
            raise StorageError(f"{self.identity} is unreadable: {e}") from None
        return _Identity(node_id, cluster_id, joined is True, token)

    def _write_identity(self, identity: _Identity) -> None:
        """Write-temp, fsync, rename, fsync the directory: the file is whole or absent."""
        doc = {"format": IDENTITY_FORMAT, "node_id": identity.node_id,
               "cluster_id": identity.cluster_id, "joined": identity.joined,
               "initial_cluster_token": identity.token}
        doc["crc32c"] = crc32c(_canonical(doc))
        try:
            self.io.atomic_write(str(self.identity), [json.dumps(doc).encode() + b"\n"])
        except OSError as e:
            raise StorageError(f"cannot write {self.identity}: {e.strerror}") from None

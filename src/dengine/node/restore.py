"""`dengine snapshot restore`: a new cluster's data dirs from a backup file.

Each member of the new cluster gets its own data dir, made from the same backup with the
same `--initial-cluster` (and token), run once per member:

* the store as the backup holds it (keys, revisions, history, compaction point);
* the membership of `--initial-cluster`: the old cluster's members are dropped;
* a new cluster identity: node.json records this member's id and a cluster id derived
  from the initial cluster token, the new members and the backup's SHA-256, the same for
  every member restored alike and never the old cluster's, so the two never talk;
* a snapshot at the backup's log position as its starting point: the state machine is
  installed from it, the Raft log starts right after it (hard state: its term, no vote,
  committed up to it). The members then elect a leader among themselves.

Nothing is written unless the backup is whole and decodes; the data dir must not exist
or be empty; on a failure midway the data dir is removed again.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from dengine.config import NodeConfig, parse_address, url_address
from dengine.errors import ConfigError
from dengine.node.datadir import DataDir
from dengine.node.snapshots import SnapshotStore
from dengine.proto import HardState, Member, Membership
from dengine.storage.backup import BackupInfo, read_backup
from dengine.storage.file_state_machine import FileStateMachine
from dengine.storage.raft_log import FileRaftLog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Restored:
    info: BackupInfo
    node_id: int
    cluster_id: str
    members: dict[int, str]


def member_id(name: str) -> int:
    """A member's id from its name: "3" or etcd-style "node3" (dengine's member names)."""
    text = name.strip()
    digits = text[4:] if text.startswith("node") else text
    if not digits.isdigit() or int(digits) <= 0:
        raise ConfigError(f"member name {name!r}: expected an id (3) or node<id> (node3)")
    return int(digits)


def parse_initial_cluster(text: str) -> dict[int, str]:
    """etcd's --initial-cluster: "node1=http://10.0.0.1:9181,2=10.0.0.2:9181" ->
    {1: "10.0.0.1:9181", 2: "10.0.0.2:9181"} (peer addresses)."""
    members: dict[int, str] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        name, sep, address = item.partition("=")
        if not sep:
            raise ConfigError(f"--initial-cluster: {item!r} is not NAME=PEER_URL")
        node_id = member_id(name)
        address = url_address(address) if "://" in address else address.strip()
        parse_address(address)
        if node_id in members:
            raise ConfigError(f"--initial-cluster names member {node_id} twice")
        members[node_id] = address
    if not members:
        raise ConfigError("--initial-cluster is empty (expected NAME=PEER_URL,...)")
    return members


def restore(backup: str, data_dir: str, node_id: int, members: dict[int, str],
            initial_cluster_token: str = "") -> Restored:
    """Build `data_dir` for member `node_id` of a new cluster of `members` from `backup`."""
    if node_id not in members:
        raise ConfigError(f"member {node_id} is not in --initial-cluster "
                          f"({', '.join(str(i) for i in sorted(members))})")
    root = Path(data_dir)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(f"{data_dir} exists and is not empty: restore into a new data dir")
    created = not root.exists()
    ddir = DataDir(root)
    try:
        ddir.snapshots.mkdir(parents=True, exist_ok=True)
        info, data, _ = read_backup(backup, ddir.snapshots / "restore-tmp")
        membership = Membership(voters=[Member(id=i, address=a)
                                        for i, a in sorted(members.items())])
        store = SnapshotStore(ddir.snapshots, keep=2)
        metadata = store.write(data.image, data.last_included, membership)
        shutil.rmtree(ddir.snapshots / "restore-tmp", ignore_errors=True)
        sm = FileStateMachine(ddir.sm)
        try:
            sm.apply_snapshot_from_file(metadata, str(store.directory(metadata)))
        finally:
            sm.close()
        raft_log = FileRaftLog(ddir.raft)
        try:
            raft_log.install_snapshot(metadata)
            last = metadata.last_included
            raft_log.set_hard_state(HardState(term=last.term, voted_for=0, commit=last.index))
        finally:
            raft_log.close()
        config = NodeConfig(
            data_dir=str(root), node_id=node_id, initial_cluster_token=initial_cluster_token,
            listen_peer=members[node_id],
            peers={i: a for i, a in members.items() if i != node_id})
        # Derived as a first start would, and from the backup too: every member restored
        # from this backup alike gets the same id, never the old cluster's (even with the
        # old token and addresses).
        config.cluster_id = hashlib.sha256(
            f"{config.initial_cluster_id()}\nrestored from {info.sha256}".encode()
        ).hexdigest()[:16]
        cluster_id = ddir.claim_for(config)
    except BaseException:
        if created:
            shutil.rmtree(root, ignore_errors=True)
        else:
            for child in root.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink()
        raise
    log.info("restored %s into %s: member %d of cluster %s, revision %d, %d keys", backup,
             data_dir, node_id, cluster_id, info.revision, info.keys)
    return Restored(info, node_id, cluster_id, dict(members))

"""The auth state survives as the store does: WAL replay, checkpoints, snapshots; a
checkpoint written before auth (format 4) reads as "no auth"."""

from __future__ import annotations

from storage_helpers import auth_command, command_entry, insert, store_state

from dengine.kv.auth import hash_password
from dengine.proto import LogId, SnapshotMetadata
from dengine.proto.etcd import rpc_pb2 as pb
from dengine.storage import FileStateMachine, kvfile
from dengine.storage.checkpoints import (
    CheckpointMeta,
    decode_checkpoint_meta,
    encode_checkpoint_meta,
)
from dengine.storage.fileio import SimulatedDisk

DIR = "/data/sm"
HASH = hash_password("pw", b"0123456789abcdef")


def auth_entries(first: int) -> list:
    perm = pb.AuthRoleGrantPermissionRequest(name="r")
    perm.perm.key, perm.perm.range_end = b"/app/", b"/app0"
    commands = [
        auth_command(user_add=pb.AuthUserAddRequest(name="root", password=HASH)),
        auth_command(user_grant_role=pb.AuthUserGrantRoleRequest(user="root", role="root")),
        auth_command(role_add=pb.AuthRoleAddRequest(name="r")),
        auth_command(role_grant_permission=perm),
        auth_command(auth_enable=pb.AuthEnableRequest()),
        auth_command(user_add=pb.AuthUserAddRequest(name="nobody", password=HASH)),  # refused
    ]
    return [command_entry(first + i, 1, c) for i, c in enumerate(commands)]


def test_auth_state_survives_replay_checkpoint_and_snapshot():
    disk = SimulatedDisk()
    sm = FileStateMachine(DIR, fileio=disk, background_checkpoint=False)
    results = sm.apply_chunk([command_entry(1, 1, insert(b"k", b"v")), *auth_entries(2)])
    assert [r.succeeded for r in results[1:]] == [True] * 5 + [False]
    expected = sm.read(store_state)
    auth = sm.read(lambda s: s.auth)
    assert auth.enabled and auth.revision == 5 and sorted(auth.users) == ["root"]
    assert expected[5]  # the auth image is part of what must survive
    sm.close()
    replayed = FileStateMachine(DIR, fileio=disk, background_checkpoint=False)  # WAL replay
    assert replayed.read(store_state) == expected
    replayed.checkpoint()
    replayed.close()
    again = FileStateMachine(DIR, fileio=disk, background_checkpoint=False)  # checkpoint
    assert again.read(store_state) == expected
    checksum = again.generate_snapshot_data("/data/snap", LogId(index=7, term=1))
    other = FileStateMachine("/data/other", fileio=disk, background_checkpoint=False)
    other.apply_snapshot_from_file(
        SnapshotMetadata(last_included=LogId(index=7, term=1), checksum=checksum), "/data/snap")
    assert other.read(store_state) == expected


def test_a_checkpoint_record_before_auth_reads_as_no_auth():
    meta = CheckpointMeta(LogId(index=3, term=1), 1, 0, None, None, 4, 0, 0, [(7, 10)])
    new = encode_checkpoint_meta(meta)
    before_auth = new[:-4]  # format 4 ended after the lease table (no auth blob)
    decoded = decode_checkpoint_meta(before_auth, "cp", 0)
    assert decoded.leases == [(7, 10)] and decoded.auth == b""
    assert decode_checkpoint_meta(new, "cp", 0) == meta
    counts = kvfile.encode_counts(4, 0, 0, [], b"xyz")
    assert kvfile.decode_counts(counts, 0) == (4, 0, 0, [], b"xyz")

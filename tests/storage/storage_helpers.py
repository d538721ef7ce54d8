"""Entry builders shared by the storage tests."""

from __future__ import annotations

from collections.abc import Iterator

from dengine.kv.codec import (
    OP_AUTH,
    OP_COMPACTION,
    OP_DELETE_RANGE,
    OP_LEASE_GRANT,
    OP_LEASE_REVOKE,
    OP_PUT,
    OP_TXN,
    encode_request,
)
from dengine.kv.mvcc import MvccStore
from dengine.proto import Entry, Member, Membership, WriteCommand
from dengine.proto.auth_pb2 import AuthCommand
from dengine.proto.etcd import rpc_pb2 as pb
from dengine.storage.fileio import SimulatedDisk


def insert(key: bytes, value: bytes) -> bytes:
    cmd = WriteCommand()
    cmd.insert.key = key
    cmd.insert.value = value
    return cmd.SerializeToString()


def delete(key: bytes) -> bytes:
    cmd = WriteCommand()
    cmd.delete.key = key
    return cmd.SerializeToString()


def put_request(key: bytes, value: bytes, *, prev_kv: bool = False,
                ignore_value: bool = False, lease: int = 0) -> bytes:
    """The command of an etcd Put request, wrapped as a server wraps it."""
    req = pb.PutRequest(key=key, value=value, prev_kv=prev_kv, ignore_value=ignore_value,
                        lease=lease)
    return encode_request(OP_PUT, req.SerializeToString())


def lease_grant_request(lease_id: int, ttl: int) -> bytes:
    request = pb.LeaseGrantRequest(ID=lease_id, TTL=ttl).SerializeToString()
    return encode_request(OP_LEASE_GRANT, request)


def lease_revoke_request(lease_id: int) -> bytes:
    return encode_request(OP_LEASE_REVOKE, pb.LeaseRevokeRequest(ID=lease_id).SerializeToString())


def delete_range_request(key: bytes, range_end: bytes = b"", *, prev_kv: bool = False) -> bytes:
    req = pb.DeleteRangeRequest(key=key, range_end=range_end, prev_kv=prev_kv)
    return encode_request(OP_DELETE_RANGE, req.SerializeToString())


def cas_request(key: bytes, version: int, value: bytes) -> bytes:
    """A txn: if `key`'s version is `version`, put `value`, else read the key."""
    req = pb.TxnRequest(
        compare=[pb.Compare(key=key, target=pb.Compare.VERSION, result=pb.Compare.EQUAL,
                            version=version)],
        success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))],
        failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))],
    )
    return encode_request(OP_TXN, req.SerializeToString())


def compaction_request(revision: int) -> bytes:
    request = pb.CompactionRequest(revision=revision).SerializeToString()
    return encode_request(OP_COMPACTION, request)


def auth_command(user: str = "", **request: object) -> bytes:
    """The WriteCommand of one auth change (kv/auth.py), asked by `user`."""
    return encode_request(OP_AUTH, AuthCommand(user=user, **request).SerializeToString())


def store_state(store: MvccStore) -> tuple[int, int, list[tuple[bytes, bytes]], list[tuple],
                                           list[tuple], bytes]:
    """Everything of an MvccStore that must survive: revision, compaction point, the live
    (key, packed), the changelog, the leases (with their keys) and the auth state."""
    return (store.revision, store.compact_revision, sorted(store.items_packed()),
            [tuple(c) for c in store.changes()],
            [(i, store.leases.info(i, keys=True)) for i, _ in store.leases.packed()],
            store.auth.image())


def command_entry(index: int, term: int, command: bytes) -> Entry:
    entry = Entry(index=index, term=term)
    entry.payload.command = command
    return entry


def noop_entry(index: int, term: int) -> Entry:
    entry = Entry(index=index, term=term)
    entry.payload.noop.SetInParent()
    return entry


def config_entry(index: int, term: int, voters: list[int]) -> Entry:
    entry = Entry(index=index, term=term)
    entry.payload.config.CopyFrom(
        Membership(voters=[Member(id=v, address=f"127.0.0.1:{9000 + v}") for v in voters])
    )
    return entry


def log_entries(first: int, count: int, term: int, tag: bytes = b"v") -> list[Entry]:
    """`count` insert entries from index `first`, each writing key k<index>."""
    return [
        command_entry(i, term, insert(b"k%d" % i, tag + b"%d" % i))
        for i in range(first, first + count)
    ]


def encoded(entries: list[Entry]) -> list[bytes]:
    return [e.SerializeToString() for e in entries]


class ChunksOnlyDisk(SimulatedDisk):
    """A simulated disk on which a file bigger than `whole_max` bytes can only be read in
    chunks: a whole-file read of it fails (recovery must not hold big files whole)."""

    def __init__(self, whole_max: int = 4096) -> None:
        super().__init__()
        self.whole_max = whole_max

    def read(self, path: str) -> bytes:
        data = super().read(path)
        if len(data) > self.whole_max:
            raise AssertionError(f"{path}: {len(data)} bytes read whole")
        return data

    def read_chunks(self, path: str, chunk_bytes: int) -> Iterator[bytes]:
        data = SimulatedDisk.read(self, path)
        for start in range(0, len(data), chunk_bytes):
            yield data[start : start + chunk_bytes]

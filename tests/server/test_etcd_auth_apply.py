"""A write checked before a permission change and applied after it (docs/auth.md, "Checks
as a write applies"): on an in-process 3-node cluster, the leader's engine is made to
commit an auth change between the check of a client's write (its stamp taken) and its
proposal, so the change is always applied first. As etcd 3.4: "etcdserver: revision of
auth store is old" (InvalidArgument), whatever the permission is by then, and no member
applies the write. Every engine and server is stopped by its test."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from test_etcd_api import Member, cluster, leader_of, run
from test_etcd_auth import call, code_of, login, setup_auth

from dengine import Client
from dengine.client.commands import delete, insert
from dengine.errors import KvError
from dengine.proto import WriteCommand
from dengine.proto.etcd import rpc_pb2 as pb

KV, LEASE = "etcdserverpb.KV", "etcdserverpb.Lease"
OLD = (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: revision of auth store is old")
DENIED = (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")


def change_first(monkeypatch: pytest.MonkeyPatch, m: Member,
                 change: Callable[[], Awaitable[Any]]) -> None:
    """`change()` committed and applied before the next request `m` proposes (after its
    permission was checked), once."""
    engine = m.engine
    propose = engine.kv_request

    async def kv_request(field: int, request: bytes, **kw: Any) -> Any:
        monkeypatch.setattr(engine, "kv_request", propose)
        await change()
        return await propose(field, request, **kw)

    monkeypatch.setattr(engine, "kv_request", kv_request)


async def revisions_and_counts(members: dict[int, Member], root: str,
                               key: bytes) -> set[tuple[int, int]]:
    """Each member's (store revision, count of `key`) by a linearizable read: every
    entry committed before it, the refused write's included, applied there."""
    out = set()
    for m in members.values():
        resp = await call(m, "Range", pb.RangeRequest(key=key), pb.RangeResponse, root,
                          service=KV)
        out.add((resp.header.revision, resp.count))
    return out


def test_a_change_committed_between_a_writes_check_and_its_apply(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with cluster(tmp_path) as members:
            leader = leader_of(members)
            root = await setup_auth(leader)
            await call(leader, "RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(
                name="r1", perm={"key": b"/app/", "range_end": b"/app0", "permType": 2}),
                pb.AuthRoleGrantPermissionResponse, root)
            token = await login(leader, "u1", "p1")

            async def put(key: bytes) -> Any:
                return await call(leader, "Put", pb.PutRequest(key=key, value=b"v"),
                                  pb.PutResponse, token, service=KV)

            await put(b"/app/ok")  # no race: applies

            async def revoke() -> None:
                await call(leader, "RoleRevokePermission", pb.AuthRoleRevokePermissionRequest(
                    role="r1", key=b"/app/", range_end=b"/app0"),
                    pb.AuthRoleRevokePermissionResponse, root)

            def user_add(name: str) -> Callable[[], Awaitable[Any]]:
                async def change() -> None:
                    await call(leader, "UserAdd", pb.AuthUserAddRequest(
                        name=name, password="x"), pb.AuthUserAddResponse, root)
                return change

            # an unrelated change: the permission still holds, refused all the same
            change_first(monkeypatch, leader, user_add("u2"))
            assert await code_of(put(b"/app/a")) == OLD
            assert await revisions_and_counts(members, root, b"/app/a") == {(2, 0)}
            # a lease of u1's with a key: its revoke races the same way
            lease = await call(leader, "LeaseGrant", pb.LeaseGrantRequest(TTL=300),
                               pb.LeaseGrantResponse, token, service=LEASE)
            await call(leader, "Put", pb.PutRequest(key=b"/app/l", lease=lease.ID),
                       pb.PutResponse, token, service=KV)
            change_first(monkeypatch, leader, user_add("u3"))
            assert await code_of(call(leader, "LeaseRevoke", pb.LeaseRevokeRequest(
                ID=lease.ID), pb.LeaseRevokeResponse, token, service=LEASE)) == OLD
            assert await revisions_and_counts(members, root, b"/app/l") == {(3, 1)}
            # the revoke of the permission itself: refused, and denied from then on
            change_first(monkeypatch, leader, revoke)
            txn = pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(
                key=b"/app/t", value=b"v"))])
            assert await code_of(call(leader, "Txn", txn, pb.TxnResponse, token,
                                      service=KV)) == OLD
            assert await code_of(put(b"/app/t")) == DENIED
            assert await revisions_and_counts(members, root, b"/app/t") == {(3, 0)}

    run(main())



def test_dengines_own_writes_are_checked_as_they_apply_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The native protocol's Write (dengine's Client): a plain put, and a batch of a plain
    put, a plain delete and an etcd request, checked before an auth change that commits
    first: refused as they apply, on every member."""
    async def main() -> None:
        async with cluster(tmp_path, native=True) as members:
            leader = leader_of(members)
            root = await setup_auth(leader)
            await call(leader, "RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(
                name="r1", perm={"key": b"/app/", "range_end": b"/app0", "permType": 2}),
                pb.AuthRoleGrantPermissionResponse, root)
            engine = leader.engine
            write = engine.write_encoded

            def change_first(method: str, request: Any, response: Any) -> None:
                async def changed(commands: Any, **kw: Any) -> Any:
                    monkeypatch.setattr(engine, "write_encoded", write)
                    await call(leader, method, request, response, root)
                    return await write(commands, **kw)
                monkeypatch.setattr(engine, "write_encoded", changed)

            async with Client(leader.engine.config.listen_client, transport="native",
                              user="u1", password="p1") as client:
                await client.put(b"/app/d", b"0")
                await client.put(b"/app/ok", b"1")  # no race: applies
                change_first("UserAdd", pb.AuthUserAddRequest(name="u2", password="x"),
                             pb.AuthUserAddResponse)
                with pytest.raises(KvError, match=f"^{OLD[1]}$"):
                    await client.put(b"/app/a", b"1")
                change_first("RoleRevokePermission", pb.AuthRoleRevokePermissionRequest(
                    role="r1", key=b"/app/", range_end=b"/app0"),
                    pb.AuthRoleRevokePermissionResponse)
                results = await client.write([
                    insert(b"/app/a", b"1"), delete(b"/app/d"),
                    WriteCommand(put=pb.PutRequest(key=b"/app/b").SerializeToString())])
                assert [r.succeeded for r in results] == [False] * 3
                with pytest.raises(KvError, match=r"^etcdserver: permission denied$"):
                    await client.put(b"/app/a", b"1")
            for key, count in ((b"/app/a", 0), (b"/app/d", 1), (b"/app/b", 0)):
                assert await revisions_and_counts(members, root, key) == {(3, count)}

    run(main())

"""etcd's Auth service and the permission checks on an in-process 3-node cluster
(docs/auth.md): tokens valid on every member at once, follower forwarding with the
client's token, token expiry, dengine's Client with and without user and password, and
a flood of failed logins that leaves the member serving. Every engine and server is
stopped by its test."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from test_etcd_api import Member, cluster, follower_of, leader_of, run

from dengine import Client
from dengine.errors import KvError
from dengine.proto.client_pb2 import ReadRequest, ReadResponse
from dengine.proto.etcd import rpc_pb2 as pb
from dengine.proto.etcd import v3lock_pb2
from dengine.server.etcd.auth import MAX_WAITING_LOGINS

AUTH = "etcdserverpb.Auth"


async def call(m: Member, method: str, request: Any, response: Any, token: str | None = None,
               service: str = AUTH, timeout: float = 10.0) -> Any:
    stub = m.channel.unary_unary(
        f"/{service}/{method}", request_serializer=lambda r: r.SerializeToString(),
        response_deserializer=response.FromString)
    metadata = (("token", token),) if token else None
    return await stub(request, timeout=timeout, metadata=metadata)


async def login(m: Member, name: str, password: str) -> str:
    resp = await call(m, "Authenticate", pb.AuthenticateRequest(name=name, password=password),
                      pb.AuthenticateResponse)
    return str(resp.token)


async def setup_auth(m: Member) -> str:
    """root/pw with the root role, u1/p1 reading /app/; auth enabled; root's token."""
    for method, req, resp in (
        ("UserAdd", pb.AuthUserAddRequest(name="root", password="pw"), pb.AuthUserAddResponse),
        ("UserGrantRole", pb.AuthUserGrantRoleRequest(user="root", role="root"),
         pb.AuthUserGrantRoleResponse),
        ("UserAdd", pb.AuthUserAddRequest(name="u1", password="p1"), pb.AuthUserAddResponse),
        ("RoleAdd", pb.AuthRoleAddRequest(name="r1"), pb.AuthRoleAddResponse),
        ("UserGrantRole", pb.AuthUserGrantRoleRequest(user="u1", role="r1"),
         pb.AuthUserGrantRoleResponse),
        ("RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(
            name="r1", perm={"key": b"/app/", "range_end": b"/app0"}),
         pb.AuthRoleGrantPermissionResponse),
        ("AuthEnable", pb.AuthEnableRequest(), pb.AuthEnableResponse),
    ):
        await call(m, method, req, resp)
    return await login(m, "root", "pw")


async def code_of(coro: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    return info.value.code(), info.value.details() or ""


@pytest.mark.frontends
def test_tokens_forwarding_and_checks_across_members(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path) as members:
            leader, follower = leader_of(members), follower_of(members)
            await setup_auth(follower)  # every change forwarded to the leader
            token = await login(leader, "u1", "p1")
            for m in members.values():  # known everywhere at once
                resp = await call(m, "Range", pb.RangeRequest(key=b"/app/a"),
                                  pb.RangeResponse, token, service="etcdserverpb.KV")
                assert resp.count == 0
            put = pb.PutRequest(key=b"/app/a", value=b"1")
            denied = (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
            assert await code_of(call(follower, "Put", put, pb.PutResponse, token,
                                      service="etcdserverpb.KV")) == denied
            root = await login(follower, "root", "pw")
            await call(follower, "Put", put, pb.PutResponse, root, service="etcdserverpb.KV")
            assert await code_of(call(follower, "Put", put, pb.PutResponse, "bogus.1",
                                      service="etcdserverpb.KV")) == (
                grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token")
            assert await code_of(call(follower, "UserList", pb.AuthUserListRequest(),
                                      pb.AuthUserListResponse, token)) == denied
            users = await call(follower, "UserList", pb.AuthUserListRequest(),
                               pb.AuthUserListResponse, root)
            assert list(users.users) == ["root", "u1"]
            # the native protocol without credentials: refused while auth is on
            async with Client(leader.engine.config.listen_client) as client:
                with pytest.raises(KvError, match="user name is empty"):
                    await client.put(b"/app/b", b"2")
                await call(follower, "AuthDisable", pb.AuthDisableRequest(),
                           pb.AuthDisableResponse, root)
                await client.put(b"/app/b", b"2")  # and served again once it is off

    run(main())


def test_tokens_expire_after_their_ttl_unused_on_a_member(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, nodes=1) as members:
            m = next(iter(members.values()))
            now = [1000.0]
            m.etcd.gate._clock = lambda: now[0]
            token = await setup_auth(m)
            get = pb.RangeRequest(key=b"/app/a")
            await call(m, "Range", get, pb.RangeResponse, token, service="etcdserverpb.KV")
            now[0] += 299  # used within the TTL: renewed
            await call(m, "Range", get, pb.RangeResponse, token, service="etcdserverpb.KV")
            now[0] += 301
            assert await code_of(call(m, "Range", get, pb.RangeResponse, token,
                                      service="etcdserverpb.KV")) == (
                grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token")

    run(main())


def test_a_token_held_across_a_permission_change_is_judged_by_the_new_roles(
        tmp_path: Path) -> None:
    """etcd 3.4 (simple tokens, checked by hand): a client's next request after a role
    change is judged by the roles as they are now, its token still valid (no "revision
    of auth store is old": that one is for a change racing a write's apply)."""
    async def get(m: Member, key: bytes, token: str) -> tuple[grpc.StatusCode, str]:
        """A linearizable Range's status (asked again while a loaded machine's cluster
        elects a leader: "leader changed" says nothing about permissions)."""
        while True:
            try:
                await call(m, "Range", pb.RangeRequest(key=key), pb.RangeResponse, token,
                           service="etcdserverpb.KV")
                return grpc.StatusCode.OK, ""
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    return e.code(), e.details() or ""
            await asyncio.sleep(0.1)

    async def main() -> None:
        async with cluster(tmp_path, native=True) as members:
            leader, follower = leader_of(members), follower_of(members)
            root = await setup_auth(leader)
            token = await login(follower, "u1", "p1")
            denied = (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
            for m in (leader, follower):
                assert await get(m, b"/other", token) == denied
            await call(leader, "RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(
                name="r1", perm={"key": b"/other"}), pb.AuthRoleGrantPermissionResponse, root)
            # linearizable: the grant counts on the follower at once
            assert await get(follower, b"/other", token) == (grpc.StatusCode.OK, "")
            assert await get(leader, b"/other", token) == (grpc.StatusCode.OK, "")
            await call(leader, "RoleRevokePermission", pb.AuthRoleRevokePermissionRequest(
                role="r1", key=b"/app/", range_end=b"/app0"),
                pb.AuthRoleRevokePermissionResponse, root)
            assert await get(follower, b"/app/a", token) == denied
            # the native protocol's linearizable reads too (a follower's, after a revoke)
            async with Client(follower.engine.config.listen_client, transport="native",
                              user="u1", password="p1") as client:
                async def read() -> str:
                    """The follower's own answer (not the leader's): its error, if any."""
                    while True:
                        resp = await client._router.call_node(
                            follower.engine.config.listen_client, "Read",
                            ReadRequest(keys=[b"/other"]).SerializeToString(), ReadResponse,
                            time.monotonic() + 10)
                        if resp.error.message in ("", "etcdserver: permission denied"):
                            return str(resp.error.message)  # else an election: again
                        await asyncio.sleep(0.1)

                assert await read() == ""
                await call(leader, "RoleRevokePermission", pb.AuthRoleRevokePermissionRequest(
                    role="r1", key=b"/other"), pb.AuthRoleRevokePermissionResponse, root)
                assert await read() == "etcdserver: permission denied"

    run(main())


def test_a_thousand_failed_logins_leave_the_member_serving(tmp_path: Path) -> None:
    """Password checks run in worker threads, a few at a time; past MAX_WAITING_LOGINS
    waiting, a login is refused at once ("too many requests"). Meanwhile another client
    is served: all its reads before the last failed login."""
    def connection(m: Member) -> Member:  # a client of its own (not a shared subchannel)
        return Member(m.engine, m.server, m.etcd, grpc.aio.insecure_channel(
            m.engine.config.listen_client, options=[("grpc.use_local_subchannel_pool", 1)]))

    async def main() -> None:
        async with cluster(tmp_path, nodes=1) as members:
            m = next(iter(members.values()))
            root = await setup_auth(m)
            bad = pb.AuthenticateRequest(name="root", password="wrong")
            attackers = [connection(m) for _ in range(8)]
            other = connection(m)
            try:
                logins = [asyncio.ensure_future(code_of(call(
                    attackers[i % 8], "Authenticate", bad, pb.AuthenticateResponse,
                    timeout=240))) for i in range(1000)]
                await asyncio.sleep(0.5)
                for _ in range(20):  # served while the logins are being checked
                    await call(other, "Range", pb.RangeRequest(key=b"/x"), pb.RangeResponse,
                               root, service="etcdserverpb.KV")
                assert not all(task.done() for task in logins)
                codes = await asyncio.gather(*logins)
            finally:
                for c in (*attackers, other):
                    await c.channel.close()
            failed = (grpc.StatusCode.INVALID_ARGUMENT,
                      "etcdserver: authentication failed, invalid user ID or password")
            refused = (grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: too many requests")
            assert set(codes) == {failed, refused}
            assert codes.count(failed) >= MAX_WAITING_LOGINS
            assert await login(m, "root", "pw")  # and the right password still works

    run(main(), timeout=300)


def test_native_clients_authenticate_and_are_checked(tmp_path: Path) -> None:
    """dengine's Client with user/password, over the native protocol and over dengine's
    gRPC service: etcd's answers for a user reading /app/ (docs/auth.md)."""
    async def main() -> None:
        async with cluster(tmp_path, native=True) as members:
            leader, follower = leader_of(members), follower_of(members)
            address = follower.engine.config.listen_client
            # credentials while auth is off: served without a token (as etcd's clients);
            # once auth is on, the connection authenticates again
            async with Client(address, transport="native", user="u1", password="p1") as early:
                await early.put(b"/app/x", b"0")
                root = await setup_auth(follower)
                await call(leader, "Put", pb.PutRequest(key=b"/app/x", value=b"1"),
                           pb.PutResponse, root, service="etcdserverpb.KV")
                assert await early.get(b"/app/x") == b"1"
            for transport in ("native", "grpc"):
                async with Client(address, transport=transport, user="u1",
                                  password="p1") as client:
                    assert await client.get(b"/app/x") == b"1"
                    assert (await client.range(b"/app/", prefix=True)).count == 1
                    for denied in (client.put(b"/app/x", b"2"), client.delete(b"/app/x"),
                                   client.get(b"/other/x"),
                                   client.range(b"/app/", b"/b"),
                                   client.add_member(9, "127.0.0.1:1")):
                        with pytest.raises(KvError, match=r"^etcdserver: permission denied$"):
                            await denied
                    watch = client.watch(b"/other/", prefix=True)
                    with pytest.raises(KvError, match=r"^etcdserver: permission denied$"):
                        await watch.__anext__()
                async with Client(address, transport=transport, user="u1",
                                  password="bad") as client:
                    with pytest.raises(KvError, match=r"^etcdserver: authentication failed, "
                                                      r"invalid user ID or password$"):
                        await client.get(b"/app/x")
                async with Client(address, transport=transport) as client:
                    with pytest.raises(KvError, match=r"^etcdserver: user name is empty$"):
                        await client.get(b"/app/x")
            async with Client(address, transport="native", user="root",
                              password="pw") as client:
                await client.put(b"/other/y", b"3")
                assert await client.get(b"/other/y") == b"3"
                # the token forgotten by the member (as after a restart): renewed once
                for m in members.values():
                    m.engine.query_local(lambda s: s.auth.tokens.clear())
                assert await client.get(b"/other/y") == b"3"

    run(main())


def test_a_denied_call_batched_with_allowed_ones_fails_alone(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, nodes=1, native=True) as members:
            m = next(iter(members.values()))
            root = await setup_auth(m)
            await call(m, "Put", pb.PutRequest(key=b"/app/x", value=b"1"),
                       pb.PutResponse, root, service="etcdserverpb.KV")
            async with Client(m.engine.config.listen_client, user="u1",
                              password="p1") as client:
                got = await asyncio.gather(
                    client.get(b"/app/x"), client.get(b"/other/x"), client.get(b"/app/x"),
                    client.put(b"/app/y", b"1"), client.range(b"/app/", prefix=True),
                    return_exceptions=True)
            assert got[0] == got[2] == b"1" and got[4].count == 1, got
            assert [str(e) for e in (got[1], got[3])] == ["etcdserver: permission denied"] * 2

    run(main())


def test_client_recipes_under_auth(tmp_path: Path) -> None:
    """Client.lock over the checked native calls: root may, a reader of /app/ may not."""
    async def main() -> None:
        async with cluster(tmp_path, nodes=1, native=True) as members:
            m = next(iter(members.values()))
            await setup_auth(m)
            address = m.engine.config.listen_client
            async with Client(address, user="root", password="pw") as client, \
                    client.lock(b"/app/l", 10):
                assert (await client.range(b"/app/l", prefix=True)).count == 1
            async with Client(address, user="u1", password="p1") as client:
                with pytest.raises(KvError, match=r"^etcdserver: permission denied$"):
                    async with client.lock(b"/app/l", 10):
                        pass

    run(main())


def test_etcd_lock_service_acts_for_the_caller(tmp_path: Path) -> None:
    """v3lockpb.Lock runs on a client of the member that carries the caller's token."""
    async def main() -> None:
        async with cluster(tmp_path, nodes=1, native=True) as members:
            m = next(iter(members.values()))
            root = await setup_auth(m)
            reader = await login(m, "u1", "p1")
            lock = "v3lockpb.Lock"
            held = await call(m, "Lock", v3lock_pb2.LockRequest(name=b"/app/l"),
                              v3lock_pb2.LockResponse, root, service=lock)
            assert held.key.startswith(b"/app/l/")
            await call(m, "Unlock", v3lock_pb2.UnlockRequest(key=held.key),
                       v3lock_pb2.UnlockResponse, root, service=lock)
            for token, expected in ((reader, (grpc.StatusCode.PERMISSION_DENIED,
                                              "etcdserver: permission denied")),
                                    (None, (grpc.StatusCode.INVALID_ARGUMENT,
                                            "etcdserver: user name is empty"))):
                assert await code_of(call(m, "Lock", v3lock_pb2.LockRequest(name=b"/app/l"),
                                          v3lock_pb2.LockResponse, token,
                                          service=lock)) == expected

    run(main())

"""Membership RPCs, client methods, `dengine member ...` and the `--join` procedure against
fake engines served by the real gRPC service."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import grpc
import pytest
from click.testing import CliRunner
from client_fakes import FakeEngine, FakeMember, FakeServer, fake_servers, free_port

from dengine.cli.client_cmds import member
from dengine.client import Client, MemberInfo, SyncClient
from dengine.config import NodeConfig
from dengine.errors import ClusterMismatch, ConfigError, InvalidRequest, Unavailable
from dengine.proto.client_pb2 import (
    AddMemberRequest,
    MemberChangeResponse,
    MemberListRequest,
    MemberListResponse,
    RemoveMemberRequest,
)
from dengine.server.process import join_cluster


def by_id(members: list[MemberInfo]) -> dict[int, MemberInfo]:
    return {m.id: m for m in members}


def test_add_promote_remove_through_a_follower() -> None:
    async def main() -> None:
        async with fake_servers() as (leader, follower):
            follower.engine.redirect_to = leader.address
            async with Client([follower.address]) as client:
                members = by_id(await client.members())
                assert set(members) == {1, 2}
                assert members[1].is_leader and not members[2].is_leader
                assert members[1].client_address == leader.address
                added = by_id(await client.add_member(3, "127.0.0.1:9183"))
                assert (added[3].role, added[3].address) == ("learner", "127.0.0.1:9183")
                promoted = by_id(await client.promote_member(3))
                assert promoted[3].role == "voter"
                removed = by_id(await client.remove_member(2))
                assert set(removed) == {1, 3}
                auto = by_id(await client.add_member(4, "127.0.0.1:9184", promote=True))
                assert auto[4].role == "voter"  # the fake promotes at once
            # Every change ran on the leader; the follower only redirected.
            assert leader.engine.membership.calls == [
                ("add", 3), ("promote", 3), ("remove", 2), ("add", 4)
            ]

    asyncio.run(main())


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.add_member(1, "127.0.0.1:9999"), "already a member"),
        (lambda c: c.promote_member(7), "not a learner"),
        (lambda c: c.remove_member(7), "not a member"),
        (lambda c: c.add_member(0, "127.0.0.1:9999"), "positive integer"),
        (lambda c: c.add_member(5, "nohost"), "HOST:PORT"),
        (lambda c: c.remove_member(-1), "positive integer"),
    ],
)
def test_bad_changes_are_invalid_requests(call, message) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with fake_servers() as (leader, _), Client([leader.address]) as client:
            with pytest.raises(InvalidRequest, match=message):
                await call(client)
            assert set(by_id(await client.members())) == {1, 2}

    asyncio.run(main())


def test_unready_learner_cannot_be_promoted() -> None:
    async def main() -> None:
        async with fake_servers() as (leader, _), Client([leader.address]) as client:
            await client.add_member(3, "127.0.0.1:9183")
            leader.engine.membership.lagging.add(3)
            with pytest.raises(InvalidRequest, match="not caught up"):
                await client.promote_member(3)
            leader.engine.membership.lagging.clear()
            assert by_id(await client.promote_member(3))[3].role == "voter"

    asyncio.run(main())


def test_server_checks_raw_requests() -> None:
    """Another language's client gets the same checks as the Python client makes."""

    async def main() -> None:
        async with fake_servers() as (leader, _), grpc.aio.insecure_channel(
            leader.address
        ) as channel:
            add = channel.unary_unary("/dengine.RaftClientService/AddMember",
                                      response_deserializer=MemberChangeResponse.FromString)
            remove = channel.unary_unary("/dengine.RaftClientService/RemoveMember",
                                         response_deserializer=MemberChangeResponse.FromString)
            for raw, message in [
                (AddMemberRequest(node_id=0, address="127.0.0.1:1"), "positive integer"),
                (AddMemberRequest(node_id=3, address="127.0.0.1"), "HOST:PORT"),
                (RemoveMemberRequest(node_id=0), "positive integer"),
            ]:
                call = add if isinstance(raw, AddMemberRequest) else remove
                resp = await call(raw.SerializeToString())
                assert resp.error.code == "INVALID_REQUEST"
                assert message in resp.error.message
            resp = await add(b"\xff\xff garbage")
            assert resp.error.code == "INVALID_REQUEST"
            assert "malformed AddMemberRequest" in resp.error.message
            assert leader.engine.membership.calls == []

    asyncio.run(main())


def test_member_list_on_a_follower_answers_not_leader_only_when_asked() -> None:
    async def main() -> None:
        async with fake_servers() as (leader, follower), grpc.aio.insecure_channel(
            follower.address
        ) as channel:
            follower.engine.redirect_to = leader.address
            listing = channel.unary_unary("/dengine.RaftClientService/MemberList",
                                          response_deserializer=MemberListResponse.FromString)
            local = await listing(MemberListRequest().SerializeToString())
            assert not local.HasField("error") and len(local.members) == 2
            strict = await listing(MemberListRequest(leader_only=True).SerializeToString())
            assert strict.error.code == "NOT_LEADER"
            assert strict.error.leader_address == leader.address

    asyncio.run(main())


def test_pending_change_is_retried_until_the_deadline() -> None:
    async def main() -> None:
        async with fake_servers() as (leader, _), Client([leader.address]) as client:
            leader.engine.membership.busy_changes = 3
            await client.add_member(3, "127.0.0.1:9183", timeout=5)
            assert leader.engine.membership.calls == [("add", 3)] * 4
            leader.engine.membership.busy_changes = 10**9
            with pytest.raises(Unavailable, match="another membership change is pending"):
                await client.remove_member(3, timeout=0.3)
            assert 3 in leader.engine.membership.members

    asyncio.run(main())


@pytest.fixture
def servers_in_thread() -> Iterator[list[FakeServer]]:
    """Two fake nodes served from a background thread (for blocking callers)."""
    started = threading.Event()
    done = threading.Event()
    box: list[FakeServer] = []

    async def serve() -> None:
        async with fake_servers() as servers:
            box.extend(servers)
            started.set()
            while not done.is_set():
                await asyncio.sleep(0.01)

    thread = threading.Thread(target=lambda: asyncio.run(serve()))
    thread.start()
    try:
        assert started.wait(10)
        yield box
    finally:
        done.set()
        thread.join()


def test_sync_client_membership(servers_in_thread: list[FakeServer]) -> None:
    leader = servers_in_thread[0]
    with SyncClient(leader.address) as client:
        assert by_id(client.add_member(3, "127.0.0.1:9183"))[3].role == "learner"
        assert by_id(client.promote_member(3))[3].role == "voter"
        assert set(by_id(client.remove_member(3))) == {1, 2}
        assert set(by_id(client.members())) == {1, 2}


def test_member_cli(servers_in_thread: list[FakeServer]) -> None:
    leader, follower = servers_in_thread
    follower.engine.redirect_to = leader.address
    runner = CliRunner()
    endpoints = ["--endpoints", follower.address]

    def run(*args: str) -> dict[int, dict[str, object]]:
        result = runner.invoke(member, [*args, *endpoints, "--json"])
        assert result.exit_code == 0, result.output
        return {m["id"]: m for m in json.loads(result.output)["members"]}

    assert run("add", "3", "127.0.0.1:9183")[3]["role"] == "learner"
    assert run("promote", "3")[3]["role"] == "voter"
    assert set(run("remove", "2")) == {1, 3}
    listed = run("list")
    assert listed[1]["is_leader"] and listed[1]["client_address"] == leader.address
    table = runner.invoke(member, ["list", *endpoints])
    assert table.exit_code == 0 and "voter (leader)" in table.output
    assert "127.0.0.1:9183" in table.output
    bad = runner.invoke(member, ["add", "0", "127.0.0.1:1", *endpoints])
    assert bad.exit_code != 0 and "0" in bad.output
    refused = runner.invoke(member, ["remove", "9", *endpoints])
    assert isinstance(refused.exception, InvalidRequest)
    assert "not a member" in refused.exception.message


class JoiningEngine:
    """The new node: no configuration until `members` names it."""

    def __init__(self) -> None:
        self.voters: dict[int, str] = {}
        self.learners: dict[int, str] = {}

    def status(self) -> JoiningEngine:
        return self


def joiner_config(join: str, node_id: int = 3, cluster_id: str = "test",
                  peer: str = "127.0.0.1:9183") -> NodeConfig:
    return NodeConfig(node_id=node_id, cluster_id=cluster_id, join=join, listen_peer=peer,
                      auto_promote=True)


def test_join_retries_until_added_with_auto_promotion() -> None:
    async def main() -> None:
        async with fake_servers() as (leader, follower):
            follower.engine.redirect_to = leader.address
            leader.engine.membership.busy_changes = 2
            await asyncio.wait_for(
                join_cluster(JoiningEngine(), joiner_config(follower.address)),  # type: ignore[arg-type]
                10,
            )
            m = leader.engine.membership.members[3]
            assert (m.address, m.role) == ("127.0.0.1:9183", "voter")  # promote asked
            assert leader.engine.membership.calls == [("add", 3)] * 3

    asyncio.run(main())


def test_join_waits_for_an_unreachable_cluster_then_joins() -> None:
    async def main() -> None:
        port = free_port()
        join = asyncio.create_task(join_cluster(
            JoiningEngine(), joiner_config(f"127.0.0.1:{port}")  # type: ignore[arg-type]
        ))
        await asyncio.sleep(0.5)
        assert not join.done()  # nobody listens yet: keeps trying
        join.cancel()
        with pytest.raises(asyncio.CancelledError):
            await join

    asyncio.run(main())


def test_join_after_an_unknown_outcome_recognises_itself() -> None:
    """A first request that took effect without an answer: the retry sees "already a
    member" with this node's own address, and the join is done."""

    async def main() -> None:
        async with fake_servers() as (leader, _):
            leader.engine.membership.members[3] = FakeMember(3, "127.0.0.1:9183",
                                                             role="learner")
            await asyncio.wait_for(
                join_cluster(JoiningEngine(), joiner_config(leader.address)),  # type: ignore[arg-type]
                10,
            )

    asyncio.run(main())


def test_join_refuses_a_taken_node_id_and_another_cluster() -> None:
    async def main() -> None:
        async with fake_servers() as (leader, _):
            with pytest.raises(ConfigError, match="node id 2 is already a member"):
                await asyncio.wait_for(join_cluster(
                    JoiningEngine(), joiner_config(leader.address, node_id=2)  # type: ignore[arg-type]
                ), 10)
            with pytest.raises(ClusterMismatch, match="reaches cluster 'test'"):
                await asyncio.wait_for(join_cluster(
                    JoiningEngine(), joiner_config(leader.address, cluster_id="other")  # type: ignore[arg-type]
                ), 10)
            assert set(leader.engine.membership.members) == {1, 2}

    asyncio.run(main())


def test_no_join_when_already_in_a_configuration() -> None:
    async def main() -> None:
        engine = JoiningEngine()
        engine.learners = {3: "127.0.0.1:9183"}
        # Nothing listens at the join address: returning at once proves no request was made.
        await asyncio.wait_for(join_cluster(
            engine, joiner_config(f"127.0.0.1:{free_port()}")  # type: ignore[arg-type]
        ), 2)

    asyncio.run(main())


@pytest.mark.parametrize("name", ["members", "add_learner", "promote", "remove_member"])
def test_fake_engine_keeps_the_engine_signatures(name: str) -> None:
    """The service tests above mean something only while the fake matches the Engine."""
    import inspect

    from dengine.node.engine import Engine

    real = inspect.signature(getattr(Engine, name)).parameters
    fake = inspect.signature(getattr(FakeEngine, name)).parameters
    assert [(p.name, p.kind) for p in real.values()] == [
        (p.name, p.kind) for p in fake.values()
    ]

"""etcd's Cluster service (MemberAdd/Remove/Update/Promote) and Maintenance/Alarm on
in-process nodes (the harness of test_etcd_api.py), and etcd's reconfiguration checks as
pure functions. The same calls against a real etcd 3.4: tests/etcd/test_members.py."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from test_etcd_api import cluster, follower_of, leader_of, run

from dengine.errors import KvError
from dengine.proto.etcd import rpc_pb2
from dengine.server.etcd import cluster as etcd_cluster
from dengine.server.etcd import maintenance
from dengine.server.etcd.cluster import MemberView, check_add, check_promote, check_remove

C = "etcdserverpb.Cluster"


def view(i: int, voter: bool = True, started: bool = True, active: bool = True) -> MemberView:
    return MemberView(i, f"h:{i}", f"c:{i}" if started else "", voter, started, active)


def message(call: object) -> str:
    with pytest.raises(KvError) as e:
        call()  # type: ignore[operator]
    return e.value.message


def test_reconfiguration_checks_as_etcd() -> None:
    three = [view(1), view(2), view(3)]
    check_add(three, "h:4", learner=False)
    assert message(lambda: check_add(three, "h:2", False)) == "etcdserver: Peer URLs already exists"
    # an unstarted voter (added, not running): no further voter, nothing while it is down
    four = [*three, view(4, started=False, active=False)]
    assert message(lambda: check_add(four, "h:5", True)) == "etcdserver: unhealthy cluster"
    two_down = [view(1), view(2, started=False, active=False), view(3, started=False)]
    assert message(lambda: check_add(two_down, "h:5", False)) == (
        "etcdserver: re-configuration failed due to not enough started members")
    check_add([view(1)], "h:2", learner=False)  # one node grows
    # remove: a member down is safe to remove; an active one only if a quorum stays
    check_remove(four, 4, self_id=1)
    check_remove(three, 2, self_id=1)
    assert message(lambda: check_remove(three, 9, 1)) == "etcdserver: member not found"
    one_down = [view(1), view(2), view(3, active=False)]
    assert message(lambda: check_remove(one_down, 2, 1)) == "etcdserver: unhealthy cluster"
    assert message(lambda: check_remove([view(1)], 1, 1)) == (
        "etcdserver: re-configuration failed due to not enough started members")
    check_remove([*three, view(4, voter=False, active=False)], 4, 1)  # a learner: no check
    # promote
    learner = [*three, view(4, voter=False)]
    check_promote(learner, 4, caught_up=True)
    assert message(lambda: check_promote(learner, 4, False)) == (
        "etcdserver: can only promote a learner member which is in sync with leader")
    assert message(lambda: check_promote(learner, 2, True)) == (
        "etcdserver: can only promote a learner member")
    assert message(lambda: check_promote(learner, 7, True)) == "etcdserver: member not found"


@pytest.mark.parametrize("urls", [[], ["127.0.0.1:1"], ["ftp://127.0.0.1:1"],
                                  ["http://127.0.0.1"], ["http://127.0.0.1:1/path"],
                                  ["http://127.0.0.1:1", "http://127.0.0.1:2"]])
def test_peer_urls_refused_as_etcd(urls: list[str]) -> None:
    assert message(lambda: etcd_cluster.peer_address(urls)) == (
        "etcdserver: given member URLs are invalid")


def test_member_add_update_promote_remove(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path) as members:
            leader, follower = leader_of(members), follower_of(members)

            async def call(method: str, request: object, on: object = follower) -> object:
                response = getattr(rpc_pb2, f"{method}Response")
                return await on.call(C, method, request, response)  # type: ignore[attr-defined]

            async def error(method: str, request: object) -> tuple[str, str]:
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await call(method, request)
                return e.value.code().name, e.value.details() or ""

            # added through a follower (forwarded): a learner with the next free id
            added = await call("MemberAdd", rpc_pb2.MemberAddRequest(
                peerURLs=["http://127.0.0.1:1"], isLearner=True))
            assert added.member.ID == 4 and added.member.isLearner
            assert list(added.member.peerURLs) == ["http://127.0.0.1:1"]
            assert [m.ID for m in added.members] == [1, 2, 3, 4]
            new = added.members[3]
            assert new.isLearner and new.name == "" and not new.clientURLs  # unstarted
            assert added.header.member_id == follower.engine.node_id
            listed = await call("MemberList", rpc_pb2.MemberListRequest())
            assert [m.ID for m in listed.members] == [1, 2, 3, 4]  # the follower has it
            assert await error("MemberAdd", rpc_pb2.MemberAddRequest(
                peerURLs=["http://127.0.0.1:1"])) == (
                "FAILED_PRECONDITION", "etcdserver: Peer URLs already exists")
            assert await error("MemberPromote", rpc_pb2.MemberPromoteRequest(ID=4)) == (
                "FAILED_PRECONDITION",
                "etcdserver: can only promote a learner member which is in sync with leader")
            assert await error("MemberPromote", rpc_pb2.MemberPromoteRequest(ID=2)) == (
                "FAILED_PRECONDITION", "etcdserver: can only promote a learner member")
            for method, request in (
                    ("MemberPromote", rpc_pb2.MemberPromoteRequest(ID=99)),
                    ("MemberRemove", rpc_pb2.MemberRemoveRequest(ID=99)),
                    ("MemberUpdate", rpc_pb2.MemberUpdateRequest(
                        ID=99, peerURLs=["http://127.0.0.1:5"]))):
                assert await error(method, request) == ("NOT_FOUND",
                                                        "etcdserver: member not found")
            assert await error("MemberAdd", rpc_pb2.MemberAddRequest(peerURLs=["x"])) == (
                "INVALID_ARGUMENT", "etcdserver: given member URLs are invalid")
            voter_url = f"http://{members[1].engine.config.listen_peer}"
            assert await error("MemberUpdate", rpc_pb2.MemberUpdateRequest(
                ID=4, peerURLs=[voter_url])) == (
                "FAILED_PRECONDITION", "etcdserver: Peer URLs already exists")
            await call("MemberUpdate", rpc_pb2.MemberUpdateRequest(
                ID=4, peerURLs=["http://127.0.0.1:2"]))
            assert {m.id: m.address for m in leader.engine.members()}[4] == "127.0.0.1:2"
            await call("MemberRemove", rpc_pb2.MemberRemoveRequest(ID=4))
            # an unstarted voter: listed as one; nothing else while it cannot be reached
            added = await call("MemberAdd", rpc_pb2.MemberAddRequest(
                peerURLs=["http://127.0.0.1:3"]), on=leader)
            assert added.member.ID == 5 and not added.member.isLearner  # 4 is not reused
            assert [(m.ID, m.isLearner) for m in added.members][-1] == (5, False)
            assert await error("MemberAdd", rpc_pb2.MemberAddRequest(
                peerURLs=["http://127.0.0.1:6"], isLearner=True)) == (
                "UNAVAILABLE", "etcdserver: unhealthy cluster")
            await call("MemberRemove", rpc_pb2.MemberRemoveRequest(ID=5))
            assert sorted(m.id for m in leader.engine.members()) == [1, 2, 3]

    run(main())


def test_alarm_nospace_while_the_disk_is_nearly_full(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with cluster(tmp_path) as members:
            full, other = members[2], members[1]

            async def alarm(on: object, action: int, alarm: int = 0, member: int = 0) -> object:
                return await on.call(  # type: ignore[attr-defined]
                    "etcdserverpb.Maintenance", "Alarm",
                    rpc_pb2.AlarmRequest(action=action, alarm=alarm, memberID=member),
                    rpc_pb2.AlarmResponse)

            get, deactivate = rpc_pb2.AlarmRequest.GET, rpc_pb2.AlarmRequest.DEACTIVATE
            assert not (await alarm(full, get)).alarms
            data_dir = full.engine.config.data_dir
            monkeypatch.setattr(maintenance, "free_bytes",
                                lambda path: 1024 if path == data_dir else 1 << 40)
            for on in (full, other):  # any member lists the cluster's alarms
                listed = await alarm(on, get)
                assert [(a.memberID, a.alarm) for a in listed.alarms] == [(2, rpc_pb2.NOSPACE)]
            assert not (await alarm(other, get, rpc_pb2.CORRUPT)).alarms
            # a DEACTIVATE goes to the member it names: it answers that the alarm is active
            assert len((await alarm(other, deactivate, rpc_pb2.NOSPACE, 2)).alarms) == 1
            assert not (await alarm(other, deactivate, rpc_pb2.NOSPACE, 3)).alarms
            st = await full.call("etcdserverpb.Maintenance", "Status", rpc_pb2.StatusRequest(),
                                 rpc_pb2.StatusResponse)
            assert list(st.errors) == ["memberID:2 alarm:NOSPACE "]
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await alarm(full, rpc_pb2.AlarmRequest.ACTIVATE, rpc_pb2.NOSPACE, 2)
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            monkeypatch.setattr(maintenance, "free_bytes", lambda path: 1 << 40)
            assert not (await alarm(other, get)).alarms  # space is back

    run(main())


@pytest.mark.parametrize("through", ["leader", "follower"])
def test_member_remove_of_the_leader(tmp_path: Path, through: str) -> None:
    """The leader hands leadership over before its removal; the request, sent to it or
    forwarded by a follower, is then made by the new leader."""
    async def main() -> None:
        async with cluster(tmp_path) as members:
            leader = leader_of(members)
            on = leader if through == "leader" else follower_of(members)
            gone = leader.engine.node_id
            resp = await on.call(C, "MemberRemove", rpc_pb2.MemberRemoveRequest(ID=gone),
                                 rpc_pb2.MemberRemoveResponse, timeout=10)
            assert gone not in [m.ID for m in resp.members] and len(resp.members) == 2
            rest = [m for m in members.values() if m.engine.node_id != gone]
            assert any(m.engine.is_leader for m in rest)

    run(main())

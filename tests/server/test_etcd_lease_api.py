"""etcd's `etcdserverpb.Lease` service (issue 17): grant, revoke, the keep-alive stream,
TimeToLive and Leases on the leader and on a follower (forwarded to the leader), with
etcd's answers and errors. In-process nodes with their gRPC servers (test_etcd_api's
harness); every server and engine is stopped by its test."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from test_etcd_api import cluster, follower_of, leader_of, run

from dengine.proto.etcd import rpc_pb2

LEASE = "etcdserverpb.Lease"


async def lease_call(member, method: str, request):
    response = {"LeaseGrant": rpc_pb2.LeaseGrantResponse,
                "LeaseRevoke": rpc_pb2.LeaseRevokeResponse,
                "LeaseTimeToLive": rpc_pb2.LeaseTimeToLiveResponse,
                "LeaseLeases": rpc_pb2.LeaseLeasesResponse}[method]
    return await member.call(LEASE, method, request, response)


async def keep_alive(member, ids: list[int]) -> list[rpc_pb2.LeaseKeepAliveResponse]:
    stream = member.channel.stream_stream(
        f"/{LEASE}/LeaseKeepAlive", request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=rpc_pb2.LeaseKeepAliveResponse.FromString)
    call = stream(iter([rpc_pb2.LeaseKeepAliveRequest(ID=i) for i in ids]), timeout=10)
    return [resp async for resp in call]


def test_leases_through_grpc_on_leader_and_follower(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path) as members:
            leader, follower = leader_of(members), follower_of(members)
            # granted on a follower: forwarded; TTL raised to the minimum (1 s here)
            small = await lease_call(follower, "LeaseGrant", rpc_pb2.LeaseGrantRequest(TTL=0))
            assert small.ID > 0 and small.TTL == 1
            assert small.header.member_id == follower.engine.node_id
            mine = await lease_call(leader, "LeaseGrant",
                                    rpc_pb2.LeaseGrantRequest(TTL=60, ID=0x77))
            assert (mine.ID, mine.TTL) == (0x77, 60)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await lease_call(follower, "LeaseGrant",
                                 rpc_pb2.LeaseGrantRequest(TTL=60, ID=0x77))
            assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert raised.value.details() == "etcdserver: lease already exists"
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await lease_call(leader, "LeaseGrant",
                                 rpc_pb2.LeaseGrantRequest(TTL=9_000_000_001))
            assert raised.value.details() == "etcdserver: too large lease TTL"
            for key in (b"a", b"b"):
                await follower.kv("Put", rpc_pb2.PutRequest(key=key, value=b"v", lease=0x77))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await follower.kv("Put", rpc_pb2.PutRequest(key=b"c", value=b"v", lease=0x78))
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND
            assert raised.value.details() == "etcdserver: requested lease not found"
            for m in (leader, follower):
                ttl = await lease_call(m, "LeaseTimeToLive",
                                       rpc_pb2.LeaseTimeToLiveRequest(ID=0x77, keys=True))
                assert (ttl.ID, ttl.grantedTTL, list(ttl.keys)) == (0x77, 60, [b"a", b"b"])
                assert 58 <= ttl.TTL <= 60
                unknown = await lease_call(m, "LeaseTimeToLive",
                                           rpc_pb2.LeaseTimeToLiveRequest(ID=0x99))
                assert unknown.TTL == -1
                listed = await lease_call(m, "LeaseLeases", rpc_pb2.LeaseLeasesRequest())
                assert sorted(s.ID for s in listed.leases) == sorted([small.ID, 0x77])
                answers = await keep_alive(m, [0x77, 0x99, 0x77])
                assert [(a.ID, a.TTL) for a in answers] == [(0x77, 60), (0x99, 0), (0x77, 60)]
                assert answers[0].header.member_id == m.engine.node_id
            put_rev = (await leader.kv("Range", rpc_pb2.RangeRequest(key=b"a"))).header.revision
            gone = await lease_call(follower, "LeaseRevoke", rpc_pb2.LeaseRevokeRequest(ID=0x77))
            assert gone.header.revision == put_rev + 1
            got = await leader.kv("Range", rpc_pb2.RangeRequest(key=b"a", range_end=b"c"))
            assert got.count == 0
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await lease_call(follower, "LeaseRevoke", rpc_pb2.LeaseRevokeRequest(ID=0x77))
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND
            assert raised.value.details() == "etcdserver: requested lease not found"

    run(main())


def test_keep_alives_sent_together_share_read_index_rounds(tmp_path: Path) -> None:
    """A keep-alive waits for a ReadIndex round (a deposed leader must not renew); the
    stream reads ahead, so the keep-alives a client sends at once (Go's client sends
    every lease due together) share rounds (those the node starts in one loop turn), and
    the answers keep the requests' order. The native batch shares one."""
    async def main() -> None:
        async with cluster(tmp_path) as members:
            leader = leader_of(members)
            for lease_id in (1, 2):
                await lease_call(leader, "LeaseGrant",
                                 rpc_pb2.LeaseGrantRequest(TTL=60, ID=lease_id))
            ids = [1, 2, 3] * 100  # 3: unknown
            for m in (leader, follower_of(members)):
                reads = leader.engine._node._reads
                before = reads.rounds_started
                answers = await keep_alive(m, ids)
                assert [(a.ID, a.TTL) for a in answers] == [
                    (i, 0 if i == 3 else 60) for i in ids]
                assert reads.rounds_started - before < len(ids)  # sequential: one each
            before = reads.rounds_started  # the native batch: one round for all
            assert await leader.engine.lease_keepalive_ttls(ids) == [
                0 if i == 3 else 60 for i in ids]
            assert reads.rounds_started - before <= 2  # (one more: a background read)

    run(main())


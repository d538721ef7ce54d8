"""A follower's etcd lease calls reach the leader over the native protocol (`Lease`;
keep-alives batched in `LeaseKeepAlive`), not as Python gRPC calls
(server/etcd/forward.py, server/etcd/lease.py). In-process nodes as in test_etcd_api,
with their native listeners."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from test_etcd_api import CALL_S, STEADY, cluster, follower_of, leader_of, native_calls, run
from test_etcd_lease_api import keep_alive, lease_call

from dengine.proto.etcd import rpc_pb2


def test_grants_revokes_and_ttls_on_a_follower_go_over_the_native_port(
        tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, native=True, **STEADY) as members:
            leader, follower = leader_of(members), follower_of(members)
            seen = native_calls(leader)
            grants = await asyncio.gather(*(
                lease_call(follower, "LeaseGrant", rpc_pb2.LeaseGrantRequest(TTL=60))
                for _ in range(10)))
            assert len({g.ID for g in grants}) == 10 and {g.TTL for g in grants} == {60}
            assert {g.header.member_id for g in grants} == {follower.engine.node_id}
            assert seen == {"Lease": 10}
            with pytest.raises(grpc.aio.AioRpcError) as raised:  # the leader's error
                await lease_call(follower, "LeaseGrant",
                                 rpc_pb2.LeaseGrantRequest(TTL=60, ID=grants[0].ID))
            assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert raised.value.details() == "etcdserver: lease already exists"
            ttl = await lease_call(follower, "LeaseTimeToLive",
                                   rpc_pb2.LeaseTimeToLiveRequest(ID=grants[0].ID))
            assert (ttl.ID, ttl.grantedTTL) == (grants[0].ID, 60)
            await lease_call(follower, "LeaseRevoke",
                             rpc_pb2.LeaseRevokeRequest(ID=grants[0].ID))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await lease_call(follower, "LeaseRevoke",
                                 rpc_pb2.LeaseRevokeRequest(ID=grants[0].ID))
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND
            assert raised.value.details() == "etcdserver: requested lease not found"
            assert seen == {"Lease": 14}

    run(main())


def test_keepalives_of_many_streams_on_a_follower_share_one_native_request(
        tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, native=True, **STEADY) as members:
            leader, follower = leader_of(members), follower_of(members)
            grant = await lease_call(leader, "LeaseGrant", rpc_pb2.LeaseGrantRequest(TTL=60))
            forwarder = follower.etcd.kv_forwarder
            address = leader.engine.config.listen_client
            await forwarder.keepalive(address, grant.ID, CALL_S)  # connected
            seen = native_calls(leader)
            ttls = await asyncio.gather(*(
                forwarder.keepalive(address, lease_id, CALL_S)
                for lease_id in [grant.ID, 0x99] * 5))
            assert ttls == [60, 0] * 5  # an unknown lease: TTL 0, as etcd
            assert seen == {"LeaseKeepAlive": 1}
            # through the follower's etcd streams: the leader's TTLs, the follower's header
            answers = await keep_alive(follower, [grant.ID, 0x99, grant.ID])
            assert [(a.ID, a.TTL) for a in answers] == [(grant.ID, 60), (0x99, 0),
                                                         (grant.ID, 60)]
            assert {a.header.member_id for a in answers} == {follower.engine.node_id}
            # the stream reads ahead: its keep-alives share native requests as they arrive
            # together (1 to 3 of them, by timing), never more than one each
            assert set(seen) == {"LeaseKeepAlive"} and 2 <= seen["LeaseKeepAlive"] <= 4

    run(main())


def test_with_auth_on_a_followers_lease_calls_keep_the_grpc_path(tmp_path: Path) -> None:
    from test_etcd_auth import login, setup_auth

    async def main() -> None:
        async with cluster(tmp_path, native=True, **STEADY) as members:
            leader, follower = leader_of(members), follower_of(members)
            await setup_auth(leader)
            root = await login(follower, "root", "pw")
            seen = native_calls(leader)
            stub = follower.channel.unary_unary(
                "/etcdserverpb.Lease/LeaseGrant",
                request_serializer=lambda r: r.SerializeToString(),
                response_deserializer=rpc_pb2.LeaseGrantResponse.FromString)
            grant = await stub(rpc_pb2.LeaseGrantRequest(TTL=60), timeout=10,
                               metadata=(("token", root),))
            assert grant.TTL == 60
            # no token: granted, as on the leader (the native port, acting for no user,
            # would refuse it with "user name is empty")
            assert (await stub(rpc_pb2.LeaseGrantRequest(TTL=60), timeout=10)).TTL == 60
            answers = await keep_alive(follower, [grant.ID])
            assert [(a.ID, a.TTL) for a in answers] == [(grant.ID, 60)]
            assert "Lease" not in seen and "LeaseKeepAlive" not in seen

    run(main())

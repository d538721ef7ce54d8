"""etcd's gRPC API on the client port (issue 16): the KV service, Status, MemberList and
health, spoken with etcd's method paths and our generated messages. In-process nodes on
127.0.0.1 (real Engines, real sockets, each with its gRPC server); every server and
engine is stopped by its test."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from dengine import Client, Engine
from dengine.bench.cluster import free_ports
from dengine.errors import KvError
from dengine.node.engine import etcd_cluster_id
from dengine.proto.etcd import rpc_pb2
from dengine.server import ClientService, start_grpc_server
from dengine.server.etcd import EtcdApi
from dengine.server.native import NativeServer
from dengine.server.process import forward_channel_options

FAST = {"tick_ms": 5, "election_timeout_ms": 100, "heartbeat_interval_ms": 20,
        "clock_drift_ms": 20}
# For tests about one leader (a follower forwarding to it, its native port observed): the
# three nodes share this process's loop, and on a loaded machine a loop stalled past FAST's
# 100 ms election timeout elects another leader mid-test ("no leader", the follower
# forwarding elsewhere). etcd's default election timeout.
STEADY = {"election_timeout_ms": 1000}
# Deadline of a call or forwarded write: generous, for a loaded machine (the tests check
# answers, not latency).
CALL_S = 20.0
COMPACTED = "etcdserver: mvcc: required revision has been compacted"
FUTURE = "etcdserver: mvcc: required revision is a future revision"


def free_port() -> int:
    """A port free on 127.0.0.1, outside the ephemeral range (dengine.bench.cluster)."""
    return free_ports(1)[0]


@dataclass
class Member:
    engine: Engine
    server: grpc.aio.Server
    etcd: EtcdApi
    channel: grpc.aio.Channel
    native: NativeServer | None = None

    async def call(self, service: str, method: str, request: Any, response: Any,
                   timeout: float = CALL_S) -> Any:
        stub = self.channel.unary_unary(
            f"/{service}/{method}", request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response.FromString)
        return await stub(request, timeout=timeout)

    async def kv(self, method: str, request: Any) -> Any:
        response = {"Range": rpc_pb2.RangeResponse, "Put": rpc_pb2.PutResponse,
                    "DeleteRange": rpc_pb2.DeleteRangeResponse, "Txn": rpc_pb2.TxnResponse,
                    "Compact": rpc_pb2.CompactionResponse}[method]
        return await self.call("etcdserverpb.KV", method, request, response)


@contextlib.asynccontextmanager
async def cluster(tmp_path: Path, nodes: int = 3, *, native: bool = False, **settings: Any
                  ) -> AsyncIterator[dict[int, Member]]:
    """`nodes` engines in this loop, each serving dengine's and etcd's gRPC services (and
    with `native` dengine's native listener, which followers forward KV writes to)."""
    peers = {i: f"127.0.0.1:{free_port()}" for i in range(1, nodes + 1)}
    clients = {i: f"127.0.0.1:{free_port()}" for i in range(1, nodes + 1)}
    members: dict[int, Member] = {}
    try:
        engines = await asyncio.gather(*(
            Engine.start(str(tmp_path / f"n{i}"), **{**FAST, **settings}, node_id=i,
                         listen_peer=peers[i], listen_client=clients[i],
                         peers={j: a for j, a in peers.items() if j != i})
            for i in peers))
        for engine in engines:
            config = engine.config
            etcd = EtcdApi(engine, config, forward_channel_options(config))
            service = ClientService(engine, config, gate=etcd.gate, login=etcd.auth.login)
            server = await start_grpc_server(service, config, etcd)
            await etcd.start()
            listener = None
            if native:
                listener = NativeServer.from_config(service, config)
                service.native_address = await listener.start("127.0.0.1:0")
            members[engine.node_id] = Member(
                engine, server, etcd, grpc.aio.insecure_channel(config.listen_client),
                listener)
        for m in members.values():
            await m.engine.wait_ready(timeout=10)
        yield members
    finally:
        for m in members.values():
            await m.channel.close()
            await m.server.stop(0)
            if m.native is not None:
                await m.native.stop(0)
            await m.etcd.stop()
        for m in members.values():
            await m.engine.stop()


def leader_of(members: dict[int, Member]) -> Member:
    return next(m for m in members.values() if m.engine.is_leader)


def follower_of(members: dict[int, Member]) -> Member:
    return next(m for m in members.values() if not m.engine.is_leader)


def native_calls(member: Member) -> Counter[str]:
    """The native methods `member`'s listener serves from now on, counted."""
    assert member.native is not None
    seen: Counter[str] = Counter()
    member.native.observe = lambda protocol, method, _: seen.update([method])
    return seen


def run(coro: Any, timeout: float = 60.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_kv_on_leader_and_follower(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path) as members:
            leader, follower = leader_of(members), follower_of(members)
            first = await leader.kv("Put", rpc_pb2.PutRequest(key=b"a", value=b"1"))
            rev = first.header.revision
            assert rev >= 2
            # a write sent to a follower is forwarded (never refused) and seen there
            put = await follower.kv("Put", rpc_pb2.PutRequest(key=b"a", value=b"2",
                                                              prev_kv=True))
            assert put.header.revision == rev + 1
            assert put.prev_kv.value == b"1" and put.prev_kv.version == 1
            assert put.header.member_id == follower.engine.node_id
            got = await follower.kv("Range", rpc_pb2.RangeRequest(key=b"a",
                                                                  serializable=True))
            assert [kv.value for kv in got.kvs] == [b"2"]
            assert got.kvs[0].version == 2 and got.kvs[0].create_revision == rev
            for m in members.values():  # linearizable from every member
                got = await m.kv("Range", rpc_pb2.RangeRequest(key=b"a"))
                assert got.kvs[0].value == b"2" and got.header.revision == rev + 1
                ids = m.engine.header_ids()
                assert got.header.cluster_id == etcd_cluster_id(m.engine.config.cluster_id)
                assert got.header.member_id == m.engine.node_id
                assert got.header.raft_term == ids.raft_term >= 1
            for k in (b"b", b"c", b"d"):
                await follower.kv("Put", rpc_pb2.PutRequest(key=k, value=k))
            got = await leader.kv("Range", rpc_pb2.RangeRequest(key=b"a", range_end=b"c",
                                                                limit=1))
            assert [kv.key for kv in got.kvs] == [b"a"] and got.more and got.count == 2
            txn = rpc_pb2.TxnRequest(
                compare=[rpc_pb2.Compare(key=b"a", target=rpc_pb2.Compare.VALUE,
                                         result=rpc_pb2.Compare.EQUAL, value=b"2")],
                success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"t",
                                                                          value=b"x"))],
                failure=[])
            resp = await follower.kv("Txn", txn)
            assert resp.succeeded and resp.header.member_id == follower.engine.node_id
            # a txn of ranges only is a read: no log entry, no new revision
            last = leader.engine.status().last_log_index
            ro = rpc_pb2.TxnRequest(
                compare=[rpc_pb2.Compare(key=b"t", target=rpc_pb2.Compare.VERSION,
                                         result=rpc_pb2.Compare.EQUAL, version=1)],
                success=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=b"t"))],
                failure=[])
            for m in (leader, follower):
                resp = await m.kv("Txn", ro)
                assert resp.succeeded and resp.header.revision == rev + 5
                assert resp.responses[0].response_range.kvs[0].value == b"x"
            assert leader.engine.status().last_log_index == last
            gone = await follower.kv("DeleteRange", rpc_pb2.DeleteRangeRequest(
                key=b"b", range_end=b"d", prev_kv=True))
            assert gone.deleted == 2 and [kv.key for kv in gone.prev_kvs] == [b"b", b"c"]

    run(main())


def test_compaction_and_etcd_errors(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path) as members:
            leader, follower = leader_of(members), follower_of(members)
            revs = []
            for i in range(5):
                r = await follower.kv("Put", rpc_pb2.PutRequest(key=b"k", value=b"%d" % i))
                revs.append(r.header.revision)
            old = await leader.kv("Range", rpc_pb2.RangeRequest(key=b"k", revision=revs[1]))
            assert old.kvs[0].value == b"1" and old.header.revision == revs[-1]
            await follower.kv("Compact", rpc_pb2.CompactionRequest(revision=revs[2]))
            for m in (leader, follower):
                for serializable in (False, True):
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await m.kv("Range", rpc_pb2.RangeRequest(
                            key=b"k", revision=revs[1], serializable=serializable))
                    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
                    assert err.value.details() == COMPACTED
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await follower.kv("Compact", rpc_pb2.CompactionRequest(revision=revs[1]))
            assert (err.value.code(), err.value.details()) == (
                grpc.StatusCode.OUT_OF_RANGE, COMPACTED)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await leader.kv("Range", rpc_pb2.RangeRequest(key=b"k", revision=revs[-1] + 5))
            assert (err.value.code(), err.value.details()) == (
                grpc.StatusCode.OUT_OF_RANGE, FUTURE)
            for method, request in (("Put", rpc_pb2.PutRequest(value=b"v")),
                                    ("Range", rpc_pb2.RangeRequest())):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await follower.kv(method, request)
                assert (err.value.code(), err.value.details()) == (
                    grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided")
            big = rpc_pb2.PutRequest(key=b"big", value=b"x" * (1536 * 1024 + 1))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await follower.kv("Put", big)
            assert (err.value.code(), err.value.details()) == (
                grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large")
            with pytest.raises(grpc.aio.AioRpcError) as err:  # not protobuf
                await leader.call("etcdserverpb.KV", "Range", _Raw(b"\xff\xff"),
                                  rpc_pb2.RangeResponse)
            assert err.value.code() == grpc.StatusCode.INTERNAL  # etcd's
            assert (err.value.details() or "").startswith("grpc: error unmarshalling request")
            # a write forwarded once is never sent on (a follower that got it refuses it)
            stub = follower.channel.unary_unary(
                "/etcdserverpb.KV/Put", request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=rpc_pb2.PutResponse.FromString)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub(rpc_pb2.PutRequest(key=b"k", value=b"v"), timeout=5,
                           metadata=(("dengine-forwarded", "1"),))
            assert (err.value.code(), err.value.details()) == (
                grpc.StatusCode.UNAVAILABLE, "etcdserver: leader changed")
            # nothing above harmed the cluster
            r = await follower.kv("Put", rpc_pb2.PutRequest(key=b"k", value=b"after"))
            assert r.header.revision == revs[-1] + 1

    run(main())


class _Raw:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:
        return self.data


def test_status_member_list_and_health(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path) as members:
            leader = leader_of(members)
            await leader.kv("Put", rpc_pb2.PutRequest(key=b"a", value=b"1"))
            commit = leader.engine.status().commit_index
            for m in members.values():
                await m.engine.wait_applied(commit)
                st = await m.call("etcdserverpb.Maintenance", "Status",
                                  rpc_pb2.StatusRequest(), rpc_pb2.StatusResponse)
                own = m.engine.status()
                assert st.version == "3.4.0" and st.leader == leader.engine.node_id
                assert st.raftTerm == own.term and st.raftAppliedIndex >= 1
                assert st.raftIndex >= st.raftAppliedIndex - 1 and st.dbSize > 0
                assert st.header.member_id == m.engine.node_id
                assert st.header.revision >= 2 and not st.isLearner
                ml = await m.call("etcdserverpb.Cluster", "MemberList",
                                  rpc_pb2.MemberListRequest(), rpc_pb2.MemberListResponse)
                assert sorted(x.ID for x in ml.members) == sorted(members)
                for x in ml.members:
                    config = members[x.ID].engine.config
                    assert list(x.clientURLs) == [f"http://{config.listen_client}"]
                    assert list(x.peerURLs) == [f"http://{config.listen_peer}"]
                    assert not x.isLearner
                health = await m.call("grpc.health.v1.Health", "Check",
                                      health_pb2.HealthCheckRequest(),
                                      health_pb2.HealthCheckResponse)
                assert health.status == health_pb2.HealthCheckResponse.SERVING

    run(main())


def test_writes_without_a_leader_get_etcd_errors(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path) as members:
            follower = follower_of(members)
            others = [m for m in members.values() if m is not follower]
            for m in others:
                await m.server.stop(0)
                await m.etcd.stop()
                await m.engine.stop()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while follower.engine.leader_id and loop.time() < deadline:
                await asyncio.sleep(0.02)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await follower.kv("Put", rpc_pb2.PutRequest(key=b"k", value=b"v"))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert err.value.details() in ("etcdserver: no leader",
                                           "etcdserver: request timed out")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await follower.kv("Range", rpc_pb2.RangeRequest(key=b"k"))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            ok = await follower.kv("Range", rpc_pb2.RangeRequest(key=b"k", serializable=True))
            assert ok.count == 0
            for m in others:  # stopped already: the fixture's second stop is a no-op
                members.pop(m.engine.node_id)
                await m.channel.close()

    run(main())


def test_read_answers_are_bounded_by_max_response_bytes(tmp_path: Path) -> None:
    """A small request must not make a member build an unbounded answer on its event loop
    (tools/hostile_inputs.py grpc-amplify: a 2.3 KB read-only txn of 128 ranges over 4 MiB
    built 512 MiB in 40 s, 49 -> 1,611 MB, and the leader lost the lead): a Range or a
    read-only Txn (and the native KvRead) whose keys and values would pass
    max_response_bytes gets ResourceExhausted before more of it is built, and so does a txn
    that writes whose ranges would, before it is proposed; smaller answers are unchanged."""
    async def main() -> None:
        async with cluster(tmp_path, nodes=1, max_response_bytes=300_000,
                           max_value_size=100_000) as members:
            m = leader_of(members)
            for i in range(4):
                await m.kv("Put", rpc_pb2.PutRequest(key=b"/b/%d" % i, value=b"v" * 90_000))
            every = rpc_pb2.RangeRequest(key=b"/b/", range_end=b"/b0")  # 360 KB
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await m.kv("Range", every)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_response_bytes (300000 bytes)" in (info.value.details() or "")
            three = rpc_pb2.RangeRequest(key=b"/b/", range_end=b"/b/3")
            assert len((await m.kv("Range", three)).kvs) == 3
            keys = rpc_pb2.RangeRequest(key=b"/b/", range_end=b"/b0", keys_only=True)
            assert len((await m.kv("Range", keys)).kvs) == 4
            one = rpc_pb2.RangeRequest(key=b"/b/0")
            txn = rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_range=one)] * 3)
            assert len((await m.kv("Txn", txn)).responses) == 3
            txn = rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_range=one)] * 4)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await m.kv("Txn", txn)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # a txn that writes is tried first: refused, unapplied, when its ranges would
            # answer too much (its answer is built at apply, where no bound applies)
            put = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"/w", value=b"1"))
            txn = rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_range=one)] * 4 + [put])
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await m.kv("Txn", txn)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert not (await m.kv("Range", rpc_pb2.RangeRequest(key=b"/w"))).kvs
            txn = rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_range=one)] * 3 + [put])
            assert len((await m.kv("Txn", txn)).responses) == 4
            # the native KvRead too
            async with Client(m.engine.config.listen_client) as client:
                assert len((await client.range(b"/b/", b"/b/3")).kvs) == 3
                with pytest.raises(KvError, match="max_response_bytes"):
                    await client.range(b"/b/", prefix=True)

    run(main())

"""A follower's etcd KV writes reach the leader over the native protocol (`ForwardWrite`),
batched, once; the follower answers after its own apply (server/etcd/forward.py).
In-process nodes as in test_etcd_api, with their native listeners."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from test_etcd_api import (
    CALL_S,
    FUTURE,
    STEADY,
    Member,
    cluster,
    follower_of,
    leader_of,
    native_calls,
    run,
)

from dengine.errors import KvError
from dengine.node.engine import KV_COMPACTION, KV_PUT, wrap_kv_request
from dengine.proto.etcd import rpc_pb2
from dengine.server.etcd.errors import TIMED_OUT_CONNECTION_LOST
from dengine.server.etcd.forward import KvForwarder


def _put(key: bytes) -> bytes:
    return wrap_kv_request(KV_PUT, rpc_pb2.PutRequest(key=key, value=b"v").SerializeToString())


def test_writes_forwarded_in_one_loop_turn_share_one_native_request(tmp_path: Path) -> None:
    async def attempt(members: dict[int, Member], round_: int) -> bool:
        """False when the leader lost its lead meanwhile (a loaded machine): try again."""
        leader, follower = leader_of(members), follower_of(members)
        term = leader.engine.term
        seen = native_calls(leader)
        forwarder = follower.etcd.kv_forwarder
        address = leader.engine.config.listen_client
        commands = [_put(b"k%d-%d" % (round_, i)) for i in range(10)]
        # one of them fails at apply with etcd's error: only that one
        commands.insert(5, wrap_kv_request(KV_COMPACTION, rpc_pb2.CompactionRequest(
            revision=10**6).SerializeToString()))
        answers = await asyncio.gather(
            *(forwarder.write(address, c, CALL_S) for c in commands), return_exceptions=True)
        if not leader.engine.is_leader or leader.engine.term != term:
            return False
        failed = answers.pop(5)
        assert isinstance(failed, KvError) and failed.message == FUTURE
        assert failed.grpc_code == "OUT_OF_RANGE"
        indexes, revisions = [], []
        for answer in answers:
            assert not isinstance(answer, BaseException), answer
            resp = rpc_pb2.PutResponse.FromString(answer.response)
            assert resp.header.member_id == leader.engine.node_id
            assert answer.term == term
            indexes.append(answer.log_index)
            revisions.append(resp.header.revision)
        # proposed together: a batch entry on each side of the compaction (its own entry),
        # each put its own revision
        assert indexes == sorted(indexes) and len(set(indexes)) == 2
        assert revisions == sorted(revisions) and len(set(revisions)) == 10
        assert seen == {"ForwardWrite": 1}
        # answered once the follower applied them (it learnt their commit from the answer)
        assert follower.engine.status().applied_index >= indexes[-1]
        return True

    async def main() -> None:
        async with cluster(tmp_path, native=True) as members:
            for round_ in range(5):
                if await attempt(members, round_):
                    return
                await asyncio.sleep(1)  # a new leader settles
            pytest.fail("the leader changed in every attempt")

    run(main())


def test_a_put_sent_to_a_follower_goes_over_the_native_port(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, native=True, **STEADY) as members:
            leader, follower = leader_of(members), follower_of(members)
            seen = native_calls(leader)
            puts = await asyncio.gather(*(
                follower.kv("Put", rpc_pb2.PutRequest(key=b"p%d" % i, value=b"x"))
                for i in range(20)))
            revisions = sorted(p.header.revision for p in puts)
            assert revisions == list(range(revisions[0], revisions[0] + 20))
            assert all(p.header.member_id == follower.engine.node_id for p in puts)
            assert 1 <= seen["ForwardWrite"] <= 20 and set(seen) == {"ForwardWrite"}
            # answered after the follower's own apply: a serializable read there sees it
            got = await follower.kv("Range", rpc_pb2.RangeRequest(
                key=b"p", range_end=b"q", serializable=True))
            assert got.count == 20

    run(main())


def test_a_follower_that_knows_its_leader_forwards_without_proposing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with cluster(tmp_path, native=True, max_request_size=4096) as members:
            follower = follower_of(members)
            assert follower.engine.leader_elsewhere() == leader_of(
                members).engine.config.client_address
            assert leader_of(members).engine.leader_elsewhere() == ""

            async def refused(*args: object, **kwargs: object) -> None:
                raise AssertionError("proposed on a follower")

            monkeypatch.setattr(follower.engine, "kv_request", refused)
            put = await follower.kv("Put", rpc_pb2.PutRequest(key=b"f", value=b"x"))
            assert put.header.member_id == follower.engine.node_id
            # the checks before proposing still run on the follower
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await follower.kv("Put", rpc_pb2.PutRequest(key=b"f", value=b"x" * 5000))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "exceeds max_request_size (4096 bytes)" in (err.value.details() or "")

    run(main())


def test_a_write_whose_answer_is_lost_times_out_and_is_not_sent_again(
        tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, native=True, **STEADY) as members:
            leader = leader_of(members)
            native = leader.native
            assert native is not None
            forwarder = KvForwarder(None, 1 << 20)
            address = leader.engine.config.listen_client
            try:
                await forwarder.write(address, _put(b"first"), CALL_S)  # connected
                seen = native_calls(leader)
                [conn] = list(native._connections)
                assert conn._transport is not None
                conn._transport.pause_reading()  # the leader does not read it ...
                last = leader.engine.status().last_log_index
                write = asyncio.ensure_future(forwarder.write(address, _put(b"lost"), CALL_S))
                await asyncio.sleep(0.05)
                assert not write.done()
                conn.close()  # ... and the connection breaks: the outcome is unknown
                with pytest.raises(KvError) as err:
                    await write
                assert (err.value.grpc_code, err.value.message) == (
                    "UNAVAILABLE", TIMED_OUT_CONNECTION_LOST)
                await asyncio.sleep(0.1)
                assert not seen  # never sent again
                assert leader.engine.status().last_log_index == last
            finally:
                await forwarder.close()

    run(main())


def test_the_follower_answers_a_forwarded_write_with_the_leaders_etcd_error(
        tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, native=True) as members:
            follower = follower_of(members)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await follower.kv("Compact", rpc_pb2.CompactionRequest(revision=10**6))
            assert (err.value.code(), err.value.details()) == (
                grpc.StatusCode.OUT_OF_RANGE, FUTURE)

    run(main())

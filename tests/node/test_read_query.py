"""The node glue of etcd's API: generalized reads (`read_query`), etcd requests proposed
as their bytes (`kv_request`), `wait_applied` and the response header's ids."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest
from node_helpers import Cluster, run, until

from dengine import Engine
from dengine.errors import InvalidRequest, NotLeader, Timeout
from dengine.node.engine import KV_FIELDS, KV_PUT, etcd_cluster_id, wrap_kv_request
from dengine.proto import WriteCommand

FAST = {"tick_ms": 5, "election_timeout_ms": 50, "heartbeat_interval_ms": 15,
        "clock_drift_ms": 10}


class QueryError(Exception):
    pass


def _get(key: bytes) -> Any:
    return lambda store: store.get(key)


def _fail(store: Any) -> None:
    raise QueryError("from the query")


def test_wrap_kv_request_is_the_field_as_protobuf_encodes_it() -> None:
    by_number = WriteCommand.DESCRIPTOR.fields_by_number
    for field in KV_FIELDS:
        for size in (0, 1, 127, 128, 300, 16_383, 16_384, 70_000):
            data = bytes(range(256)) * (size // 256) + bytes(size % 256)
            wrapped = wrap_kv_request(field, data)
            if field in by_number:  # the request fields of common.proto
                expected = WriteCommand(**{by_number[field].name: data}).SerializeToString()
                assert wrapped == expected
            assert wrapped[0] == field << 3 | 2 and wrapped.endswith(data)
            n, shift, pos = 0, 0, 1
            while True:
                b = wrapped[pos]
                n |= (b & 0x7F) << shift
                shift += 7
                pos += 1
                if b < 0x80:
                    break
            assert n == size and pos + size == len(wrapped)
    with pytest.raises(InvalidRequest):
        wrap_kv_request(1, b"")


def test_etcd_cluster_id_is_sha256_prefix() -> None:
    digest = hashlib.sha256(b"abc").digest()
    assert etcd_cluster_id("abc") == int.from_bytes(digest[:8], "big")
    assert 0 < etcd_cluster_id("abc") < 1 << 64


def test_read_query_on_one_node(tmp_path: Path) -> None:
    async def main() -> None:
        async with await Engine.start(str(tmp_path), **FAST) as engine:
            await engine.wait_ready(timeout=5)
            await engine.put(b"k", b"v")
            for level in ("linearizable", "lease", "eventual"):
                assert await engine.read_query(_get(b"k"), level) == b"v"
                with pytest.raises(QueryError):
                    await engine.read_query(_fail, level)
            # many at once share rounds, each gets its own answer
            keys = [b"q%d" % i for i in range(50)]
            await asyncio.gather(*(engine.put(k, k) for k in keys))
            got = await asyncio.gather(*(engine.read_query(_get(k)) for k in keys))
            assert got == keys
            ids = engine.header_ids()
            assert ids.cluster_id == etcd_cluster_id(engine.config.cluster_id)
            assert ids.member_id == 1 and ids.raft_term == engine.status().term >= 1
            # wait_applied: at once for what is applied, later for what is not yet
            applied = engine.status().applied_index
            await engine.wait_applied(applied)
            waiting = asyncio.ensure_future(engine.wait_applied(applied + 1))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            await engine.put(b"next", b"1")
            await asyncio.wait_for(waiting, 5)
            with pytest.raises(Timeout):
                await engine.wait_applied(applied + 1000, timeout=0.05)
            with pytest.raises(InvalidRequest):
                await engine.kv_request(1, b"")

    run(main())


def test_read_query_on_a_follower_and_kv_request_refused_there(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = Cluster(tmp_path)
        await cluster.start_all()
        try:
            leader = await cluster.leader()
            for engine in cluster.engines.values():
                await engine.wait_ready(timeout=10)
            follower = cluster.followers()[0]
            await leader.put(b"k", b"v1")
            # a linearizable read from the follower's own ReadIndex round sees the write
            assert await follower.read_query(_get(b"k")) == b"v1"
            st = leader.status()
            await follower.wait_applied(st.commit_index, timeout=5)
            assert await follower.read_query(_get(b"k"), "eventual") == b"v1"
            # a follower never proposes: NotLeader naming the leader, nothing proposed
            with pytest.raises(NotLeader) as err:
                await follower.kv_request(KV_PUT, b"\x0a\x01k")
            assert err.value.leader_id == leader.node_id
            assert follower.header_ids().member_id == follower.node_id
            assert follower.header_ids().cluster_id == leader.header_ids().cluster_id
            await until(lambda: follower.header_ids().raft_term == leader.header_ids().raft_term)
        finally:
            await cluster.stop_all()

    run(main())

"""The embedded Engine on one node: reads, writes, restart, bad input."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from node_helpers import free_port, run

from dengine import Consistency, Engine
from dengine.config import NodeConfig
from dengine.errors import (
    ClusterMismatch,
    ConfigError,
    InvalidRequest,
    NotLeader,
    Overloaded,
    Unavailable,
)
from dengine.node.datadir import DataDir
from dengine.proto import Entry, EntryPayload, HardState, Member, Membership, WriteCommand
from dengine.storage import FileRaftLog

FAST = {"tick_ms": 5, "election_timeout_ms": 50, "heartbeat_interval_ms": 15,
        "clock_drift_ms": 10}


def insert(key: bytes, value: bytes) -> WriteCommand:
    cmd = WriteCommand()
    cmd.insert.key = key
    cmd.insert.value = value
    return cmd


def test_single_node_put_get_delete(tmp_path: Path) -> None:
    async def main() -> None:
        async with await Engine.start(str(tmp_path), **FAST) as engine:
            await engine.wait_ready(timeout=5)
            assert engine.is_leader and engine.leader_id == engine.node_id == 1
            await engine.put(b"k", b"v")
            for level in ("linearizable", "lease", "eventual", Consistency.LINEARIZABLE):
                assert await engine.get(b"k", consistency=level) == b"v"
            assert await engine.get(b"missing") is None
            await engine.delete(b"k")
            assert await engine.get(b"k") is None
            results = await engine.write([insert(b"a", b"1"), insert(b"b", b"2")])
            assert [r.succeeded for r in results] == [True, True]
            # one batch entry for the write's commands (batch_writes), each its own revision
            assert results[1].index == results[0].index
            assert results[1].revision == results[0].revision + 1
            assert await engine.get_many([b"a", b"b", b"c"]) == [b"1", b"2", None]
            await engine.put("text", "é")  # str is accepted as UTF-8
            assert await engine.get("text") == "é".encode()
            st = engine.status()
            assert st.role == "leader" and list(st.voters) == [1] and list(st.learners) == []
            assert st.applied_index == st.commit_index == st.last_log_index
            assert st.to_dict()["node_id"] == 1

    run(main())


def test_many_concurrent_writes_all_apply(tmp_path: Path) -> None:
    async def main() -> None:
        async with await Engine.start(str(tmp_path), **FAST) as engine:
            await engine.wait_ready()
            keys = [f"k{i}".encode() for i in range(2000)]
            await asyncio.gather(*(engine.put(k, k * 2) for k in keys))
            assert await engine.get_many(keys) == [k * 2 for k in keys]

    run(main())


def test_restart_keeps_data(tmp_path: Path) -> None:
    async def main() -> None:
        async with await Engine.start(str(tmp_path), **FAST) as engine:
            await engine.wait_ready()
            for i in range(50):
                await engine.put(b"k%d" % i, b"v%d" % i)
            await engine.delete(b"k7")
        async with await Engine.start(str(tmp_path), **FAST) as engine:
            # eventual: the state machine has it before any election
            assert await engine.get(b"k3", "eventual") == b"v3"
            await engine.wait_ready()
            assert await engine.get(b"k49") == b"v49"
            assert await engine.get(b"k7") is None
            await engine.put(b"after", b"restart")
        async with await Engine.start(str(tmp_path), **FAST) as engine:
            await engine.wait_ready()
            assert await engine.get(b"after") == b"restart"

    run(main())


def test_committed_entries_missing_from_state_machine_are_reapplied(tmp_path: Path) -> None:
    """Entries committed in the log but never applied (crash before apply) come back."""
    DataDir(tmp_path).claim(1, "dengine")
    raft_log = FileRaftLog(tmp_path / "raft")
    peer_port, own_port = free_port(), free_port()
    membership = Membership(voters=[Member(id=1, address=f"127.0.0.1:{own_port}"),
                                    Member(id=2, address=f"127.0.0.1:{peer_port}")])
    entries = [Entry(index=1, term=1, payload=EntryPayload(config=membership))]
    entries += [
        Entry(index=i, term=1,
              payload=EntryPayload(command=insert(b"k%d" % i, b"v%d" % i).SerializeToString()))
        for i in range(2, 12)
    ]
    raft_log.append(entries)
    raft_log.set_hard_state(HardState(term=1, voted_for=1, commit=9))
    close = getattr(raft_log, "close", None)
    if close is not None:
        close()

    async def main() -> None:
        # a peer that never answers: this node cannot be elected, so only recovery applies
        settings = {**FAST, "peers": {2: f"127.0.0.1:{peer_port}"},
                    "listen_peer": f"127.0.0.1:{own_port}"}
        async with await Engine.start(str(tmp_path), **settings) as engine:
            values = await engine.get_many([b"k2", b"k9", b"k10"], "eventual")
            assert values == [b"v2", b"v9", None]  # 10 was not known committed
            assert engine.status().applied_index == 9
            with pytest.raises(NotLeader):
                await engine.put(b"x", b"y")

    run(main())


def test_foreign_data_dir_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with await Engine.start(str(tmp_path), **FAST) as engine:
            await engine.wait_ready()
        with pytest.raises(ClusterMismatch, match="belongs to node 1"):
            await Engine.start(str(tmp_path), node_id=2, **FAST)
        with pytest.raises(ClusterMismatch, match=r"of cluster '[0-9a-f]{16}'"):
            await Engine.start(str(tmp_path), cluster_id="other", **FAST)

    run(main())


def test_data_dir_of_another_cluster_is_refused(tmp_path: Path) -> None:
    """Two clusters whose node 3 has the same id and addresses but another token: the
    data dir of one does not start as a node of the other (both defaulted to the cluster
    id 'dengine' before, and node 3 served the other cluster's data)."""
    peers = {1: f"127.0.0.1:{free_port()}", 2: f"127.0.0.1:{free_port()}"}
    settings = {**FAST, "node_id": 3, "listen_peer": f"127.0.0.1:{free_port()}",
                "peers": peers}

    async def main() -> None:
        engine = await Engine.start(str(tmp_path), initial_cluster_token="a", **settings)
        cluster_a = engine.status().cluster_id
        await engine.stop()
        assert cluster_a == engine.config.initial_cluster_id()
        with pytest.raises(ClusterMismatch, match=f"node 3 of cluster '{cluster_a}'"):
            await Engine.start(str(tmp_path), initial_cluster_token="b", **settings)
        engine = await Engine.start(str(tmp_path), initial_cluster_token="a", **settings)
        assert engine.status().cluster_id == cluster_a
        await engine.stop()

    run(main())


def test_bad_inputs_get_clear_errors_and_keep_serving(tmp_path: Path) -> None:
    async def main() -> None:
        settings = {**FAST, "max_key_size": 8, "max_value_size": 16, "max_request_size": 64}
        async with await Engine.start(str(tmp_path), **settings) as engine:
            await engine.wait_ready()
            cases = [
                (engine.put(b"", b"v"), "^empty key$"),
                (engine.put(b"k" * 9, b"v"), r"exceeds max_key_size \(8 bytes\)"),
                (engine.put(b"k", b"v" * 17), r"exceeds max_value_size \(16 bytes\)"),
                (engine.put(123, b"v"), "key must be bytes or str"),  # type: ignore[arg-type]
                (engine.write([insert(b"k", b"v" * 16)] * 4), "exceeds max_request_size"),
                (engine.write([]), "at least one command"),
                (engine.write([WriteCommand()]), "command 0: no operation set"),
                (engine.get(b"k", consistency="strong"), "unknown consistency level 'strong'"),
                (engine.get(b""), "^empty key$"),
                (engine.get_many([b"k", b""]), "^key 1: empty key$"),
                (engine.delete(b"k" * 9), r"exceeds max_key_size \(8 bytes\)"),
                (engine.put(b"k", b"v", timeout=0), "timeout must be a positive"),
                (engine.get_many(b"k"), "sequence"),  # type: ignore[arg-type]
                (engine.write_encoded([b"\xff"]), "^command 0: no operation set"),
                (engine.write_encoded([insert(b"k", b"v" * 17).SerializeToString()]),
                 r"^command 0: value of 17 bytes exceeds max_value_size \(16 bytes\)$"),
                (engine.add_learner(0, "127.0.0.1:1"), "node id must be a positive integer"),
                (engine.remove_member(True), "node id must be a positive integer"),  # type: ignore[arg-type]
            ]
            for coro, message in cases:
                with pytest.raises(InvalidRequest, match=message):
                    await coro
            await engine.put(b"k", b"v")
            assert await engine.get(b"k") == b"v"
        with pytest.raises(Unavailable, match="stopped"):
            await engine.put(b"k", b"v")
        with pytest.raises(Unavailable):
            await engine.get(b"k")

    run(main())


def test_stop_is_idempotent(tmp_path: Path) -> None:
    async def main() -> None:
        engine = await Engine.start(str(tmp_path), **FAST)
        await engine.stop()
        await engine.stop()

    run(main())


def test_concurrent_writes_share_fsyncs_and_reads_share_read_index_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit and read batching: 500 concurrent calls, a handful of rounds."""
    from dengine.node.logthread import LogThread, commands_in

    appends: list[int] = []
    persist = LogThread.persist

    def counting_persist(self: LogThread, rd: Any, save_hard_state: bool) -> None:
        if rd.entries:
            appends.append(commands_in(rd.entries))
        persist(self, rd, save_hard_state)

    monkeypatch.setattr(LogThread, "persist", counting_persist)

    async def main() -> None:
        async with await Engine.start(str(tmp_path), **FAST) as engine:
            await engine.wait_ready()
            appends.clear()
            await asyncio.gather(*(engine.put(b"k%d" % i, b"v") for i in range(500)))
            assert sum(appends) == 500
            assert len(appends) <= 5, appends
            node = engine._node
            rounds_before = node._reads.rounds_started
            values = await asyncio.gather(*(engine.get(b"k%d" % i) for i in range(500)))
            assert values == [b"v"] * 500
            assert node._reads.rounds_started - rounds_before <= 5

    run(main())


def test_start_from_config_object_and_unknown_setting(tmp_path: Path) -> None:
    async def main() -> None:
        config = NodeConfig(data_dir=str(tmp_path / "d"), **FAST)
        async with await Engine.start(config=config, max_value_size=4) as engine:
            assert engine.config.data_dir == str(tmp_path / "d")
            assert engine.config.max_value_size == 4
            await engine.wait_ready()
            with pytest.raises(InvalidRequest):
                await engine.put(b"k", b"12345")
        with pytest.raises(ConfigError, match="unknown setting 'bogus'"):
            await Engine.start(str(tmp_path / "e"), bogus=1)
        with pytest.raises(ConfigError, match="node_id"):
            await Engine.start(str(tmp_path / "e"), node_id=0)

    run(main())


def test_a_loop_of_eventual_reads_does_not_starve_the_node(tmp_path: Path) -> None:
    """Eventual gets answer without a loop turn; a tight loop of them must still let the
    node's loop run (ticks, heartbeats), or a leader would lose its lead."""

    async def main() -> None:
        async with await Engine.start(str(tmp_path), **FAST) as engine:
            await engine.wait_ready(timeout=5)
            await engine.put(b"k", b"v")
            node = engine._node
            loop = asyncio.get_running_loop()
            ticks = node._pending.ticks
            deadline = loop.time() + 0.3  # 60 ticks of 5 ms
            while loop.time() < deadline:
                assert await engine.get(b"k", "eventual") == b"v"
            assert node._pending.ticks - ticks >= 20
            assert engine.is_leader

    run(main())


def test_too_many_pending_writes_are_refused_with_etcds_error(tmp_path: Path) -> None:
    """The embedded Engine bounds the writes proposed through it and not yet answered
    (max_pending_proposals / _bytes): more are refused at once with etcd's "too many
    requests" (Overloaded: nothing proposed); what it admitted applies; it serves again
    once they are answered. A lone write over the byte bound is still admitted."""
    async def main() -> None:
        async with await Engine.start(str(tmp_path), **FAST, max_pending_proposals=8,
                                      max_pending_proposal_bytes=4096) as engine:
            await engine.wait_ready()
            outcomes = await asyncio.gather(
                *(engine.put(b"k%d" % i, b"v") for i in range(40)),
                *(engine.delete(b"d%d" % i) for i in range(10)),
                engine.write([insert(b"w", b"1")]), return_exceptions=True)
            refused = [o for o in outcomes if isinstance(o, Overloaded)]
            done = [o for o in outcomes if not isinstance(o, BaseException)]
            assert len(done) == 8 and len(refused) == 43, outcomes
            assert all(str(e).startswith("etcdserver: too many requests: node 1 has 8 "
                                         "writes") for e in refused)
            applied = [i for i in range(40) if await engine.get(b"k%d" % i) == b"v"]
            assert applied == list(range(8))
            big = await asyncio.gather(*(engine.put(b"big%d" % i, b"x" * 3000)
                                         for i in range(3)), return_exceptions=True)
            assert [isinstance(o, Overloaded) for o in big] == [False, True, True]
            await engine.put(b"after", b"1")  # nothing pending: admitted again
            kv = await engine.get_kv(b"after")
            assert kv is not None and kv.value == b"1"

    run(main())

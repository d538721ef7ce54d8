"""Automatic compaction (etcd's --auto-compaction-mode/-retention): what the leader
proposes, when; and an Engine whose history it bounds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from node_helpers import run, until

from dengine import Engine
from dengine.config import NodeConfig, parse_duration
from dengine.errors import ConfigError
from dengine.node.compactor import KV_COMPACTION, AutoCompactor
from dengine.proto.etcd.rpc_pb2 import CompactionRequest

FAST = {"tick_ms": 5, "election_timeout_ms": 50, "heartbeat_interval_ms": 15,
        "clock_drift_ms": 10}


class FakeStore:
    def __init__(self) -> None:
        self.revision = 1
        self.compact_revision = 0


class Harness:
    def __init__(self, mode: str, retention: float) -> None:
        self.store = FakeStore()
        self.leader = True
        self.proposed: list[int] = []
        self.compactor = AutoCompactor(mode, retention, is_leader=lambda: self.leader,
                                       read=self.read, propose=self.propose)

    async def read(self, fn: Any, consistency: str) -> Any:
        assert consistency == "eventual"
        return fn(self.store)

    async def propose(self, field: int, data: bytes) -> None:
        assert field == KV_COMPACTION
        revision = CompactionRequest.FromString(data).revision
        self.proposed.append(revision)
        self.store.compact_revision = revision


def test_revision_mode_keeps_the_last_n_revisions() -> None:
    async def main() -> None:
        h = Harness("revision", 10)
        assert await h.compactor.check(0.0) == 0  # revision 1: nothing to compact
        h.store.revision = 11
        assert await h.compactor.check(1.0) == 1  # 11 - 10 (etcd compacts to 1 too)
        h.store.revision = 25
        assert await h.compactor.check(2.0) == 15
        assert await h.compactor.check(3.0) == 0  # nothing new
        h.store.revision = 26
        h.leader = False
        assert await h.compactor.check(4.0) == 0  # a follower never proposes
        h.leader = True
        h.store.compact_revision = 20  # a manual compaction went further
        assert await h.compactor.check(5.0) == 0
        h.store.revision = 40
        assert await h.compactor.check(6.0) == 30
        assert h.proposed == [1, 15, 30]

    run(main())


def test_periodic_mode_compacts_to_the_revision_of_retention_ago() -> None:
    async def main() -> None:
        h = Harness("periodic", 3600.0)
        assert h.compactor.interval == 360.0  # a tenth of the retention
        for t, rev in ((0, 5), (360, 9), (720, 14), (3599, 20)):
            h.store.revision = rev
            assert await h.compactor.check(float(t)) == 0
        h.store.revision = 30
        assert await h.compactor.check(3600.0) == 5  # noted an hour ago
        h.store.revision = 31
        assert await h.compactor.check(4330.0) == 14  # the newest noted >= 1 h ago
        assert h.proposed == [5, 14]
        # a new leadership notes revisions from when it leads
        h.leader = False
        assert await h.compactor.check(4400.0) == 0
        h.leader = True
        h.store.revision = 50
        assert await h.compactor.check(4500.0) == 0
        assert await h.compactor.check(8100.0) == 50
        assert Harness("periodic", 5.0).compactor.interval == 1.0  # at least 1 s
        assert Harness("periodic", 10 * 24 * 3600.0).compactor.interval == 3600.0

    run(main())


def test_settings() -> None:
    assert NodeConfig().auto_compaction() == ("revision", 10000.0)
    assert NodeConfig(auto_compaction_mode="periodic",
                      auto_compaction_retention="1h30m").auto_compaction() == (
        "periodic", 5400.0)
    assert parse_duration("2", "x") == 7200.0  # a bare number is hours, as etcd's
    assert parse_duration("90s", "x") == 90.0 and parse_duration("500ms", "x") == 0.5
    assert parse_duration("0", "x") == 0.0
    for mode, retention in (("revision", "1h"), ("revision", "-5"), ("periodic", "abc"),
                            ("periodic", "5x"), ("periodic", "h"), ("daily", "1")):
        with pytest.raises(ConfigError):
            NodeConfig(auto_compaction_mode=mode,
                       auto_compaction_retention=retention).validate()


def test_engine_compacts_its_history(tmp_path: Path) -> None:
    async def main() -> None:
        async with await Engine.start(str(tmp_path), **FAST,
                                      auto_compaction_retention="5") as engine:
            engine.compactor.interval = 0.02
            await engine.wait_ready(timeout=5)
            for i in range(20):
                await engine.put(b"k", b"%d" % i)

            def revisions(store: Any) -> tuple[int, int]:
                return store.revision, store.compact_revision

            await until(lambda: engine.compactor.compactions > 0)
            revision, compacted = await engine.read_query(revisions, "eventual")
            assert revision == 21 and 0 < compacted <= revision - 5
        # off: no compaction at all
        async with await Engine.start(str(tmp_path / "off"), **FAST,
                                      auto_compaction_retention="0") as engine:
            await engine.wait_ready(timeout=5)
            assert engine.compactor.interval >= 0 and engine.compactor._task is None

    run(main())

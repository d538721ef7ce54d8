"""How the node settles a write once its log index is applied."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path

import pytest
from node_helpers import run

from dengine.config import NodeConfig
from dengine.errors import Timeout, Unavailable
from dengine.node.node import Node
from dengine.node.pending import Pending, Write
from dengine.proto import Entry
from dengine.raft import Role
from dengine.storage import ApplyResult


def _node(tmp_path: Path) -> Node:
    return Node(NodeConfig(data_dir=str(tmp_path)))


def test_same_term_resolves_with_results_in_order(tmp_path: Path) -> None:
    async def main() -> None:
        pending = Pending(0.01)
        future: asyncio.Future[list[ApplyResult]] = asyncio.get_running_loop().create_future()
        write = Write(future, 2, 5.0, 500)
        pending.waiters = {5: (3, write, 0), 6: (3, write, 1)}
        entries = [Entry(index=5, term=3), Entry(index=6, term=3)]
        pending.resolve(entries, [ApplyResult(5), ApplyResult(6, succeeded=False)])
        assert future.result() == [ApplyResult(5), ApplyResult(6, succeeded=False)]
        assert pending.waiters == {}

    run(main())


def test_index_taken_by_another_term_is_a_definite_failure(tmp_path: Path) -> None:
    async def main() -> None:
        pending = Pending(0.01)
        future: asyncio.Future[list[ApplyResult]] = asyncio.get_running_loop().create_future()
        write = Write(future, 2, 5.0, 500)
        pending.waiters = {5: (3, write, 0), 6: (3, write, 1)}
        # a new leader (term 4) overwrote index 6 but our entry 5 survived
        entries = [Entry(index=5, term=3), Entry(index=6, term=4)]
        pending.resolve(entries, [ApplyResult(5), ApplyResult(6)])
        with pytest.raises(Unavailable, match="leadership changed; write not applied"):
            future.result()

    run(main())


def test_deadline_and_stop_give_timeout_for_unknown_outcomes(tmp_path: Path) -> None:
    async def main() -> None:
        node = _node(tmp_path)
        loop = asyncio.get_running_loop()
        expiring: asyncio.Future[list[ApplyResult]] = loop.create_future()
        node._pending.waiters = {3: (1, Write(expiring, 1, 0.001, node._due(0.001)), 0)}
        node._pending.ticks += 5
        node._expire()
        with pytest.raises(Timeout, match="may still be applied"):
            expiring.result()
        in_flight: asyncio.Future[list[ApplyResult]] = loop.create_future()
        node._pending.waiters = {9: (1, Write(in_flight, 1, 5.0, node._due(5.0)), 0)}
        queued: asyncio.Future[list[ApplyResult]] = loop.create_future()
        node._in_proposals = [([b"x"], Write(queued, 1, 5.0, node._due(5.0)))]
        node._fail_pending("stopped")
        with pytest.raises(Timeout, match="outcome was known"):
            in_flight.result()
        with pytest.raises(Unavailable):  # never proposed: definitely not applied
            queued.result()

    run(main())


def test_every_pending_request_times_out_and_finished_ones_are_not_kept(tmp_path: Path) -> None:
    """Deadlines are found by scanning what is pending: queued, proposed and read requests
    all expire, and nothing keeps a finished request alive until its deadline."""

    async def main() -> None:
        node = _node(tmp_path)
        loop = asyncio.get_running_loop()
        node._loop = loop
        node._running = True
        node.role = Role.LEADER
        queued = node.propose([b"x"], 0.05)
        proposed: asyncio.Future[list[ApplyResult]] = loop.create_future()
        node._pending.waiters = {4: (1, Write(proposed, 1, 0.05, node._due(0.05)), 0)}
        reads = {mode: node.read([b"k"], mode, 0.05) for mode in ("linearizable", "eventual")}
        late = node.read([b"k"], "lease", 60.0)
        done = node.propose([b"y"], 0.05)
        finished = weakref.ref(done)
        done.set_result([])
        node._in_proposals.pop()  # applied and gone from the pending sets
        del done
        gc.collect()
        assert finished() is None
        node._pending.ticks += node._due(0.05)
        node._expire()
        for future in (queued, proposed, *reads.values()):
            with pytest.raises(Timeout):
                future.result()
        assert not late.done()

    run(main())

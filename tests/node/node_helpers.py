"""Helpers for node tests: free ports, coroutines with a deadline, and `Cluster`, the one
in-process cluster harness (test_cluster, test_snapshots, test_membership)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from dengine import Engine
from dengine.bench.cluster import free_ports
from dengine.errors import NotLeader, Timeout, Unavailable

T = TypeVar("T")


def free_port() -> int:
    """A port free on 127.0.0.1, outside the ephemeral range (dengine.bench.cluster)."""
    return free_ports(1)[0]


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run a test coroutine on a fresh event loop; a hang fails the test instead of CI."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(predicate: Any, timeout: float = 10.0, interval: float = 0.01) -> None:
    """Wait until predicate() is true; AssertionError after timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


# Timings that elect a leader within ~100 ms on 127.0.0.1.
FAST = {"tick_ms": 5, "election_timeout_ms": 100, "heartbeat_interval_ms": 20,
        "clock_drift_ms": 20}


class Cluster:
    """Embedded engines in this process, over real TCP on 127.0.0.1 free ports, one data
    dir each under `base`; restartable by node id (same ports, same data dir).

    Nodes 1..size start as one cluster (each with the others as peers); any other node
    id starts alone, or with `join=True` waits to be added (`change("add_learner", ...)`).
    `extra` settings apply to every node.
    """

    def __init__(self, base: Path, size: int = 3, **extra: Any) -> None:
        self.base = base
        self.initial = list(range(1, size + 1))
        self.peer_ports: dict[int, int] = {}
        self.client_ports: dict[int, int] = {}
        self.engines: dict[int, Engine] = {}
        self.extra = extra

    def peer(self, node_id: int) -> str:
        """The peer address of `node_id` (its port is picked on first use)."""
        if node_id not in self.peer_ports:
            self.peer_ports[node_id] = free_port()
        return f"127.0.0.1:{self.peer_ports[node_id]}"

    def client(self, node_id: int) -> str:
        if node_id not in self.client_ports:
            self.client_ports[node_id] = free_port()
        return f"127.0.0.1:{self.client_ports[node_id]}"

    def data_dir(self, node_id: int) -> Path:
        return self.base / f"n{node_id}"

    def settings(self, node_id: int, join: bool = False, **extra: Any) -> dict[str, Any]:
        settings = {**FAST, **self.extra, **extra, "node_id": node_id,
                    "listen_peer": self.peer(node_id), "listen_client": self.client(node_id)}
        if join:
            settings["join"] = "127.0.0.1:1"  # any cluster endpoint: the test adds it itself
            # `dengine serve --join` asks the cluster for its id; embedded, it is given.
            settings.setdefault("cluster_id", self.cluster_id())
        elif node_id in self.initial:
            settings["peers"] = {i: self.peer(i) for i in self.initial if i != node_id}
        return settings

    def cluster_id(self) -> str:
        """The id of the running nodes (what `dengine serve --join` would ask for)."""
        return next(iter(self.engines.values())).status().cluster_id

    async def start(self, node_id: int, join: bool = False, **extra: Any) -> Engine:
        settings = self.settings(node_id, join, **extra)
        engine = await Engine.start(str(self.data_dir(node_id)), **settings)
        self.engines[node_id] = engine
        return engine

    async def start_all(self) -> None:
        await asyncio.gather(*(self.start(i) for i in self.initial))

    async def stop(self, node_id: int) -> None:
        await self.engines.pop(node_id).stop()

    async def stop_all(self) -> None:
        await asyncio.gather(*(e.stop() for e in self.engines.values()))
        self.engines.clear()

    async def leader(self, timeout: float = 10.0, *, all_know: bool = True) -> Engine:
        """The single leader; every running node knows it (`all_know`), or at least the
        nodes that know a leader agree on it (joiners may know none yet)."""
        def agreed() -> bool:
            leaders = [e for e in self.engines.values() if e.is_leader]
            known = {e.leader_id for e in self.engines.values()}
            if not all_know:
                known.discard(0)
            return len(leaders) == 1 and known == {leaders[0].node_id}
        await until(agreed, timeout)
        return next(e for e in self.engines.values() if e.is_leader)

    def followers(self) -> list[Engine]:
        return [e for e in self.engines.values() if not e.is_leader]

    async def put_many(self, start: int, count: int, size: int = 100) -> Engine:
        """Write keys start..start+count, one log entry each (one put at a time:
        concurrent ones would share a batch entry, and the callers' snapshot and
        compaction thresholds count entries), following leader changes."""
        leader = await self.leader()
        for lo in range(start, start + count, 100):
            for _ in range(20):
                try:
                    for i in range(lo, min(lo + 100, start + count)):
                        await leader.put(b"k%06d" % i, b"v%06d" % i + b"x" * size)
                    break
                except (NotLeader, Unavailable, Timeout):
                    await asyncio.sleep(0.05)
                    leader = await self.leader()
            else:
                raise AssertionError("no stable leader to write to")
        return leader

    async def change(self, what: str, *args: Any, **kwargs: Any) -> Engine:
        """Run a membership change on the leader, retrying while another one settles."""
        for _ in range(100):
            leader = await self.leader(all_know=False)
            try:
                await getattr(leader, what)(*args, **kwargs)
                return leader
            except (Unavailable, NotLeader, Timeout):
                await asyncio.sleep(0.05)
        raise AssertionError(f"{what}{args} never succeeded")

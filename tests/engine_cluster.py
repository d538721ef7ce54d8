"""In-process engines on one loop, real TCP between them: what the client and server tests
serve clients from (tests/client, tests/server)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from dengine import Engine
from dengine.bench.cluster import free_ports

FAST = {"tick_ms": 5, "election_timeout_ms": 100, "heartbeat_interval_ms": 20,
        "clock_drift_ms": 20}
# Several nodes: the tests use the leader they found (its embedded Engine, its listeners)
# throughout, and the nodes share this process's loop: on a loaded machine a loop stalled
# past FAST's 100 ms election timeout elected another mid-test ("not the leader"). etcd's
# default election timeout; one node has nobody to depose it.
STEADY = {"election_timeout_ms": 1000}


async def start_engines(into: dict[int, Engine], tmp_path: Path, nodes: int,
                        **settings: Any) -> None:
    """`nodes` engines (FAST, STEADY if several, then `settings`) under `tmp_path`, each
    put in `into` as it starts (so that the caller stops those started if a later one
    fails)."""
    settings = {**FAST, **(STEADY if nodes > 1 else {}), **settings}
    ports = free_ports(2 * nodes)
    peers = {i: f"127.0.0.1:{ports[i - 1]}" for i in range(1, nodes + 1)}
    for i in peers:
        into[i] = await Engine.start(
            str(tmp_path / f"n{i}"), **settings, node_id=i, listen_peer=peers[i],
            listen_client=f"127.0.0.1:{ports[nodes + i - 1]}",
            peers={j: a for j, a in peers.items() if j != i})


async def agreed_leader(engines: dict[int, Engine], timeout: float = 30.0) -> Engine:
    """The leader once every engine names it, ready (a loaded machine elects late)."""
    deadline = time.monotonic() + timeout
    while True:
        leaders = [e for e in engines.values() if e.is_leader]
        if leaders and all(e.leader_id == leaders[0].node_id for e in engines.values()):
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"no leader all agree on within {timeout}s")
        await asyncio.sleep(0.025)
    await leaders[0].wait_ready(10)
    return leaders[0]

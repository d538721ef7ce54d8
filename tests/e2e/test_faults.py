"""The fault test (issue 14): real processes, a proxy per directed peer link, kill -9,
SIGSTOP, link drops, black holes and delays under load from several clients and one
long-lived client (see fault_run.py for the run and its checks).

Always asserted: the history (with a final read of every key) is linearizable, and no
acknowledged write is lost. The write-window targets of the issue (no client, the
long-lived one included, goes longer than election timeout + 2 s without a successful
write while a majority is up and connected; a follower's pause or isolation interrupts
writes for no more than 1 s) are `test_write_windows` and `test_follower_fault_windows`
(and the slow runs assert both);
`test_no_client_wedged` keeps a loose bound, `DENGINE_FAULT_MAX_WINDOW_S` (default 30 s:
longer means a client is wedged, not slow), whose failure says more than the targets'.

The CI run: ~40 s of faults, every kind once, at a modest rate. The long runs are under
`-m slow`: `DENGINE_FAULT_SEEDS` (default "1,2,3"), `DENGINE_FAULT_SECONDS` (default 150)
at the issue's ~1000 ops/s. `DENGINE_FAULT_SEED` replays a CI run. Each run prints the
table (fault kind -> longest window without a successful write, per client) and writes
its report as JSON to the test's tmp dir.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pytest
from fault_proxy import FaultProxy
from fault_run import (
    Call,
    RunConfig,
    history_ops,
    lost_writes,
    run_faults,
    summary,
    window_violations,
)

from dengine.bench.cluster import free_ports
from dengine.node.transport import encode_frame
from dengine.proto import Hello, PeerFrame
from dengine.sim.lincheck import check

CI_SEED = int(os.environ.get("DENGINE_FAULT_SEED", "14"))
CI_SECONDS = float(os.environ.get("DENGINE_FAULT_CI_SECONDS", "40"))
SLOW_SEEDS = [int(s) for s in os.environ.get("DENGINE_FAULT_SEEDS", "1,2,3").split(",") if s]
SLOW_SECONDS = float(os.environ.get("DENGINE_FAULT_SECONDS", "150"))
# A loose bound (a wedged client), and the targets.
MAX_WINDOW_S = float(os.environ.get("DENGINE_FAULT_MAX_WINDOW_S", "30"))
FOLLOWER_TARGET_S = 1.0


def target_s(report: dict[str, Any]) -> float:
    return float(report["election_timeout_s"]) + 2.0


def run(workdir: Path, cfg: RunConfig) -> dict[str, Any]:
    report = asyncio.run(run_faults(workdir, cfg))
    path = workdir / "fault_report.json"
    path.write_text(json.dumps(report, indent=2))
    print(summary(report))
    print(f"report: {path}")
    return report


def assert_correct(report: dict[str, Any]) -> None:
    assert report["linearizable"], report["lincheck"]
    assert not report["lost_acknowledged_writes"], report["lost_acknowledged_writes"]
    assert report["final_keys"] > 0
    assert not report["unexpected_errors"], (
        f"errors the client should have mapped: {report['unexpected_errors']}")
    # The run did what it says: every fault kind happened and writes succeeded.
    assert report["outcomes"].get("regular:put:ok", 0) > 0
    assert report["outcomes"].get("long:put:ok", 0) > 0


# ---- the instrument itself (fast) ------------------------------------------------------

def hello(node_id: int) -> bytes:
    return encode_frame(PeerFrame(hello=Hello(cluster_id="c", node_id=node_id))
                        .SerializeToString())


async def proxy_case() -> None:
    """Each directed link passes, black-holes (held open, nothing through, then the held
    bytes), drops (connections reset, new ones too) and delays, independently."""
    public_port, private_port = free_ports(2)
    received: list[bytes] = []
    got = asyncio.Event()

    async def node2(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(hello(2))
        while data := await reader.read(65536):
            received.append(data)
            got.set()
        writer.close()

    server = await asyncio.start_server(node2, "127.0.0.1", private_port)
    proxy = FaultProxy({1: f"127.0.0.1:{free_ports(1)[0]}", 2: f"127.0.0.1:{public_port}"},
                       {1: "127.0.0.1:1", 2: f"127.0.0.1:{private_port}"})
    await proxy.start()
    try:
        async def dial(src: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            reader, writer = await asyncio.open_connection("127.0.0.1", public_port)
            writer.write(hello(src))
            return reader, writer

        async def arrives(payload: bytes, timeout: float) -> bool:
            try:
                await asyncio.wait_for(wait_for_bytes(payload), timeout)
                return True
            except TimeoutError:
                return False

        async def wait_for_bytes(payload: bytes) -> None:
            while payload not in b"".join(received):
                got.clear()
                await got.wait()

        reader, writer = await dial(1)
        assert (await reader.readexactly(len(hello(2)))) == hello(2)
        writer.write(b"pass-1")
        assert await arrives(b"pass-1", 5)
        assert proxy.links[(1, 2)].conns

        proxy.set([(1, 2)], "blackhole", 0.0)
        writer.write(b"held-1")
        assert not await arrives(b"held-1", 0.3)
        proxy.set([(1, 2)], "pass", 0.0)
        assert await arrives(b"held-1", 5)

        proxy.set([(1, 2)], "pass", 0.2)
        sent = time.monotonic()
        writer.write(b"late-1")
        assert await arrives(b"late-1", 5)
        assert time.monotonic() - sent >= 0.2
        proxy.set([(1, 2)], "pass", 0.0)

        proxy.set([(1, 2)], "drop", 0.0)
        assert await closed(reader)  # reset by the proxy
        reader, writer = await dial(1)
        assert await closed(reader)  # new connections too, before any Hello back
        proxy.set([(1, 2)], "pass", 0.0)
        reader, writer = await dial(1)
        assert (await reader.readexactly(len(hello(2)))) == hello(2)
        assert proxy.links[(1, 2)].resets >= 2
        assert proxy.links[(2, 1)].accepted == 0  # the other direction is its own link
    finally:
        await proxy.close()
        server.close()


async def closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(100), 5) == b""
    except ConnectionResetError:
        return True


def test_proxy_link_modes() -> None:
    asyncio.run(proxy_case())


def test_checks_catch_a_lost_write_and_a_stale_read() -> None:
    put = Call("c0", "put", "k", "v1", None, 0.0, 1.0, "ok")
    later = Call("c1", "put", "k", "v2", None, 2.0, 3.0, "ok")
    unknown = Call("c1", "put", "k", "v3", None, 2.0, 3.0, "unknown")
    stale = Call("c2", "get", "k", None, "v1", 4.0, 5.0, "ok")
    final = [Call("final", "get", "k", None, "v1", 6.0, 7.0, "ok")]
    assert lost_writes([put, later], final) == [
        {"key": "k", "acknowledged": "v2", "final": "v1"}]
    assert not check(history_ops([put, later, *final])).ok
    assert not check(history_ops([put, later, stale])).ok
    # An unknown-outcome later put may not have happened: nothing is lost.
    assert lost_writes([put, unknown], final) == []
    assert check(history_ops([put, unknown, stale, *final])).ok
    # A failed put (definitely not applied) must not be observed.
    failed = Call("c1", "put", "k", "v4", None, 2.0, 3.0, "failed")
    seen = Call("c2", "get", "k", None, "v4", 4.0, 5.0, "ok")
    assert not check(history_ops([put, failed, seen])).ok


# ---- the fault run -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def ci_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cfg = RunConfig(seed=CI_SEED, seconds=CI_SECONDS, rate=300.0, long_rate=50.0,
                    duration_scale=0.75, quiet_s=(1.0, 1.5), tail_s=2.0)
    report = run(tmp_path_factory.mktemp("faults"), cfg)
    report["load_after"] = os.getloadavg()[0]  # the last minute of the run, all processes
    return report


def judge_tight_windows(report: dict[str, Any], over: list[str]) -> None:
    """The issue's targets are timings of the nodes, fair only while the machine gives
    them their CPU: over twice as many runnable processes as cores (other jobs beside
    CI), a window over the target is reported and skipped, not failed. The loose bound
    (test_no_client_wedged) and the correctness checks hold at any load."""
    cores = os.cpu_count() or 1
    if over and report["load_after"] > 2 * cores:
        pytest.skip(f"load average {report['load_after']:.1f} on {cores} cores; over the "
                    "target: " + "; ".join(over))
    assert not over, "\n".join(over)


def test_tight_windows_are_judged_unless_the_machine_is_overloaded() -> None:
    with pytest.raises(pytest.skip.Exception):
        judge_tight_windows({"load_after": 99.0}, ["pause_follower: c5 1.16s > 1.00s"])
    with pytest.raises(AssertionError):
        judge_tight_windows({"load_after": 0.0}, ["pause_follower: c5 1.16s > 1.00s"])
    judge_tight_windows({"load_after": 99.0}, [])


def test_faults_linearizable_and_nothing_lost(ci_report: dict[str, Any]) -> None:
    assert_correct(ci_report)
    kinds = {f["kind"] for f in ci_report["faults"]}
    assert kinds == set(RunConfig().kinds), f"kinds not run: {set(RunConfig().kinds) - kinds}"


def test_no_client_wedged(ci_report: dict[str, Any]) -> None:
    """The loose bound: some write succeeds for every client within MAX_WINDOW_S."""
    over = window_violations(ci_report, MAX_WINDOW_S, MAX_WINDOW_S)
    assert not over, "\n".join(over)


def test_write_windows(ci_report: dict[str, Any]) -> None:
    """The issue's target: no client goes longer than election timeout + 2 s without a
    successful write while a majority is up and connected (every period here: one fault
    at a time on three nodes)."""
    judge_tight_windows(ci_report, window_violations(ci_report, target_s(ci_report),
                                                     target_s(ci_report)))


def test_follower_fault_windows(ci_report: dict[str, Any]) -> None:
    """The issue's target: a follower's pause or isolation interrupts writes for no more
    than 1 s."""
    judge_tight_windows(ci_report, window_violations(ci_report, math.inf,
                                                     FOLLOWER_TARGET_S))


@pytest.mark.slow
@pytest.mark.timeout(SLOW_SECONDS * 3 + 300)
@pytest.mark.parametrize("seed", SLOW_SEEDS)
def test_faults_long(seed: int, tmp_path: Path) -> None:
    report = run(tmp_path, RunConfig(seed=seed, seconds=SLOW_SECONDS))
    assert_correct(report)
    over = window_violations(report, MAX_WINDOW_S, MAX_WINDOW_S)
    assert not over, "\n".join(over)
    targets = window_violations(report, target_s(report), FOLLOWER_TARGET_S)
    assert not targets, "over the issue 14 targets:\n" + "\n".join(targets)

"""Smoke tests of `dengine bench put|get|mixed|failover` with tiny runs (real clusters)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dengine.bench.cluster import LocalCluster
from dengine.cli import cli
from dengine.errors import InvalidRequest


def bench(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["bench", *args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.output)
    return data


def check_run(row: dict[str, Any], total: int) -> None:
    assert row["ops"] == total and row["errors"] == 0, row
    latency = row["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["p999"]
    assert row["throughput_ops_s"] > 0


LOAD = ["--total", "60", "--concurrency", "8", "--key-space", "40", "--no-progress"]


@pytest.mark.parametrize("nodes", ["1", "3"])
@pytest.mark.parametrize("workload", [
    ["put"], ["get", "--consistency", "linearizable"], ["mixed", "--read-ratio", "0.5"],
])
def test_embedded(nodes: str, workload: list[str]) -> None:
    row = bench(*workload, "--embedded", "--nodes", nodes, *LOAD)
    check_run(row, 60)
    assert row["nodes"] == int(nodes) and row["workload"] == workload[0]


@pytest.fixture(scope="module")
def remote_cluster() -> Iterator[LocalCluster]:
    cluster = LocalCluster(3)
    asyncio.run(cluster.start())
    try:
        yield cluster
    finally:
        asyncio.run(cluster.stop())


@pytest.mark.parametrize(("workload", "transport"), [
    (["put"], "auto"), (["put"], "grpc"), (["get", "--consistency", "eventual"], "native"),
    (["get", "--consistency", "lease"], "auto"),
    (["mixed", "--read-ratio", "0.9", "--sequential-keys"], "grpc"),
])
def test_remote(remote_cluster: LocalCluster, workload: list[str], transport: str) -> None:
    endpoints = ",".join(remote_cluster.endpoints)
    options = [] if transport == "auto" else ["--transport", transport]
    row = bench(*workload, "--endpoints", endpoints, *options, *LOAD)
    check_run(row, 60)
    assert row["target"] == f"remote {endpoints} ({transport})"


def test_transport_is_for_remote_targets_only() -> None:
    result = CliRunner().invoke(cli, ["bench", "put", "--embedded", "--transport", "grpc"])
    assert result.exit_code != 0
    assert "--transport applies to --endpoints and --local" in str(
        result.exception or result.output)


def test_table_output(remote_cluster: LocalCluster) -> None:
    result = CliRunner().invoke(
        cli, ["bench", "put", "--endpoints", remote_cluster.endpoints[0], *LOAD],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    for heading in ("ops/s", "p50 ms", "p999 ms", "errors"):
        assert heading in result.output


def test_tls_compare_runs_plaintext_then_tls_in_one_run() -> None:
    """`--local --tls compare`: two fresh clusters, plaintext then TLS everywhere (the
    client's requests over TLS with a client certificate, mutual TLS between peers)."""
    report = bench("put", "--local", "--nodes", "1", "--tls", "compare", *LOAD)
    plain, tls = report["runs"]
    check_run(plain, 60)
    check_run(tls, 60)
    assert plain["target"] == "local, 1 node (auto)"
    assert tls["target"] == "local, 1 node (auto, TLS)"
    assert set(report["tls_cost"]) == {"throughput_change_pct", "p50_change_ms"}


@pytest.mark.parametrize(("args", "message"), [
    (["put", "--total", "5"], "exactly one target"),
    (["put", "--local", "--endpoints", "127.0.0.1:1"], "exactly one target"),
    (["put", "--endpoints", "127.0.0.1:1", "--tls", "on"], "--tls applies"),
    (["put", "--embedded", "--endpoints", "127.0.0.1:1"], "exactly one target"),
    (["get", "--embedded", "--key-size", "2", "--key-space", "1000"], "too small"),
    (["put", "--endpoints", "nonsense"], "bad endpoint"),
])
def test_bad_options_are_clear_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["bench", *args])
    assert isinstance(result.exception, InvalidRequest)
    assert message in result.exception.message


def test_failover_one_trial() -> None:
    result = CliRunner().invoke(cli, ["bench", "failover", "--trials", "2", "--json",
                                      "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["trials"] == 2 and len(summary["times_ms"]) == 2
    assert 0 < summary["median_ms"] <= summary["max_ms"]


def test_cluster_stop_ends_processes_and_removes_files() -> None:
    async def scenario() -> tuple[list[subprocess.Popen[bytes]], Path]:
        async with LocalCluster(3, embedded=True) as cluster:
            assert cluster.engine is not None and cluster.engine.is_leader
            await cluster.engine.put(b"k", b"v")
            procs = [p.process for p in cluster.processes.values() if p.process is not None]
            assert len(procs) == 2 and all(p.poll() is None for p in procs)
            assert cluster.workdir is not None
            return procs, cluster.workdir

    procs, workdir = asyncio.run(scenario())
    assert all(p.poll() is not None for p in procs)
    assert not workdir.exists()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True, check=False).stdout
    return [int(x) for x in out.split()]


def _wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupted_bench_leaves_nothing_behind(tmp_path: Path, sig: int) -> None:
    """Ctrl-C or SIGTERM stop followers and remove the temp dir; kill -9 still takes them."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    bench_proc = subprocess.Popen(
        [sys.executable, "-c", "from dengine.cli import main; main()", "bench", "put",
         "--embedded", "--nodes", "3", "--duration", "60", "--no-progress"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        assert _wait_for(lambda: len(_children(bench_proc.pid)) == 2, 30)
        followers = _children(bench_proc.pid)
        assert _wait_for(lambda: any(tmp_path.glob("dengine-bench-*/node1")), 30)
        time.sleep(0.5)  # under load
        bench_proc.send_signal(sig)
        bench_proc.wait(30)
        assert _wait_for(lambda: not any(_alive(pid) for pid in followers), 15)
        if sig != signal.SIGKILL:
            assert bench_proc.returncode == 130
            assert list(tmp_path.glob("dengine-bench-*")) == []
            assert bench_proc.stderr is not None
            assert b"Traceback" not in bench_proc.stderr.read()
    finally:
        if bench_proc.poll() is None:
            bench_proc.kill()
            bench_proc.wait()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_restart_small() -> None:
    result = CliRunner().invoke(cli, ["bench", "restart", "--keys", "300", "--json",
                                      "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["keys"] == 300 and summary["raw_bytes"] == 300 * (8 + 256)
    assert summary["restart_to_serving_s"] > 0 and summary["rss_bytes"] > 0


def test_restart_data_dir_is_loaded_once_and_reused(tmp_path: Path) -> None:
    kept = tmp_path / "kept"
    args = ["bench", "restart", "--keys", "300", "--data-dir", str(kept), "--json",
            "--no-progress"]
    first = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    marker = json.loads((kept / "bench-restart.json").read_text())
    assert marker["keys"] == 300
    files = sorted(p.relative_to(kept) for p in kept.rglob("*"))
    # The second run restarts a copy: no load, and the kept files stay as they were.
    second = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert second.exit_code == 0, second.output
    assert json.loads(second.output)["load_s"] == json.loads(first.output)["load_s"]
    assert sorted(p.relative_to(kept) for p in kept.rglob("*")) == files
    other = CliRunner().invoke(cli, [*args[:3], "301", *args[4:]])
    assert isinstance(other.exception, InvalidRequest)
    assert "holds 300 keys" in str(other.exception)

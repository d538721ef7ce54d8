"""The `dengine` command line against real servers: put/get/del/txn/status, cluster up."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import subprocess
import time
from pathlib import Path

from e2e_support import CLI, Cluster, free_ports, pid_alive

from dengine.bench.cluster import free_port_run


def distinct_port_runs(runs: int, n: int) -> list[int]:
    """`runs` bases of n consecutive free ports each, the runs not overlapping."""
    bases: list[int] = []
    while len(bases) < runs:
        base = free_port_run(n)
        if all(abs(base - b) >= n for b in bases):
            bases.append(base)
    return bases
from dengine.client import Client


def dengine(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_put_get_delete_status_json(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = cluster_factory(1)
    asyncio.run(cluster.wait_leader())
    ep = ["--endpoints", cluster.node(1).client]

    put = dengine("put", "greeting", "héllo wörld", *ep)
    assert (put.returncode, put.stdout.strip()) == (0, "OK"), put.stderr
    got = dengine("get", "greeting", *ep)  # etcdctl's output: the key, then its value
    assert (got.returncode, got.stdout) == (0, "greeting\nhéllo wörld\n"), got.stderr
    value_only = dengine("get", "greeting", "--print-value-only", *ep)
    assert value_only.stdout == "héllo wörld\n"
    got_json = json.loads(dengine("get", "greeting", "--consistency", "lease", "--json",
                                  *ep).stdout)
    [kv] = got_json["kvs"]
    assert base64.b64decode(kv["value"]).decode() == "héllo wörld"
    assert (kv["version"], got_json["count"]) == (1, 1)
    assert got_json["header"]["revision"] == kv["mod_revision"] == kv["create_revision"]
    hexed = dengine("put", "--hex", "00ff", "0102", *ep)
    assert hexed.returncode == 0, hexed.stderr
    assert dengine("get", "--hex", "00ff", "--print-value-only", *ep).stdout == "0102\n"

    status = dengine("status", "--json", *ep)
    assert status.returncode == 0, status.stderr
    [node] = json.loads(status.stdout)
    assert node["node_id"] == 1 and node["role"] == "leader" and node["leader_id"] == 1
    assert node["applied_index"] >= 2 and node["last_log_index"] >= node["commit_index"]
    table = dengine("status", *ep)
    assert table.returncode == 0 and "leader" in table.stdout

    deleted = dengine("delete", "greeting", *ep)
    assert (deleted.returncode, deleted.stdout) == (0, "1\n"), deleted.stderr
    assert dengine("del", "greeting", *ep).stdout == "0\n"
    missing = dengine("get", "greeting", *ep)  # as etcdctl: nothing printed, status 0
    assert (missing.returncode, missing.stdout) == (0, ""), missing.stderr
    missing_json = json.loads(dengine("get", "greeting", "-w", "json", *ep).stdout)
    assert list(missing_json) == ["header"]


def test_user_errors_are_messages_not_tracebacks(cluster_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = cluster_factory(1)
    asyncio.run(cluster.wait_leader())
    ep = ["--endpoints", cluster.node(1).client]
    (tmp_path / "file").write_bytes(b"not a directory")
    for args, needle in [
        (["put", "", "v", *ep], "empty key"),
        (["get", "k", "--consistency", "strong", *ep], "strong"),
        (["put", "--hex", "zz", "v", *ep], "hexadecimal"),
        (["get", "k", "--endpoints", "nonsense"], "HOST:PORT"),
        (["put", "k", "v", "--endpoints", "127.0.0.1:1", "--timeout", "0.3"], "UNAVAILABLE"),
        (["member", "add", "0", "127.0.0.1:1", *ep], "0"),
        (["member", "add", "4", "nohost", *ep], "HOST:PORT"),
        (["member", "remove", "9", *ep], "INVALID_REQUEST"),
        (["member", "promote", "1", *ep], "INVALID_REQUEST"),
        (["serve", "--peer", "x=y"], "ID=HOST:PORT"),
        (["serve", "--config", "/nonexistent.toml"], "not found"),
        (["serve", "--data-dir", str(tmp_path / "d"), "--listen-client", cluster.node(1).client],
         "cannot listen on"),
        (["serve", "--data-dir", str(tmp_path / "file" / "d"), *free_listeners()],
         "cannot create data dir"),
        (["serve", "--data-dir", str(tmp_path / "j1"), "--id", "7", "--cluster-id", "other",
          *free_listeners(), "--join", cluster.node(1).client], "reaches cluster '"),
        (["serve", "--data-dir", str(tmp_path / "j2"), "--id", "1",
          *free_listeners(), "--join", cluster.node(1).client], "already a member"),
    ]:
        result = dengine(*args)
        assert result.returncode != 0, (args, result.stdout)
        assert "Traceback" not in result.stderr, result.stderr
        assert needle in result.stderr, (args, result.stderr)


def free_listeners() -> list[str]:
    client, peer = free_ports(2)
    return ["--listen-client", f"127.0.0.1:{client}", "--listen-peer", f"127.0.0.1:{peer}",
            "--listen-client-native", "127.0.0.1:0"]


def _cluster_up(tmp_path: Path, nodes: int) -> tuple[subprocess.Popen[str], str, list[int]]:
    """`dengine cluster up` started and ready: the process, its output so far, the pids."""
    client_base, peer_base, native_base = distinct_port_runs(3, nodes)
    proc = subprocess.Popen(
        [*CLI, "cluster", "up", "--nodes", str(nodes), "--base-dir", str(tmp_path / "c"),
         "--client-port", str(client_base), "--peer-port", str(peer_base),
         "--native-port", str(native_base)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("ready:"):
            break
    output = "".join(lines)
    pids = [int(p) for p in re.findall(r"pid (\d+)", output)]
    endpoints = [f"127.0.0.1:{client_base + i}" for i in range(nodes)]
    assert f"endpoints: {','.join(endpoints)}" in output, output
    return proc, output, pids


def _end(proc: subprocess.Popen[str], pids: list[int]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pid in pids:
        if pid_alive(pid):
            subprocess.run(["kill", "-9", str(pid)], check=False)


def test_cluster_up_starts_and_sigint_stops_every_process(tmp_path: Path) -> None:
    proc, output, pids = _cluster_up(tmp_path, 3)
    try:
        assert "ready: leader is node" in output, output
        assert len(pids) == 3
        endpoints = re.findall(r"endpoints: (\S+)", output)[0].split(",")

        async def use() -> None:
            async with Client(endpoints, timeout=10) as client:
                await client.put(b"k", b"v")
                assert await client.get(b"k") == b"v"

        asyncio.run(use())
        # One child dying does not take the supervisor down, nor leave the others behind.
        subprocess.run(["kill", "-9", str(pids[2])], check=True)
        # The supervisor reports a child as it reaps it (no longer even a zombie); it polls
        # every 0.2 s, later on a loaded machine.
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pids[2]}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, output + rest
        assert "node 3 exited" in rest and "stopped" in rest, rest
        assert not [p for p in pids if pid_alive(p)]
    finally:
        _end(proc, pids)


def test_cluster_up_killed_with_sigkill_takes_its_nodes_along(tmp_path: Path) -> None:
    """docs/operations.md: the nodes stop cleanly when `cluster up` dies, however it dies."""
    proc, output, pids = _cluster_up(tmp_path, 2)
    try:
        assert "ready: leader is node" in output, output
        assert len(pids) == 2 and all(pid_alive(p) for p in pids)
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.1)
        assert not [p for p in pids if pid_alive(p)], output
        for n in (1, 2):  # a clean stop (SIGTERM), logged by each node
            log = (tmp_path / "c" / f"node{n}.log").read_text()
            assert "stopped" in log.lower(), log[-2000:]
    finally:
        _end(proc, pids)

"""`dengine endpoint health|status|hashkv`: etcdctl's columns, JSON and exit codes,
checked against etcdctl 3.4 itself on the same node, and an unreachable endpoint."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from dengine.bench.cluster import free_ports
from dengine.cli.endpoint_cmds import go_duration, human_bytes

ETCDCTL = shutil.which("etcdctl")
CLI = [sys.executable, "-c", "from dengine.cli import main; main()"]


def dengine(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)


def etcdctl(*args: str) -> subprocess.CompletedProcess[str]:
    assert ETCDCTL is not None
    return subprocess.run([ETCDCTL, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "ETCDCTL_API": "3"})


def test_go_formats() -> None:
    # as etcdctl 3.4 printed them
    assert go_duration(0.005464526) == "5.464526ms"
    assert go_duration(5.00076806) == "5.00076806s"
    assert go_duration(0.000850) == "850µs"
    assert go_duration(0.002) == "2ms"
    assert [human_bytes(n) for n in (20480, 24576, 2097293, 5)] == [
        "20 kB", "25 kB", "2.1 MB", "5 B"]


@pytest.mark.skipif(ETCDCTL is None, reason="etcdctl not installed (etcd-client)")
@pytest.mark.parametrize("fmt", ["table", "json", "simple"])
def test_status_and_health_print_as_etcdctl(endpoint: str, fmt: str) -> None:
    ours = dengine("endpoint", "status", "--endpoints", endpoint, "-w", fmt)
    theirs = etcdctl("--endpoints", endpoint, "endpoint", "status", "-w", fmt)
    assert ours.returncode == theirs.returncode == 0, (ours, theirs)
    assert ours.stdout.strip() == theirs.stdout.strip()
    took = re.compile(r"\d+(\.\d+)?(ns|µs|ms|s)\b")

    def masked(text: str) -> str:  # the time each took, and the widths it gives a table
        return re.sub(r"-+", "-", re.sub(r" +", " ", took.sub("T", text))).strip()

    ours = dengine("endpoint", "health", "--endpoints", endpoint, "-w", fmt)
    theirs = etcdctl("--endpoints", endpoint, "endpoint", "health", "-w", fmt)
    assert ours.returncode == theirs.returncode == 0, (ours, theirs)
    assert masked(ours.stdout) == masked(theirs.stdout)
    assert masked(ours.stderr) == masked(theirs.stderr)


def test_an_unreachable_endpoint_is_reported_and_fails(endpoint: str) -> None:
    down = f"127.0.0.1:{free_ports(1)[0]}"
    out = dengine("endpoint", "health", "--endpoints", f"{endpoint},{down}", "--json")
    assert out.returncode == 1 and "Error: unhealthy cluster" in out.stderr
    by_endpoint = {r["endpoint"]: r for r in json.loads(out.stdout)}
    assert by_endpoint[endpoint]["health"] is True
    assert by_endpoint[down]["health"] is False
    assert by_endpoint[down]["error"] == "Connection refused"
    out = dengine("endpoint", "status", "--endpoints", f"{endpoint},{down}")
    assert out.returncode == 1
    assert f"Failed to get the status of endpoint {down} (Connection refused)" in out.stderr
    assert endpoint in out.stdout and "IS LEADER" in out.stdout
    out = dengine("endpoint", "status", "--endpoints", endpoint, "--cluster", "--json")
    assert out.returncode == 0
    [only] = json.loads(out.stdout)
    assert only["Endpoint"] == f"http://{endpoint}" and only["Status"]["leader"] == 1


@pytest.mark.skipif(ETCDCTL is None, reason="etcdctl not installed (etcd-client)")
@pytest.mark.parametrize("fmt", ["table", "json", "simple"])
def test_hashkv_prints_as_etcdctl(endpoint: str, fmt: str) -> None:
    for args in ([], ["--rev", "1"], ["--rev", "2"], ["--rev", "1000000"]):
        ours = dengine("endpoint", "hashkv", "--endpoints", endpoint, "-w", fmt, *args)
        theirs = etcdctl("--endpoints", endpoint, "endpoint", "hashkv", "-w", fmt, *args)
        assert ours.returncode == theirs.returncode, (args, ours, theirs)
        assert ours.stdout == theirs.stdout, args
        errors = [line for line in theirs.stderr.splitlines() if '"level"' not in line]
        assert ours.stderr.splitlines() == errors, args

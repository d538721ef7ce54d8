"""Processes started by tests die with the test process, however it dies (kill -9 of
pytest, or another helper's `pkill -P`, left `dengine serve` orphans before): the
launcher wraps them with `die_with_parent` (Linux's PR_SET_PDEATHSIG, SIGKILL)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from e2e_support import pid_alive

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")

# A stand-in for pytest: starts a node with the tests' launcher, says its pid, waits.
PARENT = """
import socket, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from e2e_support import Cluster
cluster = Cluster(Path(sys.argv[2]), 1)
cluster.start()
node = cluster.nodes[0]
host, port = node.client.rsplit(":", 1)
for _ in range(600):  # until it serves (past its start-up)
    try:
        socket.create_connection((host, int(port)), 0.1).close()
        break
    except OSError:
        time.sleep(0.05)
node.signal(19)  # SIGSTOP: a paused node must die too
print(node.process.pid, flush=True)
time.sleep(120)
"""


def test_a_killed_test_process_leaves_no_server_behind(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(Path(__file__).parent), str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert pid_alive(child)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while pid_alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(child), f"dengine serve (pid {child}) outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child and pid_alive(child):  # (before the fix: stop the orphan ourselves)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)

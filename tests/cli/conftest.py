"""One real `dengine serve` process for the CLI tests (stopped at the end of the module)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dengine import SyncClient
from dengine.errors import DengineError
from dengine.server.supervisor import die_with_parent

CLI = [sys.executable, "-c", "from dengine.cli import main; main()"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The client address of a fresh one-node server."""
    work: Path = tmp_path_factory.mktemp("serve")
    client = f"127.0.0.1:{_free_port()}"
    log = open(work / "node.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        die_with_parent([*CLI, "serve", "--data-dir", str(work / "d"), "--listen-client",
                         client, "--listen-peer", f"127.0.0.1:{_free_port()}",
                         "--listen-client-native", "127.0.0.1:0"]),
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with SyncClient(client, timeout=2) as c:
                    c.put(b"/ready", b"1")
                break
            except DengineError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError((work / "node.log").read_text()) from None
                time.sleep(0.2)
        yield client
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()

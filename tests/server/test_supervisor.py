"""dengine.server.supervisor: children stop when their parent goes away.

The kill -9 of a real `dengine cluster up` is in tests/e2e/test_e2e_cli.py; here, the
watchdog on its own (a fake process) and in a real server whose parent closes the pipe.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from pathlib import Path

from dengine.bench.cluster import free_ports
from dengine.server.supervisor import (
    ServerProcess,
    config_toml,
    stop_all,
    supervise,
    wait_for_eof,
)


def test_watchdog_sends_sigterm_at_eof_then_exits_after_the_grace() -> None:
    read_end, write_end = os.pipe()
    calls: list[tuple[str, int]] = []
    done = threading.Event()

    def kill(pid: int, sig: int) -> None:
        calls.append(("kill", sig))

    def exit_now(code: int) -> None:
        calls.append(("exit", code))
        done.set()

    watchdog = threading.Thread(target=wait_for_eof, args=(read_end, 0.05, kill, exit_now),
                                daemon=True)
    watchdog.start()
    try:
        os.write(write_end, b"data is not EOF")
        time.sleep(0.1)
        assert calls == []
        os.close(write_end)  # what the kernel does when the parent dies
        assert done.wait(10)
        assert calls == [("kill", signal.SIGTERM), ("exit", 1)]
    finally:
        watchdog.join(10)
        os.close(read_end)


def _wait_listening(port: int, child: ServerProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert child.alive, child.log_tail()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"not listening after {timeout}s:\n{child.log_tail()}")


def test_server_stops_cleanly_when_its_parents_end_of_the_pipe_closes(tmp_path: Path) -> None:
    """The fallback of every platform, without PR_SET_PDEATHSIG: closing the pipe is what
    the parent's death does to it."""
    client, peer = free_ports(2)
    child = ServerProcess(1, tmp_path / "node1.toml", tmp_path / "node1.log")
    child.config_file.write_text(config_toml(
        {"data_dir": str(tmp_path / "node1"), "node_id": 1,
         "listen_client": f"127.0.0.1:{client}", "listen_peer": f"127.0.0.1:{peer}",
         "listen_client_native": "127.0.0.1:0"}, {}))
    child.start()
    try:
        _wait_listening(client, child)
        assert child.process is not None and child.process.stdin is not None
        child.process.stdin.close()
        assert child.process.wait(30) == 0, child.log_tail()  # a clean stop, not a kill
    finally:
        stop_all([child])


class _FakeChild:
    def __init__(self) -> None:
        self.alive = True


def test_supervise_reports_each_exit_once_and_ends_when_stopped_or_all_exited() -> None:
    async def scenario() -> None:
        a, b = _FakeChild(), _FakeChild()
        exits: list[object] = []
        stop = asyncio.Event()
        task = asyncio.create_task(supervise([a, b], stop, exits.append, poll_s=0.01))  # type: ignore[list-item]
        a.alive = False
        await asyncio.sleep(0.1)
        assert exits == [a] and not task.done()
        stop.set()
        assert await task is True
        exits.clear()
        b.alive = False
        assert await supervise([a, b], asyncio.Event(), exits.append, poll_s=0.01) is False  # type: ignore[list-item]
        assert exits == [a, b]

    asyncio.run(scenario())

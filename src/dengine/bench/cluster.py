"""Throw-away local clusters for benchmarks, on free 127.0.0.1 ports in a temp dir.

`LocalCluster(3)` runs three `dengine serve` subprocesses; `LocalCluster(3, embedded=True)`
runs node 1 in this process (an `Engine` the benchmark drives directly) and the others as
subprocesses. The in-process node gets the shortest election timeout (the followers' is 6x
longer) and starts first, so it is the one that wins the first election. `stop()` (also
on Ctrl-C or SIGTERM, through `async with`) ends every process and removes the temp dir;
children also get SIGKILL if this process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from dengine.errors import DengineError, Unavailable

if TYPE_CHECKING:
    from dengine.client import Client
    from dengine.node.engine import Engine

# Raft timing of benchmark clusters: the defaults (election timeout 150-300 ms).
DEFAULT_SETTINGS: dict[str, Any] = {
    "tick_ms": 10,
    "election_timeout_ms": 150,
    "heartbeat_interval_ms": 50,
    "log_level": "warning",
}
# The in-process leader of an embedded cluster shares its event loop with the load
# generator; on two busy shared cores that loop can stall for a few hundred ms, and a
# leader that hears from no quorum for an election timeout steps down (check-quorum). So
# it gets a longer timeout than the product default, and its subprocess followers a much
# longer one still, so that it is elected first and stays leader under load.
EMBEDDED_LEADER_ELECTION_MS = 500
FOLLOWER_ELECTION_FACTOR = 6
STOP_GRACE_S = 10.0
# The child asks Linux for SIGKILL when its parent dies (however it dies), then runs the
# CLI. Done in the child's own code rather than a preexec_fn, so that Popen need not fork
# a process that has gRPC threads.
_BOOT = """
import os, signal, sys
if sys.platform == "linux":
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != int(sys.argv[1]):  # the parent died before prctl
        os._exit(1)
del sys.argv[1]
from dengine.cli import main
main()
"""


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports of 127.0.0.1 that are free right now."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def toml_text(settings: dict[str, Any], peers: dict[int, str]) -> str:
    """A `dengine serve --config` file (JSON scalars are valid TOML scalars)."""
    lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    lines.append("[peers]")
    lines += [f'"{node_id}" = {json.dumps(addr)}' for node_id, addr in sorted(peers.items())]
    return "\n".join(lines) + "\n"


@dataclass
class ServerProcess:
    """One `dengine serve` subprocess; restartable on the same data dir and ports."""

    node_id: int
    client: str
    peer: str
    workdir: Path
    peers: dict[int, str]
    settings: dict[str, Any] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.workdir / f"node{self.node_id}"

    @property
    def log_file(self) -> Path:
        return self.workdir / f"node{self.node_id}.log"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Spawn it. Call from the main thread: the child dies with the thread that made it."""
        config = self.workdir / f"node{self.node_id}.toml"
        settings = {**self.settings, "data_dir": str(self.data_dir), "node_id": self.node_id,
                    "listen_client": self.client, "listen_peer": self.peer}
        config.write_text(toml_text(settings, self.peers))
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(os.getpid()), "serve", "--config",
                 str(config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                # Own process group: a terminal's Ctrl-C reaches only the benchmark, which
                # then stops the children in order (and reports instead of racing them).
                start_new_session=True,
            )

    def kill(self) -> None:
        """kill -9 and reap."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM, then SIGKILL if it is still running after `grace` seconds."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class LocalCluster:
    """`nodes` dengine nodes on 127.0.0.1 (see the module docstring).

    `settings` are NodeConfig fields applied to every node (over DEFAULT_SETTINGS).
    `base_dir`: where the temp dir is made (default: the system temp dir).
    """

    def __init__(
        self,
        nodes: int,
        *,
        embedded: bool = False,
        settings: dict[str, Any] | None = None,
        base_dir: str | None = None,
        cluster_id: str = "dengine-bench",
    ) -> None:
        if nodes < 1:
            raise DengineError(f"a cluster needs at least one node, got {nodes}")
        self.nodes = nodes
        self.embedded = embedded
        defaults = dict(DEFAULT_SETTINGS)
        if embedded:
            defaults["election_timeout_ms"] = EMBEDDED_LEADER_ELECTION_MS
        self.settings = {**defaults, **(settings or {}), "cluster_id": cluster_id}
        self._base_dir = base_dir
        self.workdir: Path | None = None
        self.engine: Engine | None = None
        self.processes: dict[int, ServerProcess] = {}
        self.client_addresses: dict[int, str] = {}
        self.peer_addresses: dict[int, str] = {}

    @property
    def endpoints(self) -> list[str]:
        """Client addresses of the subprocess nodes (the in-process node serves no gRPC)."""
        return [self.client_addresses[i] for i in sorted(self.processes)]

    async def __aenter__(self) -> LocalCluster:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self, ready_timeout: float = 30.0) -> None:
        """Start every node and wait until the leader (node 1 if embedded) applies writes."""
        self.workdir = Path(tempfile.mkdtemp(prefix="dengine-bench-", dir=self._base_dir))
        try:
            ports = free_ports(2 * self.nodes)
            for n in range(1, self.nodes + 1):
                self.client_addresses[n] = f"127.0.0.1:{ports[2 * n - 2]}"
                self.peer_addresses[n] = f"127.0.0.1:{ports[2 * n - 1]}"
            first_subprocess = 1
            if self.embedded:
                await self._start_engine()
                first_subprocess = 2
            for n in range(first_subprocess, self.nodes + 1):
                settings = dict(self.settings)
                if self.embedded:
                    settings["election_timeout_ms"] = (
                        FOLLOWER_ELECTION_FACTOR * int(self.settings["election_timeout_ms"])
                    )
                proc = ServerProcess(
                    n, self.client_addresses[n], self.peer_addresses[n], self.workdir,
                    {i: a for i, a in self.peer_addresses.items() if i != n}, settings,
                )
                proc.start()
                self.processes[n] = proc
            await self.wait_ready(ready_timeout)
        except BaseException:
            await self.stop()
            raise

    async def _start_engine(self) -> None:
        from dengine.node.engine import Engine

        assert self.workdir is not None
        peers = {i: a for i, a in self.peer_addresses.items() if i != 1}
        settings = {k: v for k, v in self.settings.items() if k != "log_level"}
        self.engine = await Engine.start(
            str(self.workdir / "node1"), node_id=1, peers=peers,
            listen_peer=self.peer_addresses[1], listen_client=self.client_addresses[1],
            **settings,
        )

    async def wait_ready(self, timeout: float) -> None:
        """Until one write goes through the leader (the embedded node, if any)."""
        deadline = time.monotonic() + timeout
        if self.engine is not None:
            while not self.engine.is_leader:
                self._check_children()
                if time.monotonic() >= deadline:
                    raise Unavailable(
                        f"the in-process node did not become leader within {timeout:g}s"
                        f"{self._logs_hint()}"
                    )
                await asyncio.sleep(0.02)
            await self.engine.put(b"bench-ready", b"1", timeout=max(1.0, timeout))
            return
        async with self.client(timeout=1.0) as client:
            while True:
                self._check_children()
                try:
                    await client.put(b"bench-ready", b"1")
                    return
                except DengineError as e:
                    if time.monotonic() >= deadline:
                        raise Unavailable(
                            f"no leader accepted a write within {timeout:g}s ({e.message})"
                            f"{self._logs_hint()}"
                        ) from None
                await asyncio.sleep(0.05)

    def client(self, **options: Any) -> Client:
        """A `dengine.Client` on every subprocess node."""
        from dengine.client import Client

        return Client(self.endpoints, **options)

    async def leader_id(self, timeout: float = 5.0) -> int:
        async with self.client(timeout=timeout) as client:
            return (await client.leader()).id

    def _check_children(self) -> None:
        for proc in self.processes.values():
            if proc.process is not None and proc.process.poll() is not None:
                raise Unavailable(
                    f"node {proc.node_id} exited with code {proc.process.returncode}:\n"
                    f"{proc.log_tail()}"
                )

    def _logs_hint(self) -> str:
        tails = [f"--- node {p.node_id} ({p.log_file}):\n{p.log_tail(10)}"
                 for p in self.processes.values()]
        return ("\n" + "\n".join(tails)) if tails else ""

    async def stop(self) -> None:
        """Stop every node (children in parallel threads) and remove the temp dir."""
        try:
            if self.engine is not None:
                engine, self.engine = self.engine, None
                with contextlib.suppress(Exception):
                    await engine.stop()
            procs = list(self.processes.values())
            if procs:
                await asyncio.gather(*(asyncio.to_thread(p.stop) for p in procs))
        finally:
            for p in self.processes.values():
                p.kill()  # only if still running (e.g. cancelled while stopping)
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None

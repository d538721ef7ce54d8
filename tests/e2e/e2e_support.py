"""Real `dengine serve` processes on 127.0.0.1 with ports chosen free at run time.

Tests get clusters from the `cluster_factory` fixture (conftest.py), whose finalizer
resumes (SIGCONT) and stops (SIGTERM, then SIGKILL) every process, even when a test fails;
and every process dies with the test process (`die_with_parent`), even if it is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dengine.bench.cluster import free_ports
from dengine.client import Client, NodeStatus, insert
from dengine.errors import DengineError
from dengine.server.supervisor import config_toml, die_with_parent

# Election timing for tests: fast, but with room for two busy shared cores.
TEST_SETTINGS: dict[str, Any] = {
    "tick_ms": 10,
    "election_timeout_ms": 300,
    "heartbeat_interval_ms": 50,
    "clock_drift_ms": 100,
    "log_level": "info",
    "listen_client_native": "127.0.0.1:0",  # a free port (the default is client port + 200)
}
CLI = [sys.executable, "-c", "from dengine.cli import main; main()"]


class ServerControl:
    """Signals and stops of a server process `self.process` (a dengine node, an etcd
    member): what fault runs do to it."""

    process: subprocess.Popen[bytes] | None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        """kill -9."""
        self.signal(signal.SIGKILL)
        assert self.process is not None
        self.process.wait(10)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit code."""
        proc = self.process
        if proc is None:
            return 0
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return int(proc.returncode)


@dataclass
class Node(ServerControl):
    """One server process (re-startable on the same data dir and ports)."""

    node_id: int
    client: str
    peer: str
    workdir: Path
    peers: dict[int, str]
    settings: dict[str, Any] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def data_dir(self) -> Path:
        return self.workdir / f"node{self.node_id}"

    @property
    def log_file(self) -> Path:
        return self.workdir / f"node{self.node_id}.log"

    def start(self) -> None:
        config = self.workdir / f"node{self.node_id}.toml"
        settings = {**TEST_SETTINGS, **self.settings, "data_dir": str(self.data_dir),
                    "node_id": self.node_id, "listen_client": self.client,
                    "listen_peer": self.peer}
        config.write_text(config_toml(settings, self.peers))
        self.starts += 1
        with open(self.log_file, "ab") as log:
            log.write(f"---- start {self.starts} ----\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                die_with_parent([*CLI, "serve", "--config", str(config)]),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Cluster:
    """n nodes on free ports under one work dir."""

    def __init__(self, workdir: Path, n: int, **settings: Any) -> None:
        ports = free_ports(2 * n)
        clients = [f"127.0.0.1:{p}" for p in ports[:n]]
        peers = {i + 1: f"127.0.0.1:{p}" for i, p in enumerate(ports[n:])}
        self.nodes = [
            Node(i + 1, clients[i], peers[i + 1], workdir,
                 {j: a for j, a in peers.items() if j != i + 1}, dict(settings))
            for i in range(n)
        ]
        self.workdir = workdir
        self.client_options: dict[str, Any] = {}  # e.g. TLS: cacert, cert, key

    @property
    def endpoints(self) -> list[str]:
        return [n.client for n in self.nodes]

    def node(self, node_id: int) -> Node:
        return next(n for n in self.nodes if n.node_id == node_id)

    def add_joiner(self, join: list[str] | None = None, **settings: Any) -> Node:
        """A new node (next free id, fresh ports and data dir) that starts with `--join`."""
        client_port, peer_port = free_ports(2)
        node_id = max(n.node_id for n in self.nodes) + 1
        base = dict(self.nodes[0].settings)
        base.update(settings)
        base["join"] = ",".join(join or self.endpoints)
        node = Node(node_id, f"127.0.0.1:{client_port}", f"127.0.0.1:{peer_port}",
                    self.workdir, {}, base)
        self.nodes.append(node)
        return node

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def client(self, timeout: float = 10.0, endpoints: list[str] | None = None) -> Client:
        return Client(endpoints or self.endpoints, timeout=timeout, **self.client_options)

    async def wait_leader(self, timeout: float = 20.0,
                          exclude: set[int] | None = None) -> NodeStatus:
        """Status of the leader once the live nodes agree on one (not in `exclude`)."""
        deadline = time.monotonic() + timeout
        last: object = None
        async with self.client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                for node in self.nodes:
                    if not node.alive:
                        continue
                    try:
                        st = await client.status(node.client, timeout=1.0)
                    except DengineError as e:
                        last = e
                        continue
                    last = st
                    if st.role == "leader" and st.node_id not in (exclude or set()):
                        return st
                await asyncio.sleep(0.05)
        raise AssertionError(f"no leader within {timeout}s (last: {last})\n{self.logs()}")

    async def wait_caught_up(self, node_id: int, index: int, timeout: float = 20.0) -> None:
        """Until node `node_id` has applied `index`."""
        deadline = time.monotonic() + timeout
        st: object = None
        async with self.client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                with contextlib.suppress(DengineError):
                    st = await client.status(self.node(node_id).client, timeout=1.0)
                    assert isinstance(st, NodeStatus)
                    if st.applied_index >= index:
                        return
                await asyncio.sleep(0.05)
        raise AssertionError(
            f"node {node_id} did not apply {index} in {timeout}s: {st}\n{self.logs()}"
        )

    async def wait_members(self, voters: set[int], learners: set[int] | None = None,
                           timeout: float = 30.0) -> None:
        """Until the leader's configuration is exactly these voters and learners."""
        deadline = time.monotonic() + timeout
        last: object = None
        async with self.client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                try:
                    members = await client.members(timeout=2.0)
                except DengineError as e:
                    last = e
                else:
                    last = members
                    have_voters = {m.id for m in members if m.role == "voter"}
                    have_learners = {m.id for m in members if m.role == "learner"}
                    if (have_voters, have_learners) == (voters, learners or set()):
                        return
                await asyncio.sleep(0.1)
        raise AssertionError(f"membership not voters={voters} learners={learners or set()} "
                             f"within {timeout}s (last: {last})\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"== node {n.node_id} ==\n{n.log_tail()}" for n in self.nodes)


async def wait_compacted(cluster: Cluster, node_id: int, timeout: float = 60.0) -> int:
    """Until node `node_id` has compacted its log (first index > 1); returns that index."""
    deadline = time.monotonic() + timeout
    async with cluster.client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            st = await client.status(cluster.node(node_id).client)
            if st.first_log_index > 1:
                return st.first_log_index
            await asyncio.sleep(0.1)
    raise AssertionError(f"node {node_id} never compacted its log\n{cluster.logs()}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


async def load_keys(client: Client, keys: list[str], value: str = "v",
                    batch: int = 1000, concurrency: int = 4) -> None:
    """Put every key (value: `value` + key) in batches of `batch` commands, `concurrency`
    batches in flight."""
    queue = [keys[i:i + batch] for i in range(0, len(keys), batch)]

    async def worker() -> None:
        while queue:
            chunk = queue.pop()
            await client.write([insert(k, value + k) for k in chunk])

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def read_all_eventual(endpoint: str, keys: list[str], chunk: int = 2000
                            ) -> list[bytes | None]:
    """Every key's value on one node (no leader involved), in order."""
    out: list[bytes | None] = []
    async with Client([endpoint], timeout=30) as c:
        for i in range(0, len(keys), chunk):
            out += await c.get_many(keys[i:i + chunk], "eventual")
    return out


def dir_size(path: Path) -> int:
    """Bytes of every file under `path` (files that vanish while walking are skipped)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_size
    return total

"""Throw-away local clusters for benchmarks, on free 127.0.0.1 ports in a temp dir.

`LocalCluster(3)` runs three `dengine serve` subprocesses; `LocalCluster(3, embedded=True)`
runs node 1 in this process (an `Engine` the benchmark drives directly) and the others as
subprocesses. The in-process node gets the shortest election timeout (the followers' is 6x
longer) and starts first, so it is the one that wins the first election. `stop()` (also
on Ctrl-C or SIGTERM, through `async with`) ends every process and removes the temp dir.
The subprocesses are `dengine.server.supervisor.ServerProcess`es: they stop when this
process dies, however it dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import socket
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from dengine.errors import DengineError, Unavailable
from dengine.server.supervisor import ServerProcess, config_toml, stop_all

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


# Ports handed out by `free_ports` come from below the kernel's ephemeral range
# (net.ipv4.ip_local_port_range, 32768+ by default): a port the OS picked with bind(0)
# could be taken, between a node's stop and its restart on the same port, as the local
# port of some outgoing connection ("address already in use" at the restart). Native
# ports are the client port + 200, still below the range.
_PORT_RANGE = (15000, 32000)
_next_port: list[int] = []  # this process walks the range from a random start


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports of 127.0.0.1, free right now, outside the ephemeral range
    (each process walks its own sequence, so a port is not handed out twice soon)."""
    low, high = _PORT_RANGE[0], min(_PORT_RANGE[1], _ephemeral_low() - 201)
    if not _next_port:
        _next_port.append(random.randrange(low, high))
    ports: list[int] = []
    for _ in range(high - low):
        port = _next_port[0]
        _next_port[0] = low if port + 1 >= high else port + 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            return ports
    raise DengineError(f"no {n} free ports between {low} and {high} on 127.0.0.1")


def _any_port(address: str) -> str:
    """`address`'s host, port 0 (a free port, chosen at each start)."""
    return address.rpartition(":")[0] + ":0"


def free_port_run(n: int) -> int:
    """A base port such that base .. base+n-1 are free right now (`cluster up` takes
    consecutive ports)."""
    for _ in range(200):
        base = free_ports(1)[0]
        if base + n >= 65536:
            continue
        socks: list[socket.socket] = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no run of free ports found")


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
        tls: bool = False,
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
        # TLS everywhere: client ports with client certificates required, mutual TLS on
        # the peer links, certificates made for the run (`dengine certs make`)
        self.tls = tls
        self.client_tls: dict[str, str] = {}  # the client's cacert, cert, key

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
            if self.tls:
                self._make_certificates()
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
                settings.update(data_dir=str(self.workdir / f"node{n}"), node_id=n,
                                listen_client=self.client_addresses[n],
                                listen_peer=self.peer_addresses[n],
                                listen_client_native=_any_port(self.client_addresses[n]),
                                **self._tls_settings(n))
                proc = ServerProcess(n, self.workdir / f"node{n}.toml",
                                     self.workdir / f"node{n}.log")
                proc.config_file.write_text(config_toml(
                    settings, {i: a for i, a in self.peer_addresses.items() if i != n}))
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
            **settings, **self._tls_settings(1),
        )

    def _make_certificates(self) -> None:
        from dengine.certs import make

        assert self.workdir is not None
        certs = self.workdir / "certs"
        make(certs, nodes=[f"node{n}" for n in range(1, self.nodes + 1)], clients=["client"],
             hosts=["127.0.0.1", "localhost"])
        self.client_tls = {"cacert": str(certs / "ca.crt"),
                           "cert": str(certs / "client.crt"), "key": str(certs / "client.key")}

    def _tls_settings(self, n: int) -> dict[str, Any]:
        if not self.tls:
            return {}
        assert self.workdir is not None
        certs = self.workdir / "certs"
        node = {"cert_file": str(certs / f"node{n}.crt"), "key_file": str(certs / f"node{n}.key"),
                "trusted_ca_file": str(certs / "ca.crt")}
        return {**node, "client_cert_auth": True, **{f"peer_{k}": v for k, v in node.items()}}

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

        return Client(self.endpoints, **{**self.client_tls, **options})

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
        """Stop every node and remove the temp dir."""
        try:
            if self.engine is not None:
                engine, self.engine = self.engine, None
                with contextlib.suppress(Exception):
                    await engine.stop()
            await asyncio.to_thread(stop_all, list(self.processes.values()))
        finally:
            for p in self.processes.values():
                p.kill()  # only if still running (e.g. cancelled while stopping)
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None

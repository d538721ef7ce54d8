"""Fresh 3-node clusters for the etcd compatibility tests: real etcd 3.4 and dengine.

`EtcdCluster` runs Debian's `etcd` (3.4), `DengineCluster` runs three `dengine serve`
processes; both on free 127.0.0.1 ports under a work dir, both answer `etcdctl(...)`
(etcdctl 3.4, API v3, pointed at all members' client URLs). dengine serves etcd's API on
each node's gRPC client port (`listen_client`), next to its own service.

Every process started here stops in `stop()` (SIGTERM, then SIGKILL), and also when the
test process dies however it dies (etcd: PR_SET_PDEATHSIG set before exec; dengine: the
supervisor's own parent watch). Use them as context managers or from fixtures whose
finalizer calls `stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from dengine.bench.cluster import free_ports
from dengine.errors import DengineError
from dengine.server.supervisor import ServerProcess, config_toml, die_with_parent, stop_all

ETCD = shutil.which("etcd") or "etcd"
ETCDCTL = shutil.which("etcdctl") or "etcdctl"
START_TIMEOUT_S = 30.0
# etcdctl's own timeouts, the same for every cluster compared. Its dial timeout (default
# 2 s) also bounds the Authenticate of `--user`, which a wrong password tries on each
# member in turn (a linearizable read and a bcrypt each): 1.2-1.8 s at load 17-20 on the
# 2-core CI machine, and past 2 s "context deadline exceeded" where the other cluster said
# "authentication failed" (test_auth_differential's flake).
ETCDCTL_FLAGS = ("--dial-timeout=15s", "--command-timeout=15s")
# Per etcdctl call (beyond etcdctl's own timeouts); a hung client fails the test.
ETCDCTL_TIMEOUT_S = 40.0

# Raft timing of the dengine clusters: etcd's defaults (heartbeat 100 ms, election 1 s), as
# the etcd clusters they are compared with run; a shorter timeout let a loaded CI machine
# depose a leader mid-script ("etcdserver: no leader" where etcd answered).
DENGINE_SETTINGS: dict[str, Any] = {
    "tick_ms": 10,
    "election_timeout_ms": 1000,
    "heartbeat_interval_ms": 100,
    "log_level": "warning",
}


def etcd_available() -> bool:
    return shutil.which("etcd") is not None and shutil.which("etcdctl") is not None


@dataclass(frozen=True)
class Run:
    """What one etcdctl invocation did."""

    rc: int
    stdout: str
    stderr: str


def etcdctl(endpoints: list[str], args: list[str], stdin: str | None = None,
            timeout: float = ETCDCTL_TIMEOUT_S) -> Run:
    """`ETCDCTL_API=3 etcdctl --endpoints=... ARGS` with `stdin`; never raises on rc != 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    try:
        done = subprocess.run(
            [ETCDCTL, "--endpoints=" + ",".join(endpoints), *ETCDCTL_FLAGS, *args],
            input=stdin if stdin is not None else "", capture_output=True, text=True,
            env=env, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired as e:
        return Run(-1, _text(e.stdout), _text(e.stderr) + f"\n[timed out after {timeout}s]")
    return Run(done.returncode, done.stdout, done.stderr)


class BackgroundEtcdctl:
    """`etcdctl ARGS` running until it ends or `stop()` (SIGTERM; SIGKILL if it lingers),
    which returns what it did (a live `etcdctl watch`, a lock holder). What it prints is
    read as it comes, so that a test can wait for its output (`wait_lines`)."""

    def __init__(self, endpoints: list[str], args: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
        env["ETCDCTL_API"] = "3"
        self._proc = subprocess.Popen(
            [ETCDCTL, "--endpoints=" + ",".join(endpoints), *ETCDCTL_FLAGS, *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env)
        self._out: list[str] = []
        self._err: list[str] = []
        self._printed = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(pipe, buf), daemon=True)
                         for pipe, buf in ((self._proc.stdout, self._out),
                                           (self._proc.stderr, self._err))]
        for reader in self._readers:
            reader.start()

    def _read(self, pipe: IO[str] | None, buf: list[str]) -> None:
        assert pipe is not None
        for line in pipe:
            with self._printed:
                buf.append(line)
                self._printed.notify_all()
        with self._printed:
            self._printed.notify_all()

    def wait_lines(self, n: int, timeout: float) -> bool:
        """Until it has printed `n` lines on stdout (True) or ended or `timeout` passed."""
        deadline = time.monotonic() + timeout
        with self._printed:
            while len(self._out) < n and self._proc.poll() is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._printed.wait(min(left, 0.1))
            return len(self._out) >= n

    def wait_exit(self, timeout: float) -> bool:
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self) -> Run:
        proc = self._proc
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for reader in self._readers:
            reader.join()
        return Run(proc.returncode, "".join(self._out), "".join(self._err))


def _text(b: bytes | str | None) -> str:
    if b is None:
        return ""
    return b if isinstance(b, str) else b.decode(errors="replace")


class _Cluster:
    kind = ""

    def __init__(self, workdir: Path, n: int = 3) -> None:
        self.workdir = workdir
        self.n = n
        ports = free_ports(2 * n)
        self.endpoints = [f"127.0.0.1:{p}" for p in ports[:n]]
        self.peer_addrs = [f"127.0.0.1:{p}" for p in ports[n:]]

    def etcdctl(self, args: list[str], stdin: str | None = None,
                endpoints: list[str] | None = None, timeout: float = ETCDCTL_TIMEOUT_S) -> Run:
        return etcdctl(endpoints or self.endpoints, args, stdin, timeout)

    def start(self) -> None:
        self.spawn()
        self.wait_ready()

    def spawn(self) -> None:
        """Start the processes (from the main thread: see dengine.server.supervisor)."""
        raise NotImplementedError

    def wait_ready(self) -> None:
        """Until the cluster serves requests (may run in another thread)."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def logs(self, lines: int = 20) -> str:
        out = []
        for log in sorted(self.workdir.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(out)

    def __enter__(self) -> _Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class EtcdCluster(_Cluster):
    """n members of Debian's etcd 3.4, a new cluster (revision 1) at every start."""

    kind = "etcd"

    def __init__(self, workdir: Path, n: int = 3, token: str = "dengine-etcdtest") -> None:
        super().__init__(workdir, n)
        self.token = token
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        initial = ",".join(f"n{i}=http://{p}" for i, p in enumerate(self.peer_addrs))
        for i in range(self.n):
            with open(self.workdir / f"etcd{i}.log", "wb") as log:
                self.procs.append(subprocess.Popen(
                    die_with_parent([
                     ETCD, "--name", f"n{i}", "--data-dir", str(self.workdir / f"n{i}.etcd"),
                     "--listen-client-urls", f"http://{self.endpoints[i]}",
                     "--advertise-client-urls", f"http://{self.endpoints[i]}",
                     "--listen-peer-urls", f"http://{self.peer_addrs[i]}",
                     "--initial-advertise-peer-urls", f"http://{self.peer_addrs[i]}",
                     "--initial-cluster", initial, "--initial-cluster-state", "new",
                     "--initial-cluster-token", self.token,
                     # No metrics/pprof listeners beyond the client and peer ports.
                     "--log-level", "warn"]),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                ))

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Until every member commits a proposal (`etcdctl endpoint health`)."""
        deadline = time.monotonic() + timeout
        last = Run(0, "", "")
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"etcd exited with code {proc.returncode}\n"
                                       f"{self.logs()}")
            last = etcdctl(self.endpoints, ["endpoint", "health", "--dial-timeout=2s",
                                            "--command-timeout=2s"],
                           timeout=10)
            if last.rc == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"etcd not healthy within {timeout}s: {last}\n{self.logs()}")

    def stop(self) -> None:
        """SIGKILL: the data is thrown away, and a SIGTERMed etcd member first tries to
        hand its leadership over (~7 s for a 3-member cluster stopping at once)."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for proc in self.procs:
            proc.wait()
        self.procs.clear()


class DengineCluster(_Cluster):
    """n `dengine serve` processes, a new cluster at every start; etcdctl talks to their
    gRPC client ports."""

    kind = "dengine"

    def __init__(self, workdir: Path, n: int = 3, **settings: Any) -> None:
        super().__init__(workdir, n)
        self.settings = {**DENGINE_SETTINGS, **settings}
        self.children: list[ServerProcess] = []

    def spawn(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        peers = {i + 1: a for i, a in enumerate(self.peer_addrs)}
        for i in range(self.n):
            node_id = i + 1
            child = ServerProcess(node_id, self.workdir / f"node{node_id}.toml",
                                  self.workdir / f"node{node_id}.log")
            settings = {**self.settings, "data_dir": str(self.workdir / f"node{node_id}"),
                        "node_id": node_id, "listen_client": self.endpoints[i],
                        "listen_peer": self.peer_addrs[i], "listen_client_native": "127.0.0.1:0",
                        "initial_cluster_token": str(self.workdir)}
            child.config_file.write_text(config_toml(
                settings, {j: a for j, a in peers.items() if j != node_id}))
            self.children.append(child)
            child.start()

    def wait_ready(self) -> None:
        asyncio.run(self.wait_leader())
        self.wait_etcd_health()

    def wait_etcd_health(self, timeout: float = START_TIMEOUT_S) -> None:
        """Until every member passes `etcdctl endpoint health`, as the etcd clusters do
        (a follower may not know the leader yet); at once if the etcd API is not served."""
        deadline = time.monotonic() + timeout
        last = Run(0, "", "")
        while time.monotonic() < deadline:
            last = etcdctl(self.endpoints, ["endpoint", "health", "--dial-timeout=2s",
                                            "--command-timeout=2s"],
                           timeout=10)
            if last.rc == 0 or "Unimplemented" in last.stderr:
                return
            time.sleep(0.1)
        raise RuntimeError(f"dengine not healthy within {timeout}s: {last}\n{self.logs()}")

    async def wait_leader(self, timeout: float = START_TIMEOUT_S) -> None:
        """Until the nodes agree on a leader (dengine's own API: it answers before the
        etcd API exists)."""
        from dengine.client import Client

        deadline = time.monotonic() + timeout
        last: object = None
        async with Client(self.endpoints, timeout=2.0) as client:
            while time.monotonic() < deadline:
                for child in self.children:
                    if not child.alive:
                        raise RuntimeError(f"dengine node {child.node_id} exited\n"
                                           f"{self.logs()}")
                try:
                    await client.leader(timeout=1.0)
                    return
                except DengineError as e:
                    last = e
                await asyncio.sleep(0.05)
        raise RuntimeError(f"no dengine leader within {timeout}s ({last})\n{self.logs()}")

    def stop(self) -> None:
        stop_all(self.children)
        self.children.clear()


def start_all(clusters: list[_Cluster], optional: tuple[_Cluster, ...] = ()
              ) -> dict[str, str]:
    """Start the clusters side by side (their elections overlap). If a required one fails
    to start, every one is stopped and the error raised; an `optional` one that fails is
    stopped and its error returned ({workdir name: error}), the others keep running (so
    that dengine failing to start fails dengine's tests, not the harness's own)."""
    failed: dict[str, str] = {}
    try:
        for c in clusters:
            c.spawn()
        with ThreadPoolExecutor(len(clusters)) as pool:
            futures = [(c, pool.submit(c.wait_ready)) for c in clusters]
            for c, f in futures:
                try:
                    f.result()
                except Exception as e:
                    if c not in optional:
                        raise
                    c.stop()
                    failed[c.workdir.name] = f"{c.kind} did not start: {e}"
    except BaseException:
        stop_all_clusters(clusters)
        raise
    return failed


def stop_all_clusters(clusters: list[_Cluster]) -> None:
    """Stop every one, even if stopping one of them fails."""
    errors = []
    for c in clusters:
        try:
            c.stop()
        except Exception as e:  # the others still get stopped
            errors.append(e)
    if errors:
        raise errors[0]

"""TLS everywhere (issue 18 item 1) with real `dengine serve` processes: a 3-node cluster
with mutual TLS on its peer links and TLS + client certificates on its client ports,
certificates made by `dengine certs make`. The CLI, the Python client, etcdctl 3.4 and
etcd's Python clients work with the right certificates and fail clearly (no traceback, at
once) without them; certificates reload on SIGHUP without a restart."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from e2e_support import CLI, Cluster

from dengine.client import Client, SyncClient
from dengine.errors import DengineError
from dengine.tls import TlsError

ETCDCTL = shutil.which("etcdctl")


def _tls_cluster(cluster_factory: Any, certs: Any, n: int = 3) -> Cluster:
    cluster: Cluster = cluster_factory(n, start=False, client_cert_auth=True)
    for node in cluster.nodes:
        name = f"node{node.node_id}"
        node.settings.update(certs.node(name))
        node.settings.update(certs.peer(name))
    cluster.client_options = certs.client()
    cluster.start()
    return cluster


def _cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _tls_flags(certs: Any, **override: str) -> list[str]:
    given = {**certs.client(), **override}
    return [x for k, v in given.items() if v for x in (f"--{k}", v)]


def _etcdctl(cluster: Cluster, certs: Any, *args: str, tls: bool = True,
             only: str = "") -> subprocess.CompletedProcess[str]:
    """etcdctl against the cluster's endpoints (`only`: that one alone)."""
    assert ETCDCTL is not None
    c = certs.client()
    flags = ["--cacert", c["cacert"], "--cert", c["cert"], "--key", c["key"]] if tls else []
    endpoints = ",".join(f"https://{e}" for e in ([only] if only else cluster.endpoints))
    return subprocess.run([ETCDCTL, *flags, "--endpoints", endpoints,
                           "--dial-timeout", "3s", "--command-timeout", "5s", *args],
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, "ETCDCTL_API": "3"})


@pytest.mark.frontends
def test_tls_cluster_serves_the_cli_the_python_clients_and_etcdctl(
    cluster_factory: Any, certs: Any,
) -> None:
    cluster = _tls_cluster(cluster_factory, certs)
    leader = asyncio.run(cluster.wait_leader())
    follower = next(n for n in cluster.nodes if n.node_id != leader.node_id)

    async def python_client() -> None:
        for transport in ("auto", "grpc"):
            async with Client(cluster.endpoints, transport=transport, timeout=10,
                              **certs.client()) as client:
                await client.put(f"py-{transport}", "v")
                assert await client.get(f"py-{transport}") == b"v"
                # a follower answers (eventual read), over TLS too
                st = await client.status(follower.client)
                assert st.node_id == follower.node_id
        # the native listener is TLS as well: used by default, and forced here (a
        # follower's first: it redirects to the leader's)
        async with Client([follower.client], transport="native", timeout=10,
                          **certs.client()) as client:
            assert await client.get("py-auto") == b"v"

    asyncio.run(python_client())
    with SyncClient(cluster.endpoints, timeout=10, **certs.client()) as sync:
        sync.put("sync", "1")
        assert sync.get("sync") == b"1"

    # the CLI, etcdctl's flag names
    out = _cli("put", "cli", "hello", "--endpoints", follower.client, *_tls_flags(certs))
    assert out.returncode == 0, out.stderr
    out = _cli("get", "cli", "--endpoints", ",".join(cluster.endpoints), *_tls_flags(certs))
    assert out.returncode == 0 and out.stdout.split() == ["cli", "hello"], out

    # without the right certificates: a clear error at once, never a traceback
    cases = {
        "no TLS": ([], "may require TLS"),
        "no client certificate": (["--cacert", certs.client()["cacert"]],
                                  "client certificate"),
        "another CA": (_tls_flags(certs, cacert=certs.client(other=True)["cacert"]),
                       "not signed by a trusted CA"),
        "a client certificate of another CA": (
            _tls_flags(certs, cert=certs.client(other=True)["cert"],
                       key=certs.client(other=True)["key"]), "client certificate"),
    }
    for name, (flags, message) in cases.items():
        started = time.monotonic()
        out = _cli("get", "cli", "--endpoints", ",".join(cluster.endpoints), *flags)
        assert out.returncode == 1, (name, out)
        assert "error [TLS]" in out.stderr and message in out.stderr, (name, out.stderr)
        assert "Traceback" not in out.stderr + out.stdout, (name, out.stderr)
        assert len(out.stderr.splitlines()) == 1, (name, out.stderr)  # no gRPC core lines
        assert time.monotonic() - started < 4.5, name  # not the whole 5 s deadline
    out = _cli("get", "cli", "--endpoints", cluster.endpoints[0], "--cert",
               certs.client()["cert"])
    assert out.returncode == 1 and "needs both --cert and --key" in out.stderr, out

    if ETCDCTL is not None:
        # a write to a follower is forwarded to the leader over TLS (its certificate as
        # client certificate)
        out = _etcdctl(cluster, certs, "put", "etcdctl", "v1")
        assert out.returncode == 0 and out.stdout.strip() == "OK", out
        for i, endpoint in enumerate(cluster.endpoints):  # the followers' over native TLS
            out = _etcdctl(cluster, certs, "put", f"member{i}", "v", only=endpoint)
            assert out.returncode == 0 and out.stdout.strip() == "OK", out
        out = _etcdctl(cluster, certs, "get", "cli", "-w", "json")
        assert out.returncode == 0, out
        kvs = json.loads(out.stdout)["kvs"]
        assert [(k["key"], k["value"]) for k in kvs] == [("Y2xp", "aGVsbG8=")]  # base64
        out = _etcdctl(cluster, certs, "endpoint", "status", "--cluster", "-w", "json")
        assert out.returncode == 0, out
        urls = sorted(s["Endpoint"] for s in json.loads(out.stdout))
        assert urls == sorted(f"https://{e}" for e in cluster.endpoints)
        # etcd's Lock service runs through a client of the node itself: over TLS too
        # (checked once the node serves etcd's Lease service, which etcdctl lock needs first)
        out = _etcdctl(cluster, certs, "lock", "tls-lock", "--", "echo", "locked")
        if "Unimplemented" not in out.stderr:
            assert out.returncode == 0 and "locked" in out.stdout, out
        out = _etcdctl(cluster, certs, "get", "cli", tls=False)
        assert out.returncode != 0, out

    # etcd's Python clients (one process each: they cannot share one)
    for library in ("etcd3", "aetcd"):
        out = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("etcd_tls_client.py")), library,
             follower.client, json.dumps(certs.client())],
            capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, (library, out.stdout, out.stderr)
        assert json.loads(out.stdout) == {"get": "hello", "put": "OK"}, out.stdout

    # the nodes said why they refused (gRPC's core logs a failed handshake itself, as
    # "Handshake failed"; the wire front end, the native listener and the peer links log
    # their own, "TLS handshake failed")
    if "GRPC_VERBOSITY" not in os.environ:
        assert "handshake failed" in cluster.logs().lower() or any(
            "handshake failed" in n.log_file.read_text().lower() for n in cluster.nodes)


def test_certificates_reload_on_sighup_without_a_restart(
    cluster_factory: Any, certs: Any, tmp_path: Path,
) -> None:
    """The node starts with a certificate for another host name: clients refuse it. Its
    files are replaced by a good certificate and the node gets SIGHUP: clients connect
    (gRPC and native), no restart."""
    from dengine.certs import make

    wrong = tmp_path / "wrong"
    shutil.copytree(certs.ca, wrong)  # the same CA, another host name
    make(wrong, nodes=["node1"], clients=[], hosts=["node.invalid"])
    live = tmp_path / "live"
    live.mkdir()
    for suffix in ("crt", "key"):
        shutil.copy(wrong / f"node1.{suffix}", live / f"node.{suffix}")
    cluster: Cluster = cluster_factory(
        1, start=False, cert_file=str(live / "node.crt"), key_file=str(live / "node.key"))
    node = cluster.nodes[0]
    cluster.client_options = {"cacert": certs.client()["cacert"]}
    cluster.start()
    cacert = certs.client()["cacert"]

    async def attempt(transport: str) -> str:
        try:
            async with Client(node.client, transport=transport, timeout=3,
                              cacert=cacert) as client:
                await client.put("k", transport)
                return "ok"
        except TlsError as e:
            return e.message
        except DengineError as e:
            return f"{e.code}: {e.message}"

    deadline = time.monotonic() + 20
    while "host name" not in (first := asyncio.run(attempt("grpc"))):
        assert time.monotonic() < deadline, first  # the node is still starting
        time.sleep(0.2)
    for suffix in ("crt", "key"):  # replaced whole, as certificate tools do
        shutil.copy(certs.ca / f"node1.{suffix}", live / f"tmp.{suffix}")
        (live / f"tmp.{suffix}").replace(live / f"node.{suffix}")
    node.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while (result := asyncio.run(attempt("grpc"))) != "ok":
        assert time.monotonic() < deadline, result
        time.sleep(0.2)
    assert asyncio.run(attempt("native")) == "ok"
    assert node.alive
    log = node.log_file.read_text()
    assert "SIGHUP" in log and "certificates reloaded" in log, node.log_tail()


def test_a_plaintext_cluster_refuses_tls_clients_clearly(cluster_factory: Any,
                                                         certs: Any) -> None:
    cluster = cluster_factory(1)
    asyncio.run(cluster.wait_leader())
    out = _cli("get", "k", "--endpoints", cluster.endpoints[0], "--cacert",
               certs.client()["cacert"])
    assert out.returncode == 1, out
    assert "does not speak TLS" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_dengine_endpoint_over_tls(cluster_factory: Any, certs: Any) -> None:
    """`dengine endpoint health|status` with the TLS flags (`--cluster`: the https client
    URLs of MemberList); without them every endpoint fails, clearly, exit status 1."""
    cluster = _tls_cluster(cluster_factory, certs)
    asyncio.run(cluster.wait_leader())
    endpoints = ",".join(cluster.endpoints)
    # Every member healthy (a linearizable read each) once the new cluster settled: a
    # member that has not yet heard the leader's first commit may still say no (CI).
    deadline = time.monotonic() + 20
    while True:
        out = _cli("endpoint", "health", "--endpoints", endpoints, "--json",
                   *_tls_flags(certs))
        if out.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert out.returncode == 0, out
    assert sorted(r["endpoint"] for r in json.loads(out.stdout) if r["health"]) == sorted(
        cluster.endpoints)
    out = _cli("endpoint", "status", "--endpoints", cluster.endpoints[0], "--cluster",
               "--json", *_tls_flags(certs))
    assert out.returncode == 0, out
    assert sorted(s["Endpoint"] for s in json.loads(out.stdout)) == sorted(
        f"https://{e}" for e in cluster.endpoints)
    out = _cli("endpoint", "health", "--endpoints", endpoints, "--json")
    assert out.returncode == 1 and "Error: unhealthy cluster" in out.stderr, out
    assert not any(r["health"] for r in json.loads(out.stdout))
    assert "Traceback" not in out.stderr + out.stdout

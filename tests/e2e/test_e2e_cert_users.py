"""Client certificates as users (etcd's --client-cert-auth with auth enabled): a request
without a token acts for the common name of its verified client certificate, on the
gRPC and the native client ports, on the leader and on a follower (which forwards the
request with the user in a field the leader takes from a member only). etcdctl with
--cert/--key and no --user gets the answers real etcd 3.4 gives with the same
certificates (docs/auth.md)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from e2e_support import CLI, Cluster

from dengine.bench.cluster import free_ports
from dengine.certs import make
from dengine.client import Client
from dengine.client.auth import AuthClient
from dengine.errors import KvError
from dengine.proto.etcd import rpc_pb2 as pb
from dengine.proto.etcd import v3lock_pb2
from dengine.proto.etcd.auth_pb2 import Permission
from dengine.tls import ClientTls

ETCD, ETCDCTL = shutil.which("etcd"), shutil.which("etcdctl")
USERS = ("root", "alice", "bob")  # client certificates; bob is no user

# (command, what it shows): run as alice (read /app/, readwrite /rw/) unless it says
SCRIPT = [
    ["get", "/app/a"], ["put", "/rw/x", "1"], ["get", "/rw/x"], ["put", "/app/a", "2"],
    ["get", "/other/b"], ["get", "/", "--prefix"], ["del", "/rw/x"],
    ["member", "add", "m", "--peer-urls=http://127.0.0.1:1"], ["user", "list"],
    ["user", "get", "alice"], ["role", "get", "r1"], ["lease", "grant", "100"],
    ["--user", "root:pw", "user", "list"], ["--user", "root:bad", "get", "/app/a"],
    ["as:bob", "get", "/app/a"], ["as:root", "get", "/other/b"], ["as:root", "user", "list"],
]


def _etcdctl(endpoint: str, ca: Path, user: str, args: list[str]
             ) -> subprocess.CompletedProcess[str]:
    assert ETCDCTL is not None
    flags = ["--cacert", str(ca / "ca.crt"), "--cert", str(ca / f"{user}.crt"),
             "--key", str(ca / f"{user}.key")]
    return subprocess.run([ETCDCTL, *flags, "--endpoints", f"https://{endpoint}",
                           "--dial-timeout", "3s", "--command-timeout", "10s", *args],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "ETCDCTL_API": "3"})


def _answers(endpoint: str, ca: Path) -> list[tuple[str, int, list[str]]]:
    """Each SCRIPT command's stdout (lease ids and headers aside), exit code and
    "Error:" lines."""
    out = []
    for args in SCRIPT:
        user = "alice"
        if args[0].startswith("as:"):
            user, args = args[0][3:], args[1:]
        run = _etcdctl(endpoint, ca, user, args)
        stdout = "lease granted\n" if run.stdout.startswith("lease ") else run.stdout
        out.append((stdout, run.returncode,
                    [x for x in run.stderr.splitlines() if x.startswith("Error:")]))
    return out


def _setup(endpoint: str, ca: Path) -> None:
    """root (by its certificate's name), alice with r1, auth enabled."""
    for args in (["user", "add", "root:pw"], ["role", "add", "r1"], ["user", "add", "alice:pa"],
                 ["user", "grant-role", "alice", "r1"],
                 ["role", "grant-permission", "r1", "read", "/app/", "--prefix"],
                 ["role", "grant-permission", "r1", "readwrite", "/rw/", "--prefix"],
                 ["put", "/app/a", "1"], ["put", "/other/b", "2"], ["auth", "enable"]):
        done = _etcdctl(endpoint, ca, "root", args)
        assert done.returncode == 0, (args, done)


class _Etcd:
    """One etcd 3.4 member with TLS and --client-cert-auth."""

    def __init__(self, ca: Path, workdir: Path) -> None:
        assert ETCD is not None
        client, peer = free_ports(2)
        self.endpoint = f"127.0.0.1:{client}"
        self._log = open(workdir / "etcd.log", "wb")  # noqa: SIM115 (closed in stop)
        self._proc = subprocess.Popen(
            [ETCD, "--name", "e1", "--data-dir", str(workdir / "etcd"),
             "--listen-client-urls", f"https://{self.endpoint}",
             "--advertise-client-urls", f"https://{self.endpoint}",
             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", f"e1=http://127.0.0.1:{peer}",
             "--cert-file", str(ca / "node1.crt"), "--key-file", str(ca / "node1.key"),
             "--trusted-ca-file", str(ca / "ca.crt"), "--client-cert-auth"],
            stdout=self._log, stderr=subprocess.STDOUT)
        for _ in range(100):
            if _etcdctl(self.endpoint, ca, "root", ["endpoint", "health"]).returncode == 0:
                return
            time.sleep(0.2)
        self.stop()
        raise AssertionError("etcd did not start")

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=15)
        self._log.close()


@pytest.fixture
def user_certs(certs: Any) -> Path:
    """The test CA with client certificates named root, alice and bob."""
    make(certs.ca, nodes=[], clients=list(USERS), hosts=["127.0.0.1", "localhost"])
    return Path(certs.ca)


def _tls_cluster(cluster_factory: Any, certs: Any) -> Cluster:
    cluster: Cluster = cluster_factory(3, start=False, client_cert_auth=True)
    for node in cluster.nodes:
        node.settings.update(certs.node(f"node{node.node_id}"))
        node.settings.update(certs.peer(f"node{node.node_id}"))
    cluster.client_options = certs.client()
    cluster.start()
    return cluster


@pytest.mark.skipif(ETCD is None or ETCDCTL is None, reason="etcd/etcdctl not installed")
def test_certificate_users_answer_as_etcd(cluster_factory: Any, certs: Any,
                                          user_certs: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        etcd = _Etcd(user_certs, Path(tmp))
        try:
            _setup(etcd.endpoint, user_certs)
            expected = _answers(etcd.endpoint, user_certs)
        finally:
            etcd.stop()
    assert expected[0][1] == 0 and expected[3][2] == ["Error: etcdserver: permission denied"]

    cluster = _tls_cluster(cluster_factory, certs)
    leader = cluster.node(asyncio.run(cluster.wait_leader()).node_id)
    follower = next(n for n in cluster.nodes if n.node_id != leader.node_id)
    _setup(leader.client, user_certs)
    for node in (follower, leader):  # a follower forwards alice's writes as alice's
        got = _answers(node.client, user_certs)
        for args, ours, theirs in zip(SCRIPT, got, expected, strict=True):
            assert ours == theirs, (node.node_id, args, ours, theirs)


def test_certificate_users_native_cli_and_forged_users(cluster_factory: Any, certs: Any,
                                                       user_certs: Path) -> None:
    cluster = _tls_cluster(cluster_factory, certs)
    leader = cluster.node(asyncio.run(cluster.wait_leader()).node_id)
    follower = next(n for n in cluster.nodes if n.node_id != leader.node_id)
    root = certs.client(name="root")
    alice = certs.client(name="alice")

    async def native() -> None:
        async with Client([leader.client], timeout=10, **root) as client:
            async with AuthClient([leader.client], timeout=10,
                                  tls=ClientTls(**root)) as auth:  # root by its certificate
                for method, req in (
                        ("UserAdd", pb.AuthUserAddRequest(name="root", password="pw")),
                        ("UserAdd", pb.AuthUserAddRequest(name="alice", password="pa")),
                        ("RoleAdd", pb.AuthRoleAddRequest(name="r1")),
                        ("UserGrantRole", pb.AuthUserGrantRoleRequest(user="root",
                                                                      role="root")),
                        ("UserGrantRole", pb.AuthUserGrantRoleRequest(user="alice",
                                                                      role="r1")),
                        ("RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(
                            name="r1", perm=Permission(
                                permType=Permission.READWRITE, key=b"/rw/",
                                range_end=b"/rw0"))),
                        ("AuthEnable", pb.AuthEnableRequest())):
                    await auth.call(method, req)
            await client.put("/other/b", "2")  # root, by its certificate
        for transport in ("native", "grpc"):
            async with Client([follower.client], transport=transport, timeout=10,
                              **alice) as client:
                await client.put(f"/rw/{transport}", "1")
                assert await client.get(f"/rw/{transport}") == b"1"
                with pytest.raises(KvError, match=r"^etcdserver: permission denied$"):
                    await client.get("/other/b")
                with pytest.raises(KvError, match=r"^etcdserver: permission denied$"):
                    await client.put("/other/b", "3")

    asyncio.run(native())

    flags = [x for k, v in alice.items() for x in (f"--{k}", v)]
    done = subprocess.run([*CLI, "put", "/other/c", "1", "--endpoints", follower.client,
                           *flags], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (1, "Error: etcdserver: permission denied\n")
    done = subprocess.run([*CLI, "put", "/rw/cli", "1", "--endpoints", follower.client,
                           *flags], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done

    read = [Path(alice[k]).read_bytes() for k in ("cacert", "key", "cert")]
    # etcd's lock service acts for the certificate's user too
    with grpc.secure_channel(follower.client, grpc.ssl_channel_credentials(*read)) as ch:
        grant = ch.unary_unary("/etcdserverpb.Lease/LeaseGrant",
                               request_serializer=pb.LeaseGrantRequest.SerializeToString,
                               response_deserializer=pb.LeaseGrantResponse.FromString)
        lock = ch.unary_unary("/v3lockpb.Lock/Lock",
                              request_serializer=v3lock_pb2.LockRequest.SerializeToString,
                              response_deserializer=v3lock_pb2.LockResponse.FromString)
        lease = grant(pb.LeaseGrantRequest(TTL=60), timeout=10).ID
        held = lock(v3lock_pb2.LockRequest(name=b"/rw/lk", lease=lease), timeout=20)
        assert held.key.startswith(b"/rw/lk/"), held
        with pytest.raises(grpc.RpcError) as e:
            lock(v3lock_pb2.LockRequest(name=b"/other/lk", lease=lease), timeout=20)
        assert e.value.details() == "etcdserver: permission denied"

    # A client naming another user as a follower would (its certificate is no node's):
    # refused, on the leader and on a follower.
    for node in (leader, follower):
        with grpc.secure_channel(node.client, grpc.ssl_channel_credentials(*read)) as ch:
            put = ch.unary_unary("/etcdserverpb.KV/Put",
                                 request_serializer=pb.PutRequest.SerializeToString,
                                 response_deserializer=pb.PutResponse.FromString)
            for metadata in ((("dengine-user", "root"),),
                             (("dengine-user", "root"), ("dengine-forwarded", "1"))):
                with pytest.raises(grpc.RpcError) as e:
                    put(pb.PutRequest(key=b"/other/b", value=b"x"), metadata=metadata,
                        timeout=10)
                assert e.value.details() == "etcdserver: permission denied", metadata

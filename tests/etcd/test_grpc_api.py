"""etcdctl 3.4 against a `dengine cluster up` of 3 nodes (issue 16): put/get/del, txn,
compaction and a read below it, endpoint status/health (also `--cluster`, which goes
through MemberList's client URLs), member list, writes sent to a follower, endpoint
hashkv and move-leader."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from dengine.bench.cluster import free_port_run
from dengine.proto.etcd import rpc_pb2
from dengine.server.supervisor import die_with_parent

ETCDCTL = shutil.which("etcdctl")
pytestmark = [pytest.mark.skipif(ETCDCTL is None, reason="etcdctl not installed (etcd-client)"),
              pytest.mark.frontends]
CLI = [sys.executable, "-c", "from dengine.cli import main; main()"]


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """A 3-node `dengine cluster up`, ready: its client endpoints (node 1 first)."""
    base = tmp_path_factory.mktemp("etcdctl")
    bases: list[int] = []
    while len(bases) < 3:  # client, peer and native ports: three runs of 3, apart
        base_port = free_port_run(3)
        if all(abs(base_port - b) >= 3 for b in bases):
            bases.append(base_port)
    client_base, peer_base, native_base = bases
    proc = subprocess.Popen(
        die_with_parent([*CLI, "cluster", "up", "--nodes", "3", "--base-dir", str(base / "c"),
                         "--client-port", str(client_base), "--peer-port", str(peer_base),
                         "--native-port", str(native_base)]),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("ready:"):
                break
        assert any(line.startswith("ready:") for line in lines), "".join(lines)
        yield [f"127.0.0.1:{client_base + i}" for i in range(3)]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def etcdctl(endpoint: str | list[str], *args: str, stdin: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    eps = endpoint if isinstance(endpoint, list) else [endpoint]
    out = subprocess.run(
        [ETCDCTL or "etcdctl", "--endpoints", ",".join(f"http://{e}" for e in eps),
         "--command-timeout", "10s", *args],
        input=stdin, capture_output=True, text=True, timeout=60,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    if check:
        assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out


def as_json(endpoint: str | list[str], *args: str) -> Any:
    return json.loads(etcdctl(endpoint, *args, "-w", "json").stdout)


def leader_and_followers(endpoints: list[str]) -> tuple[str, list[str]]:
    """The leader's endpoint and the others', once the first member knows a leader (on a
    loaded machine it may be between two leaders when asked: `leader` is then absent)."""
    deadline = time.monotonic() + 30
    while True:
        status = as_json(endpoints, "endpoint", "status")
        leader_id = status[0]["Status"].get("leader", 0)
        if leader_id or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    by_id = {s["Status"]["header"]["member_id"]: s["Endpoint"].removeprefix("http://")
             for s in status}
    leader = by_id[leader_id]
    return leader, [e for e in endpoints if e != leader]


def test_put_get_del_txn_on_every_member(endpoints: list[str]) -> None:
    leader, followers = leader_and_followers(endpoints)
    for i, ep in enumerate([leader, *followers]):
        assert etcdctl(ep, "put", f"/t/k{i}", f"v{i}").stdout == "OK\n"
    for ep in endpoints:
        got = etcdctl(ep, "get", "/t/", "--prefix").stdout
        assert got == "/t/k0\nv0\n/t/k1\nv1\n/t/k2\nv2\n"
        assert etcdctl(ep, "get", "/t/k1", "--consistency", "s").stdout == "/t/k1\nv1\n"
    follower = followers[0]
    prev = etcdctl(follower, "put", "/t/k0", "new", "--prev-kv").stdout
    assert prev == "OK\n/t/k0\nv0\n"
    kv = as_json(follower, "get", "/t/k0")["kvs"][0]
    assert kv["version"] == 2 and kv["mod_revision"] > kv["create_revision"]
    keys = etcdctl(follower, "get", "/t/", "--prefix", "--keys-only", "--limit", "2",
                   "--sort-by", "KEY", "--order", "DESCEND").stdout.split()
    assert keys == ["/t/k2", "/t/k1"]
    txn = "value(\"/t/k0\") = \"new\"\n\nput /t/won yes\nget /t/k1\n\nput /t/lost yes\n\n"
    out = etcdctl(follower, "txn", stdin=txn).stdout
    assert out == "SUCCESS\n\nOK\n\n/t/k1\nv1\n"
    txn = "value(\"/t/k0\") = \"old\"\n\nput /t/won again\n\nput /t/lost yes\n\n"
    assert etcdctl(follower, "txn", stdin=txn).stdout == "FAILURE\n\nOK\n"
    assert etcdctl(follower, "del", "/t/", "--prefix").stdout == "5\n"  # k0-k2 won lost
    assert etcdctl(leader, "get", "/t/", "--prefix", "--count-only", "-w", "json",
                   check=False).returncode in (0, 1)  # no --count-only in etcdctl 3.4
    assert etcdctl(leader, "get", "/t/", "--prefix").stdout == ""


def test_compaction_and_reads_below_it(endpoints: list[str]) -> None:
    _, followers = leader_and_followers(endpoints)
    follower = followers[0]
    revs = [as_json(follower, "put", "/c/k", f"v{i}")["header"]["revision"] for i in range(4)]
    old = etcdctl(follower, "get", "/c/k", "--rev", str(revs[1])).stdout
    assert old == "/c/k\nv1\n"
    assert etcdctl(follower, "compaction", str(revs[2])).stdout == (
        f"compacted revision {revs[2]}\n")
    for ep in endpoints:
        for level in ("l", "s"):
            out = etcdctl(ep, "get", "/c/k", "--rev", str(revs[1]), "--consistency", level,
                          check=False)
            assert out.returncode != 0
            assert "etcdserver: mvcc: required revision has been compacted" in out.stderr
    again = etcdctl(follower, "compaction", str(revs[1]), check=False)
    assert "etcdserver: mvcc: required revision has been compacted" in again.stderr
    future = etcdctl(follower, "get", "/c/k", "--rev", str(revs[-1] + 100), check=False)
    assert "etcdserver: mvcc: required revision is a future revision" in future.stderr
    assert etcdctl(follower, "get", "/c/k", "--rev", str(revs[2])).stdout == "/c/k\nv2\n"


def test_endpoint_status_health_and_member_list(endpoints: list[str]) -> None:
    status = as_json(endpoints, "endpoint", "status")
    assert len(status) == 3
    leaders = {s["Status"]["leader"] for s in status}
    assert len(leaders) == 1
    for s in status:
        assert s["Status"]["version"] == "3.4.0"
        assert s["Status"]["raftTerm"] >= 1 and s["Status"]["dbSize"] > 0
    table = etcdctl(endpoints[0], "endpoint", "status", "--cluster").stdout
    for ep in endpoints:  # MemberList's client URLs are real: each member answered
        assert f"http://{ep}" in table
    health = etcdctl(endpoints, "endpoint", "health").stderr + etcdctl(
        endpoints, "endpoint", "health").stdout
    assert health.count("is healthy: successfully committed proposal") == 3
    members = as_json(endpoints[1], "member", "list")["members"]
    assert sorted(m["ID"] for m in members) == [1, 2, 3]
    assert sorted(m["clientURLs"][0] for m in members) == sorted(
        f"http://{ep}" for ep in endpoints)
    listed = etcdctl(endpoints[2], "member", "list").stdout
    assert re.search(r"started, node1, http://127\.0\.0\.1:\d+, http://", listed), listed


def test_hashkv_agrees_on_every_member(endpoints: list[str]) -> None:
    leader, _ = leader_and_followers(endpoints)
    etcdctl(leader, "put", "/hash/a", "1")
    etcdctl(leader, "txn", stdin="\nput /hash/b 2\nput /hash/c 3\n\n\n")
    revision = as_json(leader, "get", "/hash/a")["header"]["revision"]
    deadline = time.monotonic() + 10
    while True:  # until every member applied the txn
        answers = as_json(endpoints, "endpoint", "hashkv", "--rev", str(revision))
        if len({a["HashKV"]["hash"] for a in answers}) == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len({a["HashKV"]["hash"] for a in answers}) == 1, answers
    assert {a["HashKV"]["header"]["member_id"] for a in answers} == {1, 2, 3}


def test_move_leader_as_etcd(endpoints: list[str]) -> None:
    """Last in this module: it changes the leader."""
    leader, followers = leader_and_followers(endpoints)
    ids = {s["Endpoint"].removeprefix("http://"): s["Status"]["header"]["member_id"]
           for s in as_json(endpoints, "endpoint", "status")}
    target = ids[followers[0]]
    moved = etcdctl(endpoints, "move-leader", f"{target:x}")
    assert moved.stdout == f"Leadership transferred from {ids[leader]:x} to {target:x}\n"
    assert leader_and_followers(endpoints)[0] == followers[0]
    again = etcdctl(endpoints, "move-leader", f"{target:x}")  # to itself: done at once
    assert again.stdout == f"Leadership transferred from {target:x} to {target:x}\n"
    bad = etcdctl(endpoints, "move-leader", "1234", check=False)
    assert bad.returncode != 0 and "Error: etcdserver: bad leader transferee" in bad.stderr
    only = etcdctl(leader, "move-leader", f"{ids[leader]:x}", check=False)  # now a follower
    assert f"no leader endpoint given at [http://{leader}]" in only.stderr
    with grpc.insecure_channel(leader) as channel:  # a follower asked directly
        call = channel.unary_unary(
            "/etcdserverpb.Maintenance/MoveLeader",
            request_serializer=rpc_pb2.MoveLeaderRequest.SerializeToString,
            response_deserializer=rpc_pb2.MoveLeaderResponse.FromString)
        with pytest.raises(grpc.RpcError) as raised:
            call(rpc_pb2.MoveLeaderRequest(targetID=ids[leader]), timeout=10)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert raised.value.details() == "etcdserver: not leader"
    # dengine's own `move-leader`, back to the first leader: etcdctl's words
    ours = subprocess.run([*CLI, "move-leader", f"{ids[leader]:x}", "--endpoints",
                           ",".join(endpoints)], capture_output=True, text=True, timeout=60)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == f"Leadership transferred from {target:x} to {ids[leader]:x}\n"
    assert leader_and_followers(endpoints)[0] == leader
    bad = subprocess.run([*CLI, "move-leader", "1234", "--endpoints", ",".join(endpoints)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr == "Error: etcdserver: bad leader transferee\n"

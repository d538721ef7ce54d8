"""Membership through etcd's Cluster service: the same etcdctl 3.4 script (member list, add,
promote, update, remove, with their errors) against a real etcd 3.4 cluster and a dengine
cluster, compared after normalization; `endpoint health|status` and `alarm list|disarm`
likewise; then the e2e flow: `etcdctl member add` and the new node started with `dengine
serve --join`.

Normalization: member IDs (etcd's are hashes, dengine's node ids), names (n0.. / node1..)
and addresses become the role of the member they belong to (P0.. for the initial members
by position, N0.. for the peer URLs the script adds), and the order of members (etcd
sorts by ID).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from etcd_cluster import (
    DengineCluster,
    EtcdCluster,
    _Cluster,
    etcd_available,
    start_all,
    stop_all_clusters,
)

from dengine.bench.cluster import free_ports
from dengine.proto.etcd import rpc_pb2
from dengine.server.supervisor import ServerProcess, config_toml, stop_all

pytestmark = pytest.mark.skipif(
    not etcd_available(),
    reason="etcd/etcdctl not installed (apt-get install etcd-server etcd-client)")

ETCD_HEALTH_INTERVAL_S = 5.0
UNKNOWN = "ffff"  # a member ID neither cluster has

SCRIPT: list[str] = [
    "member list",
    "member add a --peer-urls={N0} --learner",
    "member list",
    "member list -w json",
    "sleep",  # etcd's new ID hashes the URLs and the second: the same URL again is
    "member add b --peer-urls={N0}",  # "Peer URLs already exists" a second later
    "member promote {id:N0}",
    "member promote {id:P1}",
    f"member promote {UNKNOWN}",
    f"member remove {UNKNOWN}",
    f"member update {UNKNOWN} --peer-urls={{N9}}",
    "member update {id:N0} --peer-urls={P1}",
    "member update {id:N0} --peer-urls={N1}",
    "member remove {id:N1}",
    "member list -w json",
    "member add c --peer-urls={N2}",
    "member list",
    "member add d --peer-urls={N3} --learner",
    "member remove {id:N2}",
    "member list -w table",
    "endpoint health",
    "alarm list",
    "alarm disarm",
    "endpoint status",
    "endpoint status -w json",
]


class Run:
    """The script on one cluster: its substitutions and normalized output."""

    def __init__(self, cluster: _Cluster, new_peers: list[int]) -> None:
        self.c = cluster
        self.urls = {f"P{i}": f"http://{a}" for i, a in enumerate(cluster.peer_addrs)}
        self.urls.update({f"N{i}": f"http://127.0.0.1:{p}" for i, p in enumerate(new_peers)})
        self.roles = {u: r for r, u in self.urls.items()}
        self.roles.update({f"http://{a}": f"EP{i}" for i, a in enumerate(cluster.endpoints)})
        self.names: dict[str, str] = {}  # member name -> role
        self.ids: dict[int, str] = {}  # member ID -> role

    def members(self) -> list[dict[str, Any]]:
        out = self.c.etcdctl(["member", "list", "-w", "json"])
        assert out.rc == 0, out
        members: list[dict[str, Any]] = json.loads(out.stdout)["members"]
        for m in members:
            role = self.roles[m["peerURLs"][0]]
            self.ids[int(m["ID"])] = role
            if m.get("name"):
                self.names[m["name"]] = role
        return members

    def command(self, template: str) -> list[str]:
        def sub(match: re.Match[str]) -> str:
            key = match.group(1)
            if key.startswith("id:"):
                url = self.urls[key[3:]]
                return next(f"{int(m['ID']):x}" for m in self.members()
                            if url in m["peerURLs"])
            return self.urls[key]
        return re.sub(r"\{([^}]+)\}", sub, template).split()

    def run(self) -> list[str]:
        self.members()
        out = []
        for step in SCRIPT:
            if step == "sleep":
                time.sleep(1.1)
                continue
            args = self.command(step)
            r = self.c.etcdctl(args)
            self.members()
            out.append(f"$ {step} -> rc {r.rc}")
            out.extend(self.normalize(step, r.stdout + r.stderr))
        return out

    def role(self, member_id: str, hex_id: bool = True) -> str:
        return self.ids.get(int(member_id, 16) if hex_id else int(member_id), "?")

    def normalize(self, step: str, text: str) -> list[str]:
        lines = [ln for ln in text.splitlines() if "retry_interceptor" not in ln]
        if "-w json" in step:
            return [json.dumps(self.json(json.loads("\n".join(lines))), sort_keys=True)]
        out = []
        for line in lines:
            line = self.line(line)
            out.append(line)
        if step.startswith(("member list", "endpoint")):
            out.sort()  # etcd lists by ID; endpoint health prints as members answer
        return out

    def line(self, line: str) -> str:
        if line.startswith("+-"):  # a table's border: its widths follow the IDs' and names'
            return "+-"
        if line.startswith("|") and ("ENDPOINT" in line or "STATUS" in line):
            return " ".join(line.split())
        m = re.match(r"Member\s+([0-9a-f]+) (\w+) (\w+) cluster\s+[0-9a-f]+$", line)
        if m:
            return f"Member {self.role(m.group(1))} {m.group(2)} {m.group(3)} cluster CID"
        m = re.match(r'ETCD_INITIAL_CLUSTER="(.*)"$', line)
        if m:
            parts = []
            for part in m.group(1).split(","):
                name, _, u = part.partition("=")
                parts.append(f"{self.names.get(name, name)}={self.roles.get(u, u)}")
            return f'ETCD_INITIAL_CLUSTER="{",".join(sorted(parts))}"'
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if len(cells) == 6:  # member list -w table
                cells[0] = self.role(cells[0])
                cells[2] = self.names.get(cells[2], cells[2])
                cells[3:5] = [self.roles.get(u, u) for u in cells[3:5]]
                return "| " + " | ".join(cells) + " |"
        fields = line.split(", ")
        if len(fields) == 6 and fields[1] in ("started", "unstarted"):  # member list
            fields[0] = self.role(fields[0])
            fields[2] = self.names.get(fields[2], fields[2])
            fields[3:5] = [self.roles.get(u, u) for u in fields[3:5]]
            return ", ".join(fields)
        if len(fields) == 10:  # endpoint status: endpoint, ID, is learner, errors
            ep = self.roles.get(f"http://{fields[0]}", fields[0])
            return f"{ep}, {self.role(fields[1])}, learner {fields[5]}, errors [{fields[9]}]"
        line = re.sub(r"took = \S+", "took = *", line)
        for address, role in self.roles.items():
            line = line.replace(address.removeprefix("http://"), role)
        return line

    def json(self, doc: Any) -> Any:
        if isinstance(doc, list):  # endpoint status -w json
            return sorted(
                ({"Endpoint": self.roles.get(f"http://{d['Endpoint']}"),
                  "member": self.role(str(d["Status"]["header"]["member_id"]), False),
                  "leader_is_a_member": self.role(str(d["Status"]["leader"]), False) != "?",
                  "isLearner": d["Status"].get("isLearner", False)} for d in doc),
                key=lambda d: str(d["Endpoint"]))
        members = []
        for m in doc.get("members", []):
            members.append({
                "ID": self.role(str(m["ID"]), False),
                "name": self.names.get(m.get("name", ""), m.get("name", "")),
                "peerURLs": [self.roles.get(u, u) for u in m.get("peerURLs", [])],
                "clientURLs": [self.roles.get(u, u) for u in m.get("clientURLs", [])],
                "isLearner": m.get("isLearner", False)})
        return sorted(members, key=lambda m: str(m["ID"]))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[_Cluster, _Cluster]]:
    base = tmp_path_factory.mktemp("members")
    etcd, dengine = EtcdCluster(base / "etcd", token="members"), DengineCluster(base / "d")
    failed = start_all([etcd, dengine])
    assert not failed, failed
    # etcd refuses a change ("unhealthy cluster") until every voter has been connected for
    # its HealthInterval, 5 s (dengine: connected now)
    time.sleep(ETCD_HEALTH_INTERVAL_S + 0.5)
    try:
        yield etcd, dengine
    finally:
        stop_all_clusters([etcd, dengine])


def test_member_commands_answered_as_etcd(pair: tuple[_Cluster, _Cluster]) -> None:
    etcd, dengine = pair
    new = free_ports(10)
    want = Run(etcd, new).run()
    got = Run(dengine, new).run()
    pairs = zip(want, got, strict=False)
    assert got == want, "\n".join(
        f"{'  ' if a == b else '!='} etcd: {a}\n   dengine: {b}" for a, b in pairs)


def _raw(endpoint: str, method: str, request: Any, response: Any) -> tuple[str, str]:
    with grpc.insecure_channel(endpoint) as channel:
        call = channel.unary_unary(f"/etcdserverpb.Cluster/{method}",
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=response.FromString)
        try:
            call(request, timeout=10)
        except grpc.RpcError as e:
            return e.code().name, e.details()
    return "OK", ""


def test_raw_member_errors_as_etcd(pair: tuple[_Cluster, _Cluster]) -> None:
    """What etcdctl checks before sending (URLs), sent as is: the same code and text."""
    requests = [
        ("MemberAdd", rpc_pb2.MemberAddRequest(), rpc_pb2.MemberAddResponse),
        ("MemberAdd", rpc_pb2.MemberAddRequest(peerURLs=["nope"]), rpc_pb2.MemberAddResponse),
        ("MemberAdd", rpc_pb2.MemberAddRequest(peerURLs=["http://127.0.0.1"]),
         rpc_pb2.MemberAddResponse),
        ("MemberUpdate", rpc_pb2.MemberUpdateRequest(ID=0xFFFF, peerURLs=["x"]),
         rpc_pb2.MemberUpdateResponse),
        ("MemberRemove", rpc_pb2.MemberRemoveRequest(ID=0xFFFF), rpc_pb2.MemberRemoveResponse),
        ("MemberPromote", rpc_pb2.MemberPromoteRequest(ID=0xFFFF),
         rpc_pb2.MemberPromoteResponse),
    ]
    etcd, dengine = pair
    for method, request, response in requests:
        want = _raw(etcd.endpoints[1], method, request, response)
        assert _raw(dengine.endpoints[1], method, request, response) == want, (method, want)


def _start_member(c: DengineCluster, workdir: Path, learner: bool
                  ) -> tuple[ServerProcess, int, str, str]:
    """`etcdctl member add`, then the new member started with `serve --join`: (its
    process, its id, its peer and client addresses)."""
    peer, client, native = (f"127.0.0.1:{p}" for p in free_ports(3))
    added = c.etcdctl(["member", "add", "new", f"--peer-urls=http://{peer}",
                       *(["--learner"] if learner else [])])
    assert added.rc == 0, added
    assert 'ETCD_INITIAL_CLUSTER_STATE="existing"' in added.stdout
    found = re.search(r"Member\s+([0-9a-f]+) added", added.stdout)
    assert found is not None, added
    member_id = int(found[1], 16)
    node = ServerProcess(member_id, workdir / f"node{member_id}.toml",
                         workdir / f"node{member_id}.log")
    settings = {**c.settings, "data_dir": str(workdir / f"node{member_id}"),
                "node_id": member_id, "listen_peer": peer, "listen_client": client,
                "listen_client_native": native, "join": ",".join(c.endpoints)}
    node.config_file.write_text(config_toml(settings, {}))
    node.start()
    return node, member_id, peer, client


def _until_listed(c: DengineCluster, node: ServerProcess, want: str, learner: bool,
                  client: str) -> None:
    """Until `member list` shows the line `want` and the member's own status agrees."""
    deadline = time.monotonic() + 60
    line = ""
    while time.monotonic() < deadline:
        listed = c.etcdctl(["member", "list"])
        line = next((x for x in listed.stdout.splitlines()
                     if x.startswith(want.split(",")[0] + ",")), "")
        status = c.etcdctl(["endpoint", "status", "-w", "json"], endpoints=[client])
        if line == want and status.rc == 0 and bool(
                json.loads(status.stdout)[0]["Status"].get("isLearner")) == learner:
            return
        assert node.alive, node.log_file.read_text()
        time.sleep(0.2)
    pytest.fail(f"not listed as {want!r}: {line!r}\n{node.log_file.read_text()[-3000:]}")


def test_etcdctl_member_add_then_the_new_node_joins(tmp_path: Path) -> None:
    """etcd's flow: `member add`, then the new member starts (dengine: `serve --join`).
    Added as a voter it catches up and is promoted by itself; added as a learner it is
    promoted by `member promote` once in sync. Both then serve etcdctl."""
    with DengineCluster(tmp_path / "c") as c:
        node, member_id, peer, client = _start_member(c, tmp_path, learner=False)
        try:
            assert member_id == 4
            _until_listed(c, node, f"4, started, node4, http://{peer}, http://{client}, false",
                          False, client)
            assert c.etcdctl(["put", "k", "v"], endpoints=[client]).rc == 0
            got = c.etcdctl(["get", "k", "--print-value-only"], endpoints=[c.endpoints[0]])
            assert got.stdout.strip() == "v"
            removed = c.etcdctl(["member", "remove", "4"])
            assert removed.stdout.split() == ["Member", "4", "removed", "from", "cluster",
                                              removed.stdout.split()[-1]], removed
        finally:
            stop_all([node])
        node, member_id, peer, client = _start_member(c, tmp_path, learner=True)
        try:
            assert member_id == 5  # 4 is not given again
            _until_listed(c, node, f"5, started, node5, http://{peer}, http://{client}, true",
                          True, client)
            deadline = time.monotonic() + 30
            while True:  # refused ("in sync with leader") until it has caught up
                promoted = c.etcdctl(["member", "promote", "5"])
                if promoted.rc == 0 or time.monotonic() > deadline:
                    break
                assert "in sync with leader" in promoted.stderr, promoted
                time.sleep(0.2)
            assert promoted.stdout.startswith("Member") and " promoted in cluster " in (
                promoted.stdout), promoted
            _until_listed(c, node, f"5, started, node5, http://{peer}, http://{client}, false",
                          False, client)
        finally:
            stop_all([node])

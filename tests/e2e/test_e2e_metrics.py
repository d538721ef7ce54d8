"""`listen_metrics` (issue 18 item 3) on real `dengine serve` processes: `/metrics` parses as
Prometheus' text format and its counters move with load; `/health` turns 503 on a node cut
off from the others (they are paused) within seconds, and 200 again once they are back."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request
from typing import Any

from e2e_support import Cluster
from prometheus_client.parser import text_string_to_metric_families

from dengine.bench.cluster import free_ports


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = _get(url)
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_metrics_move_with_load_and_health_follows_the_leader(cluster_factory: Any) -> None:
    cluster: Cluster = cluster_factory(3, start=False)
    ports = free_ports(3)
    urls = {}
    for node, port in zip(cluster.nodes, ports, strict=True):
        node.settings["listen_metrics"] = f"127.0.0.1:{port}"
        urls[node.node_id] = f"http://127.0.0.1:{port}"
    cluster.start()
    leader = asyncio.run(cluster.wait_leader())
    lone = next(n for n in cluster.nodes if n.node_id != leader.node_id)
    base = urls[lone.node_id]

    before = _samples(f"{base}/metrics")
    assert before[("dengine_server_has_leader", ())] == 1
    assert before[("dengine_raft_term", ())] >= 1

    async def load() -> None:
        async with cluster.client() as client:
            for i in range(50):
                await client.put(f"k{i}", "v")
            for node in cluster.nodes:  # one request to each node's listener at least
                await client.status(node.client)

    asyncio.run(load())
    applied = before[("dengine_raft_applied_index", ())]
    after = _until(lambda: (lambda m: m if m[("dengine_raft_applied_index", ())]
                            >= applied + 50 else None)(_samples(f"{base}/metrics")),
                   10, "the follower's applied index did not move")
    assert after[("dengine_server_proposals_committed_total", ())] > before[
        ("dengine_server_proposals_committed_total", ())]
    served = sum(v for (name, _), v in after.items()
                 if name == "dengine_client_requests_total")
    assert served >= 1
    assert any(name == "dengine_peer_connected" and v == 1 for (name, _), v in after.items())

    status, body = _get(f"{base}/health")
    assert status == 200 and json.loads(body)["health"] == "true", body
    assert _get(f"{base}/nothing")[0] == 404

    others = [n for n in cluster.nodes if n is not lone]
    for n in others:
        n.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        _until(lambda: _get(f"{base}/health")[0] == 503, 10, "health stayed 200")
        status, body = _get(f"{base}/health")
        assert json.loads(body) | {"reason": "no leader"} == json.loads(body), body
        assert time.monotonic() - started < 10
        assert _samples(f"{base}/metrics")[("dengine_server_has_leader", ())] == 0
    finally:
        for n in others:
            n.signal(signal.SIGCONT)
    _until(lambda: _get(f"{base}/health")[0] == 200, 20, "health did not come back")
    changes = _samples(f"{base}/metrics")[("dengine_server_leader_changes_seen_total", ())]
    assert changes >= 1


def test_metrics_of_the_disk_the_peers_the_watches_and_the_leases(
        cluster_factory: Any) -> None:
    """The log's durable writes and the heartbeats' round trips are timed (histograms);
    etcd watches and leases are counted."""
    import grpc

    from dengine.proto.etcd import rpc_pb2

    cluster: Cluster = cluster_factory(3, start=False)
    urls = {}
    for node, port in zip(cluster.nodes, free_ports(3), strict=True):
        node.settings["listen_metrics"] = f"127.0.0.1:{port}"
        urls[node.node_id] = f"http://127.0.0.1:{port}/metrics"
    cluster.start()
    leader = asyncio.run(cluster.wait_leader())
    follower = next(n for n in cluster.nodes if n.node_id != leader.node_id)

    def fsyncs(node_id: int) -> float:
        return _samples(urls[node_id])[("dengine_disk_log_fsync_duration_seconds_count", ())]

    before = fsyncs(follower.node_id)

    async def load() -> None:
        async with cluster.client() as client:
            for i in range(20):
                await client.put(f"k{i}", "v")
            await client.lease_grant(60)
            async with grpc.aio.insecure_channel(follower.client) as channel:
                stream = channel.stream_stream(
                    "/etcdserverpb.Watch/Watch",
                    request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=rpc_pb2.WatchResponse.FromString)()
                await stream.write(rpc_pb2.WatchRequest(
                    create_request=rpc_pb2.WatchCreateRequest(key=b"k", range_end=b"l")))
                assert (await stream.read()).created
                watched = _samples(urls[follower.node_id])
                assert watched[("dengine_watch_streams", ())] == 1
                assert watched[("dengine_watches", ())] == 1
                stream.cancel()

    asyncio.run(load())
    # (a slow follower may write several appends at once: at least one write timed)
    _until(lambda: fsyncs(follower.node_id) > before, 10, "no fsync timed")
    peers = [str(n.node_id) for n in cluster.nodes if n.node_id != leader.node_id]

    def timed() -> dict[Any, float] | None:
        m = _samples(urls[leader.node_id])
        counts = [m.get(("dengine_peer_round_trip_time_seconds_count", (("peer", p),)), 0)
                  for p in peers]
        return m if all(counts) else None

    m = _until(timed, 10, "no heartbeat round trip timed")
    for peer in peers:
        labels = (("peer", peer),)
        assert m[("dengine_peer_round_trip_time_seconds_bucket", (("le", "+Inf"), *labels))] \
            == m[("dengine_peer_round_trip_time_seconds_count", labels)]
    _until(lambda: _samples(urls[follower.node_id]).get(("dengine_leases", ())) == 1, 10,
           "the lease was not counted")
    _until(lambda: _samples(urls[follower.node_id])[("dengine_watches", ())] == 0, 10,
           "the watch was not let go")


def test_the_grafana_dashboard_uses_only_metrics_that_exist() -> None:
    """docs/grafana-dashboard.json parses, and every dengine metric its queries name is
    one the metrics page documents (docs/operations.md's table)."""
    import re
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs"
    dashboard = json.loads((docs / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|total|count|sum)$", "", name)
            for e in exprs for name in re.findall(r"dengine_\w+", e)}
    documented = {re.sub(r"_(total)$", "", name)
                  for name in re.findall(r"`(dengine_\w+)", (docs / "operations.md").read_text())}
    assert used and used <= documented, used - documented

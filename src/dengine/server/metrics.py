"""Prometheus metrics and a health endpoint on `listen_metrics` (issue 18 item 3).

A small HTTP/1.1 server on the node's event loop (GET only, one request per connection):

* `/metrics`: Prometheus' text format (`prometheus-client`). Values are read from the
  engine when scraped (term, indexes, apply lag, leader, pending proposals, peers, data
  dir sizes) or counted as they happen (leader changes, client requests by method and
  their latency: gRPC through a server interceptor, native through the listener).
* `/health`: 200 `{"health": "true", ...}` while the node knows a leader and has applied
  close to its commit index; else 503 with the reason (`{"health": "false", "reason":
  "no leader"}`), so that a node cut off from the others turns 503 within an election
  timeout.

Off by default (`listen_metrics = ""`). The endpoint is plaintext and unauthenticated:
bind it to an address only the monitoring can reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from dengine.config import NodeConfig, parse_address
from dengine.errors import ConfigError, DengineError
from dengine.kv import EVENTUAL

log = logging.getLogger("dengine.server.metrics")

# An applied index this far behind the commit index makes the node unhealthy.
HEALTH_MAX_APPLY_LAG = 10_000
LEADER_SAMPLE_S = 0.05  # how often leader changes are looked for
LEASE_SAMPLE_S = 1.0  # how often the leases are counted
REQUEST_READ_TIMEOUT_S = 5.0
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)


class Metrics:
    """The metrics of one node: its registry, and what the listeners report into it."""

    def __init__(self, engine: Any, config: NodeConfig, watch: Any = None) -> None:
        self.engine = engine
        self.config = config
        self.watch = watch  # the etcd Watch service: its streams and watches
        self.leases = -1  # leases in the store, counted every LEASE_SAMPLE_S (-1: not yet)
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "dengine_client_requests_total", "Client requests served, by protocol and method.",
            ["protocol", "method"], registry=self.registry)
        self.latency = Histogram(
            "dengine_client_request_duration_seconds",
            "Time to answer a client request, by protocol and method.",
            ["protocol", "method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.leader_changes = 0
        self._leader = -1
        self.registry.register(_EngineCollector(self))

    def observe(self, protocol: str, method: str, seconds: float) -> None:
        self.requests.labels(protocol, method).inc()
        self.latency.labels(protocol, method).observe(seconds)

    def sample_leader(self) -> None:
        leader = self.engine.leader_id
        if leader != self._leader:
            if self._leader != -1 and leader:
                self.leader_changes += 1
            self._leader = leader

    async def sample_leases(self) -> None:
        with contextlib.suppress(DengineError):  # stopped: the last count stays
            self.leases = int(await self.engine.read_query(
                _lease_count, EVENTUAL, timeout=LEASE_SAMPLE_S))

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, the JSON body of /health)."""
        engine = self.engine
        if not getattr(engine, "running", True):
            return False, {"health": "false", "reason": "stopped"}
        st = engine.status()
        body: dict[str, Any] = {"node_id": st.node_id, "leader": st.leader_id,
                                "term": st.term, "commit_index": st.commit_index,
                                "applied_index": st.applied_index}
        if not st.leader_id:
            return False, {"health": "false", "reason": "no leader", **body}
        lag = st.commit_index - st.applied_index
        if lag > HEALTH_MAX_APPLY_LAG:
            return False, {"health": "false",
                           "reason": f"applied index {lag} entries behind the commit index",
                           **body}
        return True, {"health": "true", **body}

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        return _Timing(self)

    def text(self) -> bytes:
        return bytes(generate_latest(self.registry))


def _lease_count(store: Any) -> int:
    return len(getattr(store, "leases", ()))  # (a store without etcd's leases: none)


class _EngineCollector(Collector):
    """Values read from the engine at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        m = self._metrics
        engine = m.engine
        st = engine.status()

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, value=value)

        yield gauge("dengine_server_has_leader", "1 when this node knows a leader.",
                    1 if st.leader_id else 0)
        yield gauge("dengine_server_is_leader", "1 when this node is the leader.",
                    1 if st.role == "leader" else 0)
        yield gauge("dengine_server_leader_id", "The leader this node knows (0: none).",
                    st.leader_id)
        yield CounterMetricFamily("dengine_server_leader_changes_seen",
                                  "Leader changes this node has seen.",
                                  value=m.leader_changes)
        yield gauge("dengine_raft_term", "The current Raft term.", st.term)
        yield gauge("dengine_raft_commit_index", "The commit index.", st.commit_index)
        yield gauge("dengine_raft_applied_index", "The applied index.", st.applied_index)
        yield gauge("dengine_raft_apply_lag", "Committed entries not applied yet.",
                    max(0, st.commit_index - st.applied_index))
        yield gauge("dengine_raft_log_entries", "Entries in the Raft log.",
                    max(0, st.last_log_index - st.first_log_index + 1))
        yield gauge("dengine_raft_snapshot_index", "Index of the latest snapshot.",
                    st.snapshot_index)
        yield gauge("dengine_raft_voters", "Voters in the configuration.", len(st.voters))
        yield gauge("dengine_raft_learners", "Learners in the configuration.",
                    len(st.learners))
        node = getattr(engine, "_node", None)
        pending = getattr(node, "_pending", None)
        if pending is not None:
            yield gauge("dengine_server_proposals_pending",
                        "Proposed entries waiting for their apply.", pending.waiting())
            yield CounterMetricFamily(
                "dengine_server_proposals_failed",
                "Proposed writes that failed (deadline passed, leadership lost or changed, "
                "node stopped).", value=pending.failed)
        yield CounterMetricFamily(
            "dengine_server_proposals_committed",
            "Entries committed (the commit index, as etcd's).", value=st.commit_index)
        yield from _transport_metrics(getattr(node, "_transport", None), st)
        yield from _disk_metrics(m.config.data_dir)
        yield from _timings(node)
        if m.watch is not None:
            yield gauge("dengine_watch_streams", "Open etcd Watch streams on this node.",
                        m.watch.streams)
            yield gauge("dengine_watches", "Watches of the open etcd Watch streams.",
                        m.watch.watches())
        if m.leases >= 0:
            yield gauge("dengine_leases", "Leases in the store (counted every second).",
                        m.leases)


def _transport_metrics(transport: Any, st: Any) -> Iterator[Any]:
    if transport is None:
        return
    connected = GaugeMetricFamily("dengine_peer_connected",
                                  "1 while the link to the peer is up.", labels=["peer"])
    dropped = CounterMetricFamily("dengine_peer_dropped_messages",
                                  "Messages dropped because the peer's queue was full.",
                                  labels=["peer"])
    queued = GaugeMetricFamily("dengine_peer_queued_messages", "Messages waiting to go.",
                               labels=["peer"])
    for peer in sorted({*st.voters, *st.learners} - {st.node_id}):
        connected.add_metric([str(peer)], 1 if transport.is_connected(peer) else 0)
        dropped.add_metric([str(peer)], transport.dropped(peer))
        queued.add_metric([str(peer)], transport.queued(peer))
    yield connected
    yield dropped
    yield queued
    yield CounterMetricFamily(
        "dengine_peer_refused_connections",
        "Inbound peer connections refused (TLS handshake, Hello, limits).",
        value=getattr(transport, "refused_connections", 0))
    yield CounterMetricFamily(
        "dengine_peer_rejected_messages", "Peer messages dropped as out of bounds.",
        value=getattr(transport, "rejected_messages", 0))
    formats = getattr(transport, "log_formats", None)
    yield CounterMetricFamily(
        "dengine_peer_withheld_appends",
        "Appends carrying batch entries not sent to a peer of an older release (upgrade it).",
        value=formats.withheld_appends if formats is not None else 0)


def _timings(node: Any) -> Iterator[Any]:
    """The node's own timings (dengine.node.timing): durable log writes, peer round trips."""
    persist = getattr(getattr(node, "_logs", None), "persist_seconds", None)
    if persist is not None:
        yield HistogramMetricFamily(
            "dengine_disk_log_fsync_duration_seconds",
            "Time to make a Ready's log entries and hard state durable (write and fsync).",
            buckets=persist.cumulative(), sum_value=persist.sum)
    rtt = getattr(getattr(node, "_outbox", None), "rtt", None)
    if rtt is not None:
        family = HistogramMetricFamily(
            "dengine_peer_round_trip_time_seconds",
            "Round trip of the leader's heartbeats to each peer.", labels=["peer"])
        for peer, histogram in sorted(rtt.by_peer.items()):
            family.add_metric([str(peer)], histogram.cumulative(), histogram.sum)
        yield family


def _disk_metrics(data_dir: str) -> Iterator[Any]:
    sizes = GaugeMetricFamily("dengine_disk_bytes", "Bytes on disk, by part of the data dir.",
                              labels=["part"])
    for part, size in _dir_sizes(data_dir).items():
        sizes.add_metric([part], size)
    yield sizes


def _dir_sizes(data_dir: str) -> dict[str, int]:
    """Bytes under each top-level entry of the data dir (files count as "other")."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError), os.scandir(data_dir) as entries:
        for entry in entries:
            part = entry.name if entry.is_dir(follow_symlinks=False) else "other"
            out[part] = out.get(part, 0) + _size(entry.path)
    return out


def _size(path: str) -> int:
    total = 0
    with contextlib.suppress(OSError):
        if not os.path.isdir(path):
            return os.path.getsize(path)
        for root, _, files in os.walk(path):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.path.getsize(os.path.join(root, name))
    return total


class _Timing(grpc.aio.ServerInterceptor):
    """Counts and times every unary gRPC call by method (streams: counted at their start)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        service = details.method.strip("/").split("/", 1)[0].rsplit(".", 1)[-1]
        name = f"{service}/{method}"
        inner = handler.unary_unary
        observe = self._metrics.observe

        async def timed(request: Any, context: Any) -> Any:
            started = time.perf_counter()
            try:
                return await inner(request, context)
            finally:
                observe("grpc", name, time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            timed, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


class MetricsServer:
    """`/metrics` and `/health` over HTTP on one address."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._server: asyncio.AbstractServer | None = None
        self._sampler: asyncio.Task[None] | None = None

    async def start(self, addr: str) -> str:
        host, port = parse_address(addr, allow_port_zero=True)
        try:
            self._server = await asyncio.start_server(self._handle, host, port)
        except OSError as e:
            raise ConfigError(f"cannot listen for metrics on {addr}: "
                              f"{e.strerror or e}") from None
        self._sampler = asyncio.get_running_loop().create_task(self._sample())
        sock = self._server.sockets[0].getsockname()
        return f"[{sock[0]}]:{sock[1]}" if ":" in sock[0] else f"{sock[0]}:{sock[1]}"

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _sample(self) -> None:
        next_leases = 0.0
        while True:
            self.metrics.sample_leader()
            now = time.monotonic()
            if now >= next_leases:
                next_leases = now + LEASE_SAMPLE_S
                await self.metrics.sample_leases()
            await asyncio.sleep(LEADER_SAMPLE_S)

    async def _handle(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, _, rest = line.partition(" ")
            path = rest.partition(" ")[0].partition("?")[0]
            if method not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"GET only\n"
            elif path == "/metrics":
                status, ctype, body = 200, CONTENT_TYPE_LATEST, self.metrics.text()
            elif path in ("/health", "/healthz", "/readyz", "/livez"):
                healthy, report = self.metrics.health()
                status, ctype = (200 if healthy else 503), "application/json"
                body = json.dumps(report).encode() + b"\n"
            else:
                status, ctype, body = 404, "text/plain", b"not found: try /metrics or /health\n"
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed",
                      503: "Service Unavailable"}[status]
            writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                         .encode("latin-1"))
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):
            pass
        except Exception:
            log.exception("metrics request failed")
        finally:
            writer.close()

"""The server process: an Engine plus its client listeners (gRPC and native), until SIGTERM
or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import grpc

from dengine.config import NodeConfig, parse_address
from dengine.errors import (
    ClusterMismatch,
    ConfigError,
    DengineError,
    InvalidRequest,
    StorageError,
)
from dengine.server.etcd import EtcdApi
from dengine.server.etcd.checks import ETCD_GRPC_OVERHEAD
from dengine.server.logs import configure as configure_logs
from dengine.server.logs import json_formatter
from dengine.server.metrics import Metrics, MetricsServer
from dengine.server.native import NativeServer
from dengine.server.service import ClientService, EngineLike
from dengine.tls import request_reload

if TYPE_CHECKING:  # imported when used: it needs hpack, a dependency since session 16
    from dengine.server.grpcwire import GrpcWireServer

log = logging.getLogger("dengine.server")

# The cyclic garbage collector of a server process: a young-generation threshold well
# above CPython's 700, because under load each write leaves objects that live for a few
# milliseconds (a call, its futures, its log entry) and the default threshold promotes
# them into the older generations, whose collections walk the whole heap; measured under
# `etcdctl check perf --load l`, 10-14 ms of CPU per 1,000 writes per node went to the
# collector with the defaults, 5 ms with these (docs/performance.md, session 15).
GC_THRESHOLDS = (20_000, 20, 20)

# In-flight requests get this long to finish after a stop signal.
SHUTDOWN_GRACE_S = 5.0
# A join request's deadline, and the bounds of the pause between two of them.
JOIN_ATTEMPT_S = 10.0
JOIN_RETRY_FIRST_S = 0.1
JOIN_RETRY_MAX_S = 2.0
JOIN_LOG_EVERY_S = 10.0


def max_receive_message_length(config: NodeConfig) -> int:
    """The largest gRPC message the client port takes (either front end): dengine's
    max_request_size, or an etcd request up to etcd's overhead above max_request_bytes
    (which then gets etcd's "request is too large")."""
    return max(config.max_request_size, config.max_request_bytes + ETCD_GRPC_OVERHEAD)


def grpc_server_options(config: NodeConfig) -> list[tuple[str, Any]]:
    """Options of the client-facing gRPC server."""
    options: list[tuple[str, Any]] = [
        # Larger requests are refused by gRPC itself (RESOURCE_EXHAUSTED) before parsing;
        # an etcd request up to etcd's overhead above max_request_bytes gets etcd's
        # "request is too large" (as etcd's server).
        ("grpc.max_receive_message_length", max_receive_message_length(config)),
        # Read responses are bounded by max_response_bytes (answered with an error field).
        ("grpc.max_send_message_length", -1),
        # Without this, a second server on a busy port would bind it silently (Linux).
        ("grpc.so_reuseport", 0),
        # Connections beyond this are closed by gRPC as they arrive.
        ("grpc.max_allowed_incoming_connections", config.max_client_connections),
        # gRPC holds each call's request message whole before the handler runs (a
        # stalled sender's partial message too; it offers no receive timeout per call):
        # calls at once per connection, and (maximum_concurrent_rpcs) per server, bound
        # that memory to max_client_rpcs x the largest message.
        ("grpc.max_concurrent_streams", config.max_client_streams),
        # Go clients (etcdctl, Kubernetes) ping idle long-lived connections: with gRPC's
        # defaults the server answers them with GOAWAY "too_many_pings" after ~30 s.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    if config.client_idle_timeout_s > 0:
        # A connection without calls for this long gets a GOAWAY; gRPC clients reconnect
        # by themselves at their next call.
        options.append(("grpc.max_connection_idle_ms",
                        max(1, int(config.client_idle_timeout_s * 1000))))
    return options


def forward_channel_options(config: NodeConfig) -> list[tuple[str, Any]]:
    """Options of a follower's channel to the leader's client port (forwarded writes)."""
    return [
        ("grpc.max_send_message_length", config.max_request_bytes + ETCD_GRPC_OVERHEAD),
        ("grpc.max_receive_message_length", -1),
    ]


# File descriptors kept for everything but connections (log segments, snapshots, ...).
_FD_RESERVE = 256


def raise_fd_limit(config: NodeConfig) -> None:
    """Raise the soft limit of open files to the hard one (as Go programs do), and warn
    when the connection limits could still exhaust it: a node out of descriptors cannot
    open a log segment or accept its peers."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    needed = 2 * config.max_client_connections + config.max_peer_connections + _FD_RESERVE
    if soft != resource.RLIM_INFINITY and needed > soft:
        log.warning("the open files limit (%d) is below what the connection limits may use "
                    "(2 x max_client_connections + max_peer_connections + %d = %d): lower "
                    "max_client_connections or raise the limit (ulimit -n)", soft,
                    _FD_RESERVE, needed)


async def start_grpc_server(
    service: ClientService, config: NodeConfig, etcd: EtcdApi | None = None,
    interceptors: list[grpc.aio.ServerInterceptor] | None = None,
) -> grpc.aio.Server | GrpcWireServer:
    """Bind `config.listen_client` and start serving (dengine's service, and etcd's with
    `etcd`) with the gRPC server `config.client_frontend` names; ConfigError when the port
    is taken."""
    host, port_wanted = parse_address(config.listen_client)
    if config.client_frontend == "wire":
        from dengine.server.grpcwire import GrpcWireServer

        wire = GrpcWireServer(
            max_receive_message_length=max_receive_message_length(config),
            max_concurrent_streams=config.max_client_streams, interceptors=interceptors or (),
            tls=config.client_tls(), max_connections=config.max_client_connections,
            idle_timeout=config.client_idle_timeout_s, max_rpcs=config.max_client_rpcs)
        wire.add_generic_rpc_handlers((service.generic_handler(),))
        if etcd is not None:
            etcd.register(wire)
        try:
            await wire.start(host, port_wanted)
        except OSError as e:
            raise ConfigError(f"cannot listen for clients on {config.listen_client}: "
                              f"{e.strerror or e}") from None
        return wire
    server = grpc.aio.server(options=grpc_server_options(config),
                             interceptors=interceptors or None,
                             maximum_concurrent_rpcs=config.max_client_rpcs)
    server.add_generic_rpc_handlers((service.generic_handler(),))
    if etcd is not None:
        etcd.register(server)
    tls = config.client_tls()
    try:
        if tls is not None:
            port = server.add_secure_port(config.listen_client, tls.grpc_credentials())
        else:
            port = server.add_insecure_port(config.listen_client)
    except RuntimeError as e:
        raise ConfigError(f"cannot listen for clients on {config.listen_client}: {e}") from None
    if port == 0:
        raise ConfigError(f"cannot listen for clients on {config.listen_client}")
    await server.start()
    return server


def ensure_port_free(addr: str, hint: str = "") -> None:
    """ConfigError with a clear message when `addr` cannot be bound (before starting)."""
    host, port = parse_address(addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        # Like the real listener: a port in TIME_WAIT (after a restart) is fine to reuse,
        # one with a live listener is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(f"cannot listen on {addr}: {e.strerror}{hint}") from None


def peer_client_address(engine: Any) -> Callable[[int], str]:
    """How to find another node's client address (learned from its transport Hello)."""
    public = getattr(engine, "peer_client_address", None)
    if public is not None:
        return cast(Callable[[int], str], public)

    def lookup(node_id: int) -> str:
        # The Engine does not expose it (yet); its node's transport knows it.
        transport = getattr(getattr(engine, "_node", None), "_transport", None)
        find = getattr(transport, "peer_client_address", None)
        return str(find(node_id) or "") if find is not None else ""

    return lookup


def in_configuration(engine: EngineLike) -> bool:
    """Whether this node knows a membership (from its log or a snapshot)."""
    st = engine.status()
    return bool(st.voters or st.learners)


async def join_cluster(engine: EngineLike, config: NodeConfig) -> None:
    """Ask the cluster at `config.join` to add this node as a learner, until it is accepted.

    Retries what can pass (no leader, another change pending, timeouts) with backoff. A
    timed-out request that did take effect is recognised on the next attempt ("already a
    member" with our address). A node id used by another member, or a cluster of another
    name, is a ConfigError: retrying cannot fix it.
    """
    from dengine.client import Client

    delay = JOIN_RETRY_FIRST_S
    last_log = 0.0
    async with Client(config.join, timeout=JOIN_ATTEMPT_S, tls=config.forward_tls()) as client:
        while not in_configuration(engine):
            try:
                if await _ask_to_join(client, config):
                    return
            except (ConfigError, ClusterMismatch):
                raise
            except DengineError as e:
                if time.monotonic() - last_log >= JOIN_LOG_EVERY_S:
                    last_log = time.monotonic()
                    log.warning("joining the cluster at %s: %s [%s]; retrying", config.join,
                                e.message, e.code)
            await asyncio.sleep(delay)
            delay = min(delay * 2, JOIN_RETRY_MAX_S)
    log.info("node %d is in the cluster's configuration", config.node_id)


async def learn_cluster_id(config: NodeConfig) -> str:
    """The id of the cluster at `config.join` (its Status), retried until it answers: a
    joining node's first start takes the cluster's id instead of deriving one."""
    from dengine.client import Client

    delay = JOIN_RETRY_FIRST_S
    last_log = 0.0
    async with Client(config.join, timeout=JOIN_ATTEMPT_S, tls=config.forward_tls()) as client:
        while True:
            try:
                st = await client.status()
                if st.cluster_id:
                    return str(st.cluster_id)
            except DengineError as e:
                if time.monotonic() - last_log >= JOIN_LOG_EVERY_S:
                    last_log = time.monotonic()
                    log.warning("asking the cluster at %s for its id: %s [%s]; retrying",
                                config.join, e.message, e.code)
            await asyncio.sleep(delay)
            delay = min(delay * 2, JOIN_RETRY_MAX_S)


async def _ask_to_join(client: Any, config: NodeConfig) -> bool:
    """One attempt; True once the cluster's configuration holds this node."""
    st = await client.status()
    if st.cluster_id != config.cluster_id:
        raise ClusterMismatch(
            f"--join {config.join} reaches cluster {st.cluster_id!r}, but this node is "
            f"configured for cluster {config.cluster_id!r}"
        )
    try:
        await client.add_member(config.node_id, config.peer_address, config.auto_promote)
    except InvalidRequest as e:
        members = await client.members()
        mine = next((m for m in members if m.id == config.node_id), None)
        if mine is None:
            raise ConfigError(f"the cluster at {config.join} refused to add node "
                              f"{config.node_id}: {e.message}") from None
        if mine.address != config.peer_address:
            raise ConfigError(
                f"node id {config.node_id} is already a member of the cluster at "
                f"{config.join} with peer address {mine.address}, not {config.peer_address}; "
                f"pick an unused node id (or remove the old member first)"
            ) from None
    log.info("node %d added to the cluster at %s as a learner%s", config.node_id,
             config.join, " (promoted to voter once caught up)" if config.auto_promote else "")
    return True


async def serve(config: NodeConfig, stop: asyncio.Event | None = None) -> None:
    """Run a node and its client service until `stop` is set (or SIGTERM/SIGINT arrives)."""
    from dengine.node.datadir import DataDir
    from dengine.node.engine import Engine
    from dengine.node.standing import failure_reason

    config.validate()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP: read the certificate files again (they are also read when they change).
    loop.add_signal_handler(signal.SIGHUP, _reload_certificates)
    ensure_port_free(config.listen_client, " (listen_client)")
    raise_fd_limit(config)
    native_addr = config.native_listen_address
    if native_addr and parse_address(native_addr, allow_port_zero=True)[1] != 0:
        ensure_port_free(native_addr, " (listen_client_native)")
    try:
        if config.join and not config.cluster_id and (
            DataDir(config.data_dir).read_identity() is None
        ):
            learning = asyncio.ensure_future(learn_cluster_id(config))
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({learning, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not learning.done():
                learning.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await learning
                return
            config = config.replace(cluster_id=learning.result())
        engine = await Engine.start(config=config)
        config = engine.config  # its cluster id: set, derived, or read from the data dir
        formatter = json_formatter()
        if formatter is not None:  # JSON log lines carry the term from now on
            formatter.term = lambda: engine.term
        native: NativeServer | None = None
        metrics: MetricsServer | None = None
        etcd = EtcdApi(engine, config, forward_channel_options(config), config.forward_tls())
        try:
            service = ClientService(engine, config, peer_client_address(engine),
                                    gate=etcd.gate, login=etcd.auth.login)
            interceptors = []
            if config.listen_metrics:
                metrics = MetricsServer(Metrics(engine, config, etcd.watch))
                interceptors.append(metrics.metrics.interceptor())
                where = await metrics.start(config.listen_metrics)
                log.info("metrics on http://%s/metrics, health on http://%s/health",
                         where, where)
            if native_addr:
                # Bound before gRPC serves, so that every Status announces it.
                native = NativeServer.from_config(service, config)
                if metrics is not None:
                    native.observe = metrics.metrics.observe
                service.native_address = config.advertised_native(
                    await native.start(native_addr))
            server = await start_grpc_server(service, config, etcd, interceptors)
            await etcd.start()
            st = engine.status()
            joining = bool(config.join) and not in_configuration(engine)
            if joining:
                peers = f"peers on {config.listen_peer}, joining the cluster at {config.join}"
            elif len(st.voters) + len(st.learners) > 1:
                peers = f"peers on {config.listen_peer}"
            else:
                peers = "one-node cluster"
            advertised = "" if config.client_address == config.listen_client else (
                f" (advertised as {config.client_address})")
            if config.peer_address != config.listen_peer:
                peers += f" (advertised as {config.peer_address})"
            log.info("node %d of cluster %r: clients on %s%s (gRPC), %s (native)%s, %s%s, "
                     "data in %s", config.node_id, config.cluster_id, config.listen_client,
                     advertised, service.native_address or "off", _tls_note(config), peers,
                     " (mutual TLS)" if config.peer_cert_file else "", config.data_dir)
            # A fatal storage failure (a full disk, an I/O error) ends the server with its
            # error (exit status 1): restarted once the disk is fixed, it loses nothing.
            failure = asyncio.create_task(engine.wait_failure())
            failure.add_done_callback(lambda t: None if t.cancelled() else stop.set())
            join = asyncio.create_task(join_cluster(engine, config)) if joining else None
            if join is not None:
                # A join that cannot succeed ends the server, with its error.
                join.add_done_callback(
                    lambda t: None if t.cancelled() or t.exception() is None else stop.set()
                )
            try:
                await stop.wait()
            finally:
                if not failure.done():
                    failure.cancel()
                if join is not None and not join.done():
                    join.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await join
            log.info("stopping: no new requests, finishing in-flight ones")
            await asyncio.gather(server.stop(SHUTDOWN_GRACE_S), *(
                [native.stop(SHUTDOWN_GRACE_S)] if native is not None else []))
        finally:
            if native is not None and not native.stopping:
                await native.stop(0)
            if metrics is not None:
                await metrics.stop()
            await etcd.stop()
            await engine.stop()
        log.info("node %d stopped", config.node_id)
        if failure.done() and not failure.cancelled():
            raise StorageError(
                f"node {config.node_id} stopped after a storage failure "
                f"({failure_reason(failure.result())}); nothing acknowledged is lost: start "
                "it again once the disk is fixed or has room"
            )
        if join is not None and not join.cancelled() and join.exception() is not None:
            raise cast(BaseException, join.exception())
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def _reload_certificates() -> None:
    log.info("SIGHUP: reading the certificate files again at the next connection")
    request_reload()


def _tls_note(config: NodeConfig) -> str:
    if not config.cert_file:
        return ""
    return " with TLS, client certificates required" if config.client_cert_auth else \
        " with TLS"


def run_server(config: NodeConfig) -> int:
    """Blocking entry point of `dengine serve`; returns the process exit code (0 = clean)."""
    level = logging.getLevelName(config.log_level.upper())
    if not isinstance(level, int):
        raise ConfigError(
            f"log_level must be one of debug, info, warning, error; got {config.log_level!r}"
        )
    configure_logs(level, config.log_format, config.node_id)
    tune_gc()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(config))
    return 0


def tune_gc() -> None:
    """Set GC_THRESHOLDS, and move what the imports made into the permanent generation
    (never collected, so never walked again by a full collection)."""
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (cheaper per callback and per socket operation than the
    default loop: see docs/performance.md); DENGINE_EVENT_LOOP=asyncio turns it off."""
    if os.environ.get("DENGINE_EVENT_LOOP", "uvloop") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop

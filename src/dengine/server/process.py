"""The server process: an Engine plus the gRPC client service, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from typing import Any, cast

import grpc

from dengine.config import NodeConfig, parse_address
from dengine.errors import ConfigError
from dengine.server.service import ClientService

log = logging.getLogger("dengine.server")

# In-flight requests get this long to finish after a stop signal.
SHUTDOWN_GRACE_S = 5.0


def grpc_server_options(config: NodeConfig) -> list[tuple[str, Any]]:
    """Options of the client-facing gRPC server."""
    return [
        # Larger requests are refused by gRPC itself (RESOURCE_EXHAUSTED) before parsing.
        ("grpc.max_receive_message_length", config.max_request_size),
        ("grpc.max_send_message_length", -1),
        # Without this, a second server on a busy port would bind it silently (Linux).
        ("grpc.so_reuseport", 0),
    ]


async def start_grpc_server(service: ClientService, config: NodeConfig) -> grpc.aio.Server:
    """Bind `config.listen_client` and start serving; ConfigError when the port is taken."""
    parse_address(config.listen_client)
    server = grpc.aio.server(options=grpc_server_options(config))
    server.add_generic_rpc_handlers((service.generic_handler(),))
    try:
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


async def serve(config: NodeConfig, stop: asyncio.Event | None = None) -> None:
    """Run a node and its client service until `stop` is set (or SIGTERM/SIGINT arrives)."""
    from dengine.node.engine import Engine

    config.validate()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ensure_port_free(config.listen_client, " (listen_client)")
    try:
        engine = await Engine.start(config=config)
        try:
            service = ClientService(engine, config, peer_client_address(engine))
            server = await start_grpc_server(service, config)
            st = engine.status()
            peers = (f"peers on {config.listen_peer}" if len(st.voters) + len(st.learners) > 1
                     else "one-node cluster, no peer listener")
            log.info("node %d of cluster %r: clients on %s, %s, data in %s", config.node_id,
                     config.cluster_id, config.listen_client, peers, config.data_dir)
            await stop.wait()
            log.info("stopping: no new requests, finishing in-flight ones")
            await server.stop(SHUTDOWN_GRACE_S)
        finally:
            await engine.stop()
        log.info("node %d stopped", config.node_id)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run_server(config: NodeConfig) -> int:
    """Blocking entry point of `dengine serve`; returns the process exit code (0 = clean)."""
    level = logging.getLevelName(config.log_level.upper())
    if not isinstance(level, int):
        raise ConfigError(
            f"log_level must be one of debug, info, warning, error; got {config.log_level!r}"
        )
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(serve(config))
    return 0

"""Socket settings shared by the native client (`dengine.client`) and server
(`dengine.server`), which sit side by side in the layers and do not import each other,
and the peer transport (`dengine.node.transport`)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import cast


def adopt_transport(transport: asyncio.BaseTransport) -> asyncio.Transport:
    """The stream transport of a new native connection, with TCP_NODELAY set (a frame
    must leave at once, not wait for the previous one's acknowledgement)."""
    stream = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
    sock = stream.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return stream


# A connection whose peer vanished (host down, cable cut: no FIN, no RST) is ended by the
# kernel: probed after KEEPALIVE_IDLE_S idle, every KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT
# times; and data left unacknowledged for USER_TIMEOUT_S ends it too (TCP_USER_TIMEOUT).
KEEPALIVE_IDLE_S = 5
KEEPALIVE_INTERVAL_S = 1
KEEPALIVE_COUNT = 3
USER_TIMEOUT_S = 10


def set_keepalive(sock: socket.socket | None) -> None:
    """TCP keep-alive and TCP_USER_TIMEOUT on `sock` (options this OS lacks are skipped)."""
    if sock is None:
        return
    options = [
        (socket.SOL_SOCKET, "SO_KEEPALIVE", 1),
        (socket.IPPROTO_TCP, "TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
        (socket.IPPROTO_TCP, "TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
        (socket.IPPROTO_TCP, "TCP_KEEPCNT", KEEPALIVE_COUNT),
        (socket.IPPROTO_TCP, "TCP_USER_TIMEOUT", USER_TIMEOUT_S * 1000),
    ]
    for level, name, value in options:
        option = getattr(socket, name, None)
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(level, option, value)

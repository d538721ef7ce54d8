"""Socket settings shared by the native client (`dengine.client`) and server
(`dengine.server`), which sit side by side in the layers and do not import each other."""

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

"""One pipelined connection to a node's native client listener (`dengine.proto.native`).

Many calls share the connection at once; each frame carries a request id and answers are
matched by it, in whatever order the node finishes them. The caller (`Client`) maps the
exceptions below to dengine errors: which one tells whether a write may have been applied.

Liveness: a node that is paused (SIGSTOP), cut off or hung keeps a TCP connection open
and simply never answers. While requests are outstanding, a connection that has received
nothing for `probe_interval` seconds sends a probe (a Status request, which a live node
answers at once, however long its writes wait for a quorum); if nothing at all arrives
for another `probe_interval`, the connection is declared dead: closed, its outstanding
requests failed with `Lost` (`silent` set), so that the client moves on to another node.
A request whose caller gave up stays outstanding (for liveness) until its deadline.
"""

from __future__ import annotations

import asyncio
import math
import ssl as ssl_module
from collections.abc import Callable

from dengine.config import parse_address
from dengine.netutil import adopt_transport
from dengine.proto.native import (
    LENGTH,
    MAX_REQUEST_ID,
    MAX_TIMEOUT_MS,
    METHOD_CODES,
    RESPONSE_HEADER,
    RESPONSE_OVERHEAD,
    STATUS_CLOSING,
    STATUS_NAMES,
    STATUS_OK,
    request_frame,
)

PROBE_INTERVAL_S = 0.5
_PROBE = METHOD_CODES["Status"]


class NotSent(Exception):
    """The connection was closed before the request was written: it never left."""


class Lost(Exception):
    """The connection broke while the request was outstanding: its outcome is unknown.
    `silent`: the node stopped answering (the liveness probe), rather than closing."""

    def __init__(self, message: str, silent: bool = False) -> None:
        super().__init__(message)
        self.silent = silent


class Refused(Exception):
    """The node answered with a protocol error (not processed): `status`, message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class NativeConnection(asyncio.Protocol):
    """Open with `await NativeConnection.open(address, timeout)`; `call` many times."""

    def __init__(self, address: str, probe_interval: float = PROBE_INTERVAL_S) -> None:
        self.address = address
        self.closed = False
        self.silent = False  # declared dead by the liveness probe
        self.on_lost: Callable[[NativeConnection], None] | None = None  # called once
        self._probe_interval = probe_interval
        self._received = 0  # data_received calls so far (the liveness probe's clock)
        self._seen = 0  # ... at the last check
        self._probing = False
        self._watch: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._last_id = 0
        self._buf = bytearray()
        self._why_closed = "connection closed"

    @classmethod
    async def open(cls, address: str, timeout: float,
                   probe_interval: float = PROBE_INTERVAL_S, *,
                   ssl: ssl_module.SSLContext | None = None,
                   server_hostname: str | None = None) -> NativeConnection:
        """Connect (OSError or TimeoutError when the node cannot be reached; with `ssl`,
        ssl.SSLError when the TLS handshake fails), over TLS with `ssl` (the certificate
        checked for `server_hostname`, default the address's host)."""
        host, port = parse_address(address)
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(loop.create_connection(
            lambda: cls(address, probe_interval), host, port, ssl=ssl,
            server_hostname=(server_hostname or host) if ssl is not None else None), timeout)
        return conn

    async def call(self, method: int, body: bytes, timeout: float) -> bytes:
        """The response body of one request; TimeoutError after `timeout` seconds (the
        node is told the same deadline)."""
        if self.closed or self._transport is None:
            raise NotSent(self._why_closed)
        request_id = self._new_id()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        self._pending[request_id] = fut
        timeout_ms = min(MAX_TIMEOUT_MS, max(1, math.ceil(timeout * 1000)))
        self._transport.write(request_frame(method, request_id, timeout_ms, body))
        timer: asyncio.TimerHandle | None = loop.call_later(timeout, self._expire, request_id)
        if self._watch is None:
            self._watch_in(loop)
        try:
            return await fut
        except asyncio.CancelledError:
            # The caller gave up; the node may still answer. The request stays outstanding
            # until its deadline (`_expire`), so that a node that does not answer it is
            # still noticed by the liveness probe.
            timer = None
            raise
        finally:
            if timer is not None:
                timer.cancel()
                self._pending.pop(request_id, None)

    def close(self) -> None:
        if not self.closed:
            self._why_closed = f"connection to {self.address} closed by this client"
        self.closed = True
        self._stop_watch()
        if self._transport is not None:
            self._transport.close()

    # ---- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = adopt_transport(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._why_closed = f"connection to {self.address} lost: {exc}"
        elif not self.closed:
            self._why_closed = f"connection to {self.address} closed by the node"
        self._fail_all(self._why_closed)

    def data_received(self, data: bytes) -> None:
        self._received += 1
        if self._buf:
            self._buf += data
            data = bytes(self._buf)
            self._buf.clear()
        end, pos = len(data), 0
        header = RESPONSE_HEADER.size
        while end - pos >= header:
            length, request_id, status = RESPONSE_HEADER.unpack_from(data, pos)
            frame_end = pos + LENGTH.size + length
            if length < RESPONSE_OVERHEAD:
                self._broken(f"malformed response frame (length {length}) from {self.address}")
                return
            if frame_end > end:
                break
            body = data[pos + header:frame_end]
            pos = frame_end
            if request_id == 0:  # about the connection itself; the node closes it
                # STATUS_CLOSING: nothing outstanding was processed; it is sent again.
                self._broken(f"{self.address} closed the connection: "
                             f"{body.decode('utf-8', 'replace')}",
                             unsent=status == STATUS_CLOSING)
                return
            fut = self._pending.pop(request_id, None)
            if fut is None or fut.done():  # its caller gave up
                continue
            if status == STATUS_OK:
                fut.set_result(body)
            else:
                name = STATUS_NAMES.get(status, f"status {status}")
                fut.set_exception(Refused(status, f"{name}: {body.decode('utf-8', 'replace')}"))
        if pos < end:
            self._buf += data[pos:]

    # ---- internals ----------------------------------------------------------------------

    def _new_id(self) -> int:
        request_id = self._last_id
        while True:  # 1 .. 2**32-1, skipping ids still outstanding after a wrap-around
            request_id = request_id + 1 if request_id < MAX_REQUEST_ID else 1
            if request_id not in self._pending:
                self._last_id = request_id
                return request_id

    def _expire(self, request_id: int) -> None:
        fut = self._pending.pop(request_id, None)
        if fut is not None and not fut.done():
            fut.set_exception(TimeoutError())

    def _broken(self, reason: str, silent: bool = False, unsent: bool = False) -> None:
        self._why_closed = reason
        self._fail_all(reason, silent, unsent)
        self.close()

    def _fail_all(self, reason: str, silent: bool = False, unsent: bool = False) -> None:
        self.closed = True
        self.silent = self.silent or silent
        self._stop_watch()
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(NotSent(reason) if unsent else Lost(reason, silent))
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None:
            on_lost(self)

    # ---- liveness -----------------------------------------------------------------------

    def _watch_in(self, loop: asyncio.AbstractEventLoop) -> None:
        self._seen = self._received
        self._watch = loop.call_later(self._probe_interval, self._check, loop)

    def _stop_watch(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        """Every `probe_interval` while requests are outstanding: probe a silent node,
        give up on one that stayed silent since the probe."""
        self._watch = None
        if self.closed or not self._pending:
            self._probing = False
            return
        if self._received != self._seen:  # heard from the node: alive
            self._probing = False
        elif not self._probing:
            self._probing = True
            if self._transport is not None:
                # Its answer only counts as traffic: no pending entry waits for it.
                self._transport.write(request_frame(
                    _PROBE, self._new_id(), max(1, math.ceil(self._probe_interval * 1000)),
                    b""))
        else:
            self._broken(f"{self.address} did not answer for "
                         f"{2 * self._probe_interval:g} s, not even a probe", silent=True)
            return
        self._watch_in(loop)

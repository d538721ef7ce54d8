"""What one connection of the hand-framed gRPC front end knows (its calls, windows and
frames to send) and the primitives its other parts share: writing frames, forgetting a
call, the send queue cut to the peer's windows, the receive windows granted back
(docs/grpc-frontend.md). The layers above: handlers.py, incoming.py, connection.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import hpack

from dengine.server.grpcwire import frames as f
from dengine.server.grpcwire.call import STREAM_WINDOW, Call
from dengine.server.grpcwire.context import Head

CONNECTION_WINDOW = 16 << 20  # granted to the connection
MAX_HEADER_LIST = 16 * 1024  # encoded block and decoded list (grpc core's hard limit)
HEADER_CACHE = 64  # decoded header blocks kept per connection
# Calls the peer may reset while their handlers run, net of calls that end normally,
# before the connection is closed (the rapid-reset attack, CVE-2023-44487).
MAX_RESETS = 1000
# PING and SETTINGS frames (each makes the server write) allowed in a burst, and per
# second after it: a Go client's keepalive (every 10 s or more) and BDP pings (one per
# burst of answers) stay far below; beyond, GOAWAY ENHANCE_YOUR_CALM.
CONTROL_BURST = 1000
CONTROL_RATE = 100.0
# A PING is acked this long after it came (one timer per server), not at once. A Go
# client sends a BDP ping with a WINDOW_UPDATE each time an answer arrives while none of
# its pings waits for its ack: with immediate acks every unary call cost one more read
# and one more write on both sides (`etcdctl check perf --load l`: 2 reads, 2 writes per
# call). Held, a client pings about once per hold. Keep-alive pings are still acked well
# within any client's timeout (grpc-go's default 20 s, etcdctl's 6 s).
ACK_HOLD_S = 1.0


class ConnectionState:
    """The state of one client connection for `server` (a GrpcWireServer)."""

    def __init__(self, server: Any) -> None:
        self._server = server
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = MAX_HEADER_LIST
        self._header_cache: dict[bytes, Head] = {}
        self._buf = b""
        self._preface = True
        self._settings_seen = False
        self._calls: dict[int, Call] = {}
        self._zombies = 0  # calls reset by the peer whose handlers have not ended yet
        self._draining: set[Call] = set()  # calls whose writer waits for the windows
        self._going_away = False  # GOAWAY sent or received: no new call, close when idle
        self.idle_since = time.monotonic()  # when the last call ended
        self._tokens = float(CONTROL_BURST)  # see CONTROL_BURST
        self._tokens_at = time.monotonic()
        self._resets = 0  # see MAX_RESETS
        self._last_sid = 0
        self._cont: tuple[int, int, bytes] | None = None  # sid, flags, block so far
        self._recv_window = CONNECTION_WINDOW
        self._consumed = 0  # connection bytes received since the last WINDOW_UPDATE
        self._send_window = f.DEFAULT_WINDOW
        self._peer_initial = f.DEFAULT_WINDOW
        self._peer_frame = f.MIN_FRAME_SIZE
        self._pending: list[tuple[int, memoryview, bytes]] = []  # sid, data left, trailers
        self._out: list[bytes] | None = None  # frames of the current read
        self._later: list[bytes] = []  # frames made outside a read, for this turn's end
        self._transport: asyncio.Transport | None = None
        self._closed = False
        self._peer = ""
        self._certificate: dict[str, list[bytes]] | None = None  # the TLS client's
        self._acks: list[bytes] = []  # PING acks held (see ACK_HOLD_S)

    def _write(self, data: bytes) -> None:
        """Frames leave in one transport write per read, and outside reads (answers of
        handlers that waited) in one per event-loop turn."""
        if self._out is not None:
            self._out.append(data)
        elif not self._closed:
            if not self._later:
                asyncio.get_running_loop().call_soon(self._write_later)
            self._later.append(data)

    def _write_later(self) -> None:
        later, self._later = self._later, []
        if later and not self._closed and self._transport is not None:
            self._transport.write(b"".join(later))

    def _hold_ack(self, payload: bytes) -> None:
        """The ack of a PING with `payload`, sent ACK_HOLD_S later (with any other ack
        this connection holds by then)."""
        if not self._acks:
            self._server.hold_acks(self)
        self._acks.append(f.frame(f.PING, f.ACK, 0, payload))

    def release_acks(self) -> None:
        """Sends the PING acks held."""
        acks, self._acks = self._acks, []
        if acks and not self._closed:
            self._write(b"".join(acks))

    def _end_if_done(self) -> None:
        if self._going_away and not self._calls:
            asyncio.get_running_loop().call_soon(self._close_now)

    def _close_now(self) -> None:
        if not self._closed and self._transport is not None:
            self.release_acks()
            self._write_later()
            self._closed = True
            self._transport.close()

    def _reset(self, sid: int, code: int) -> None:
        """A stream error: RST_STREAM, and the call forgotten (its handler cancelled)."""
        self._write(f.rst_stream(sid, code))
        self._forget(sid)

    def _forget(self, sid: int) -> Call | None:
        """Ends call `sid` for framing: its handler and deadline cancelled, nothing more
        of it sent."""
        call = self._calls.pop(sid, None)
        if call is None:
            return None
        if call.task is not None and call.task is not asyncio.current_task():
            call.task.cancel()
        if call.timer is not None:
            call.timer.cancel()
        if call.counted:
            self._server.rpcs -= 1
        if self._pending:
            self._pending = [p for p in self._pending if p[0] != sid]
        if not self._calls:
            self.idle_since = time.monotonic()
            if self._going_away:
                self._end_if_done()
        return call

    def idle(self) -> bool:
        """Whether no call is open."""
        return not self._calls

    def _grant(self, call: Call) -> None:
        """Keeps the stream's window at STREAM_WINDOW less the complete messages its handler
        has not taken: a client writing faster than the handler reads stops there. A
        partial message does not count (its size limit bounds it), so one larger than
        the window still arrives. A WINDOW_UPDATE only for half a window or more."""
        size = STREAM_WINDOW - call.queued - call.recv_window
        if size >= STREAM_WINDOW // 2:
            self._write(f.window_update(call.sid, size))
            call.recv_window += size

    def _flush(self) -> None:
        """Sends queued answers, in order within each stream, as far as the send windows
        allow: a stream out of its own window waits alone (the others go on), one out of
        the connection's window stops them all."""
        pending, self._pending = self._pending, []
        waiting: list[tuple[int, memoryview, bytes]] = []
        blocked: set[int] = set()  # streams with earlier data waiting: the rest waits too
        for sid, data, trailers in pending:
            call = self._calls.get(sid)
            if call is None:
                continue
            if sid not in blocked:
                while data:
                    size = min(len(data), self._send_window, call.send_window,
                               self._peer_frame)
                    if size <= 0:
                        break
                    self._write(f.frame(f.DATA, 0, sid, bytes(data[:size])))
                    data = data[size:]
                    self._send_window -= size
                    call.send_window -= size
            if data or sid in blocked:
                blocked.add(sid)
                waiting.append((sid, data, trailers))
            elif trailers:
                self._write(trailers)
                self._forget(sid)
        self._pending = [*waiting, *self._pending]
        if self._draining:
            draining, self._draining = self._draining, set()
            for call in draining:  # each checks whether its message left
                if call.drained is not None and not call.drained.done():
                    call.drained.set_result(None)

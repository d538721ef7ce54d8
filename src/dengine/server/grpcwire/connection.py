"""One HTTP/2 connection of the hand-framed gRPC front end, the asyncio Protocol: the
frame loop, SETTINGS/PING/WINDOW_UPDATE/RST_STREAM/GOAWAY, connection errors and the
flood guards (docs/grpc-frontend.md). Requests: incoming.py; handlers and answers:
handlers.py; the state and flow control they share: state.py."""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

import hpack

from dengine.server.grpcwire import frames as f
from dengine.server.grpcwire.call import STREAM_WINDOW, ConnectionError_
from dengine.server.grpcwire.incoming import Incoming
from dengine.server.grpcwire.state import (
    CONNECTION_WINDOW,
    CONTROL_BURST,
    CONTROL_RATE,
    MAX_HEADER_LIST,
    MAX_RESETS,
)

__all__ = ["CONTROL_BURST", "MAX_RESETS", "Connection"]


class Connection(Incoming, asyncio.Protocol):
    """Serves one client connection for `server` (a GrpcWireServer)."""

    # -- transport

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        if not self._server.admit(self):
            self._closed = True
            transport.close()
            return
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            family = "ipv6" if ":" in peer[0] else "ipv4"
            self._peer = f"{family}:{peer[0]}:{peer[1]}"
        transport.write(f.settings(
            (f.SETTINGS_MAX_CONCURRENT_STREAMS, self._server.max_concurrent_streams),
            (f.SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
            (f.SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST))
            + f.window_update(0, CONNECTION_WINDOW - f.DEFAULT_WINDOW))

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        for sid in list(self._calls):
            self._forget(sid)
        self._server.closed(self)

    def pause_writing(self) -> None:
        """A peer that reads slower than it is answered: no more of its requests are
        read until it catches up (streams' writers also wait, on the send windows)."""
        if self._transport is not None and not self._closed:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.resume_reading()

    def close(self, code: int = f.NO_ERROR, debug: str = "") -> None:
        """GOAWAY with `code`, then close (open calls are cancelled)."""
        if self._closed or self._transport is None:
            return
        out, self._out = [*self._later, *(self._out or ())], None
        self._later = []
        out.append(f.goaway(self._last_sid, code, debug.encode()))
        self._transport.write(b"".join(out))
        self._closed = True
        self._transport.close()

    # -- the frame loop

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        # Frames made since the last write (answers of handlers that ran in their own
        # tasks) go first: what this read sends may continue them (a WINDOW_UPDATE lets
        # the rest of an answer out).
        self._out, self._later = self._later, []
        try:
            self._receive(data)
        except ConnectionError_ as e:
            self.close(e.code, str(e))
            return
        except hpack.HPACKError as e:
            self.close(f.COMPRESSION_ERROR, f"header block: {e}")
            return
        out, self._out = self._out, None
        if self._consumed > CONNECTION_WINDOW // 2:
            out.append(f.window_update(0, self._consumed))
            self._recv_window += self._consumed
            self._consumed = 0
        if out and not self._closed and self._transport is not None:
            self._transport.write(b"".join(out))

    def _receive(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        pos = 0
        if self._preface:
            if len(buf) < len(f.PREFACE):
                if not f.PREFACE.startswith(buf):
                    raise ConnectionError_(f.PROTOCOL_ERROR, "not an HTTP/2 preface")
                self._buf = buf
                return
            if buf[:len(f.PREFACE)] != f.PREFACE:
                raise ConnectionError_(f.PROTOCOL_ERROR, "not an HTTP/2 preface")
            self._preface = False
            pos = len(f.PREFACE)
        n = len(buf)
        unpack = f.FRAME_HEADER.unpack_from
        while n - pos >= 9 and not self._closed:
            hi, lo, ftype, flags, sid = unpack(buf, pos)
            length = hi << 16 | lo
            if length > f.MIN_FRAME_SIZE:
                raise ConnectionError_(f.FRAME_SIZE_ERROR, "frame larger than MAX_FRAME_SIZE")
            end = pos + 9 + length
            if end > n:
                break
            sid &= 0x7FFFFFFF
            payload = buf[pos + 9:end]
            pos = end
            if not self._settings_seen and ftype != f.SETTINGS:
                raise ConnectionError_(f.PROTOCOL_ERROR, "the preface's SETTINGS missing")
            if self._cont is not None and (ftype != f.CONTINUATION or sid != self._cont[0]):
                raise ConnectionError_(f.PROTOCOL_ERROR, "header block interrupted")
            if ftype == f.DATA:
                self._data(sid, flags, payload)
            elif ftype == f.HEADERS:
                self._headers(sid, flags, payload)
            elif ftype == f.CONTINUATION:
                if self._cont is None:
                    raise ConnectionError_(f.PROTOCOL_ERROR, "CONTINUATION without HEADERS")
                csid, cflags, block = self._cont
                self._cont = None
                self._header_block(csid, cflags | (flags & f.END_HEADERS), block + payload)
            elif ftype == f.SETTINGS:
                self._settings(sid, flags, payload)
            elif ftype == f.PING:
                if sid:
                    raise ConnectionError_(f.PROTOCOL_ERROR, "PING on a stream")
                if length != 8:
                    raise ConnectionError_(f.FRAME_SIZE_ERROR, "PING not 8 bytes")
                if not flags & f.ACK:
                    self._spend()
                    self._hold_ack(payload)
            elif ftype == f.WINDOW_UPDATE:
                self._window_update(sid, payload)
            elif ftype == f.RST_STREAM:
                self._rst_stream(sid, payload)
            elif ftype == f.PRIORITY:
                if not sid:
                    raise ConnectionError_(f.PROTOCOL_ERROR, "PRIORITY on stream 0")
            elif ftype == f.GOAWAY:
                if sid:
                    raise ConnectionError_(f.PROTOCOL_ERROR, "GOAWAY on a stream")
                if length < 8:
                    raise ConnectionError_(f.FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
                self.go_away()  # the calls open go on
            elif ftype == f.PUSH_PROMISE:
                raise ConnectionError_(f.PROTOCOL_ERROR, "PUSH_PROMISE from a client")
            # Unknown frame types are ignored (RFC 9113, 4.1).
        self._buf = buf[pos:]

    def _spend(self) -> None:
        """Takes a token for a frame that makes the server write (see CONTROL_BURST)."""
        now = time.monotonic()
        self._tokens = min(CONTROL_BURST, self._tokens + (now - self._tokens_at) * CONTROL_RATE)
        self._tokens_at = now
        self._tokens -= 1
        if self._tokens < 0:
            raise ConnectionError_(f.ENHANCE_YOUR_CALM, "too_many_pings")

    def go_away(self, debug: str = "") -> None:
        """GOAWAY NO_ERROR: the calls open go on, none is accepted after them; the
        connection closes when the last has ended."""
        if self._closed or self._going_away:
            return
        self._going_away = True
        self._write(f.goaway(self._last_sid, f.NO_ERROR, debug.encode()))
        self._end_if_done()

    def _settings(self, sid: int, flags: int, payload: bytes) -> None:
        if sid:
            raise ConnectionError_(f.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & f.ACK:
            if payload:
                raise ConnectionError_(f.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ConnectionError_(f.FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
        self._settings_seen = True
        self._spend()
        for key, value in struct.iter_unpack(">HI", payload):
            if key == f.SETTINGS_INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW:
                    raise ConnectionError_(f.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE too large")
                delta, self._peer_initial = value - self._peer_initial, value
                for call in self._calls.values():
                    call.send_window += delta
            elif key == f.SETTINGS_MAX_FRAME_SIZE:
                if not f.MIN_FRAME_SIZE <= value <= f.MAX_FRAME_SIZE_LIMIT:
                    raise ConnectionError_(f.PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
                self._peer_frame = value
            elif key == f.SETTINGS_ENABLE_PUSH and value > 1:
                raise ConnectionError_(f.PROTOCOL_ERROR, "ENABLE_PUSH not 0 or 1")
        self._write(f.frame(f.SETTINGS, f.ACK, 0))
        self._flush()

    def _window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(f.FRAME_SIZE_ERROR, "WINDOW_UPDATE not 4 bytes")
        increment = int.from_bytes(payload) & 0x7FFFFFFF
        if not sid:
            if not increment:
                raise ConnectionError_(f.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > f.MAX_WINDOW:
                raise ConnectionError_(f.FLOW_CONTROL_ERROR, "connection window overflow")
        else:
            call = self._calls.get(sid)
            if call is None:
                return  # a stream already closed: allowed (RFC 9113, 6.9)
            if not increment:
                self._reset(sid, f.PROTOCOL_ERROR)
                return
            call.send_window += increment
            if call.send_window > f.MAX_WINDOW:
                self._reset(sid, f.FLOW_CONTROL_ERROR)
                return
        self._flush()

    def _rst_stream(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(f.FRAME_SIZE_ERROR, "RST_STREAM not 4 bytes")
        if not sid or (sid > self._last_sid and not self._going_away):
            raise ConnectionError_(f.PROTOCOL_ERROR, "RST_STREAM of an idle stream")
        call = self._forget(sid)
        if call is not None and call.task is not None and not call.task.done():
            # Its slot stays taken until the handler has ended.
            self._zombies += 1
            call.task.add_done_callback(self._zombie_ended)
            self._resets += 1
            if self._resets > MAX_RESETS:
                raise ConnectionError_(f.ENHANCE_YOUR_CALM, "too many streams reset")

    def _zombie_ended(self, _: object) -> None:
        self._zombies -= 1

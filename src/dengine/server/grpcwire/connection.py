"""One HTTP/2 connection of the hand-framed gRPC front end: the frame loop, flow control
both ways, SETTINGS/PING/GOAWAY, protocol errors, and unary calls dispatched to grpc
method handlers (docs/grpc-frontend.md). Streaming calls are not served yet."""

from __future__ import annotations

import asyncio
import inspect
import logging
import struct
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import hpack

from dengine.server.grpcwire import frames as f
from dengine.server.grpcwire.call import STREAM_WINDOW, Call, ConnectionError_
from dengine.server.grpcwire.context import AbortError, WireContext

log = logging.getLogger(__name__)

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

_PRIORITY_FIELDS = 5


class Connection(asyncio.Protocol):
    """Serves one client connection for `server` (a GrpcWireServer)."""

    def __init__(self, server: Any) -> None:
        self._server = server
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = MAX_HEADER_LIST
        self._header_cache: dict[bytes, list[tuple[bytes, bytes]]] = {}
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
        if not self._closed and self._transport is not None:
            self._transport.write(b"".join(later))

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
        self._out = []
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
                    self._write(f.frame(f.PING, f.ACK, 0, payload))
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

    def _end_if_done(self) -> None:
        if self._going_away and not self._calls:
            asyncio.get_running_loop().call_soon(self._close_now)

    def _close_now(self) -> None:
        if not self._closed and self._transport is not None:
            self._write_later()
            self._closed = True
            self._transport.close()

    @staticmethod
    def _unpad(flags: int, payload: bytes) -> bytes:
        if not flags & f.PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            raise ConnectionError_(f.PROTOCOL_ERROR, "padding not shorter than the payload")
        return payload[1:len(payload) - payload[0]]

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

    # -- requests

    def _headers(self, sid: int, flags: int, payload: bytes) -> None:
        if not sid:
            raise ConnectionError_(f.PROTOCOL_ERROR, "HEADERS on stream 0")
        block = self._unpad(flags, payload)
        if flags & f.PRIORITY_FLAG:
            if len(block) < _PRIORITY_FIELDS:
                raise ConnectionError_(f.FRAME_SIZE_ERROR, "HEADERS too short for PRIORITY")
            block = block[_PRIORITY_FIELDS:]
        self._header_block(sid, flags, block)

    def _header_block(self, sid: int, flags: int, block: bytes) -> None:
        if len(block) > MAX_HEADER_LIST:
            raise ConnectionError_(f.ENHANCE_YOUR_CALM, "header block too large")
        if not flags & f.END_HEADERS:
            self._cont = (sid, flags, block)
            return
        fields = self._decode(block)
        call = self._calls.get(sid)
        if call is not None or sid <= self._last_sid:
            # Trailers of a request stream (unary calls end with END_STREAM on DATA).
            if call is None or not flags & f.END_STREAM:
                raise ConnectionError_(f.PROTOCOL_ERROR, "HEADERS on a used stream")
            self._half_close(call)
            return
        if not sid & 1:
            raise ConnectionError_(f.PROTOCOL_ERROR, "even stream id from a client")
        if self._going_away:
            return  # after our GOAWAY: ignored (RFC 9113, 6.8); decoded, for the table
        self._last_sid = sid
        if len(self._calls) + self._zombies >= self._server.max_concurrent_streams:
            self._write(f.rst_stream(sid, f.REFUSED_STREAM))
            return
        call = Call(sid, fields, self._peer_initial)
        self._calls[sid] = call
        problem = self._check_request(call)
        server = self._server
        if problem is None and server.max_rpcs is not None and server.rpcs >= server.max_rpcs:
            problem = grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!"
        if problem is not None:
            self._answer_status(sid, call, *problem)
            return
        server.rpcs += 1
        call.counted = True
        call.task = asyncio.get_running_loop().create_task(self._run(sid, call))
        if flags & f.END_STREAM:
            self._half_close(call)

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """The decoded block; cached while the dynamic table stays as it was (a Go client
        sends the same few indexed bytes on every call)."""
        cached = self._header_cache.get(block)
        if cached is not None:
            return cached
        table = self._decoder.header_table.dynamic_entries
        before = tuple(table)
        fields = cast(list[tuple[bytes, bytes]], self._decoder.decode(block, raw=True))
        if tuple(table) != before or len(self._header_cache) >= HEADER_CACHE:
            self._header_cache.clear()
        if tuple(table) == before:
            self._header_cache[block] = fields
        return fields

    def _check_request(self, call: Call) -> tuple[grpc.StatusCode, str] | None:
        """Fills `call.path` and its deadline; a status when the call cannot proceed."""
        method = content_type = encoding = timeout = b""
        for name, value in call.fields:
            if name == b":path":
                call.path = value
            elif name == b":method":
                method = value
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-encoding":
                encoding = value
            elif name == b"grpc-timeout":
                timeout = value
        if method != b"POST" or not content_type.startswith(b"application/grpc"):
            return grpc.StatusCode.UNIMPLEMENTED, "not a gRPC request"
        if encoding and encoding != b"identity":
            return (grpc.StatusCode.UNIMPLEMENTED, "grpc: Decompressor is not installed for "
                    f"grpc-encoding \"{encoding.decode('latin-1')}\"")
        deadline = None
        if timeout:
            try:
                seconds = f.parse_timeout(timeout)
            except ValueError as e:
                return grpc.StatusCode.INTERNAL, str(e)
            deadline = time.monotonic() + seconds
            call.timer = asyncio.get_running_loop().call_later(seconds, self._expire, call)
        if self._certificate is None:
            self._certificate = self._server.certificate(self._transport)
        call.ctx = WireContext(call.fields, deadline, self._peer, self._certificate)
        return None

    def _data(self, sid: int, flags: int, payload: bytes) -> None:
        if not sid:
            raise ConnectionError_(f.PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self._recv_window -= size
        self._consumed += size
        if self._recv_window < 0:
            raise ConnectionError_(f.FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        if sid > self._last_sid:
            if self._going_away:
                return  # a stream ignored after our GOAWAY
            raise ConnectionError_(f.PROTOCOL_ERROR, "DATA on an idle stream")
        body = self._unpad(flags, payload)
        call = self._calls.get(sid)
        if call is None or call.done:
            return  # answered or reset already: dropped (counted above)
        call.recv_window -= size
        if call.recv_window < 0:
            self._reset(sid, f.FLOW_CONTROL_ERROR)
            return
        call.body += body
        if not self._take_messages(call):
            return
        if flags & f.END_STREAM:
            self._half_close(call)
        else:
            self._grant(call)

    def _grant(self, call: Call) -> None:
        """Keeps the stream's window at STREAM_WINDOW less the complete messages its handler
        has not taken: a client writing faster than the handler reads stops there. A
        partial message does not count (its size limit bounds it), so one larger than
        the window still arrives. A WINDOW_UPDATE only for half a window or more."""
        size = STREAM_WINDOW - call.queued - call.recv_window
        if size >= STREAM_WINDOW // 2:
            self._write(f.window_update(call.sid, size))
            call.recv_window += size

    def _take_messages(self, call: Call) -> bool:
        """Moves the complete messages of `call.body` to its inbox; False when one is
        refused on its prefix (compressed, over the size limit) and the call answered."""
        body = call.body
        while len(body) >= 5:
            compressed, length = f.MESSAGE_PREFIX.unpack_from(body)
            limit = self._server.max_receive_message_length
            if compressed:
                self._answer_status(call.sid, call, grpc.StatusCode.INTERNAL,
                                    "grpc: compressed flag set with identity or empty encoding")
                return False
            if length > limit:
                self._answer_status(call.sid, call, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"Received message larger than max ({length} vs. {limit})")
                return False
            if len(body) < 5 + length:
                break
            call.inbox.append(bytes(body[5:5 + length]))
            call.queued += length
            del body[:5 + length]
            call.wake()
        return True

    def _half_close(self, call: Call) -> None:
        if call.done:
            return
        if call.body:
            self._answer_status(call.sid, call, grpc.StatusCode.INTERNAL,
                                "the request ended inside a message")
            return
        call.half_closed = True
        call.wake()

    async def _next_message(self, call: Call) -> bytes | None:
        """The call's next request message; None after the client's END_STREAM."""
        while not call.inbox:
            if call.half_closed:
                return None
            call.waiter = asyncio.get_running_loop().create_future()
            await call.waiter
        message = call.inbox.popleft()
        call.queued -= len(message)
        if not call.half_closed:
            self._grant(call)
        return message

    async def _requests(self, call: Call, decode: Any) -> AsyncIterator[Any]:
        while (message := await self._next_message(call)) is not None:
            yield decode(message) if decode is not None else message

    def _expire(self, call: Call) -> None:
        """The deadline passed: DEADLINE_EXCEEDED (in the trailers if the answer has begun),
        RST_STREAM CANCEL, the handler cancelled (as grpc core does)."""
        sid = call.sid
        if self._calls.get(sid) is not call or self._closed:
            return
        call.timer = None
        begun = call.headers_sent
        status = f.status_fields(grpc.StatusCode.DEADLINE_EXCEEDED.value[0], "Deadline Exceeded")
        self._write(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, sid,
                            status if begun else f.RESPONSE_HEADERS + status))
        self._write(f.rst_stream(sid, f.CANCEL))
        self._forget(sid)

    # -- answers

    async def _run(self, sid: int, call: Call) -> None:
        ctx = call.ctx
        assert ctx is not None
        try:
            handler = await self._server.handler(call.path, ctx)
            if handler is None:
                self._finish(sid, call, None, grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
                return
            decode, encode = handler.request_deserializer, handler.response_serializer
            if handler.stream_stream is not None:
                call.streaming = True
                ctx.writer = lambda message: self._send(call, message, encode)
                result = handler.stream_stream(self._requests(call, decode), ctx)
            else:
                request = await self._next_message(call)
                while not call.half_closed:  # exactly one message, then END_STREAM
                    call.waiter = asyncio.get_running_loop().create_future()
                    await call.waiter
                if request is None or call.inbox:
                    self._finish(sid, call, None, grpc.StatusCode.INTERNAL,
                                 "a request that is not one message")
                    return
                arg = decode(request) if decode is not None else request
                if handler.unary_unary is not None:
                    response = await handler.unary_unary(arg, ctx)
                    if encode is not None:
                        response = encode(response)
                    self._finish(sid, call, bytes(response), ctx.code, ctx.details)
                    return
                ctx.writer = lambda message: self._send(call, message, encode)
                result = handler.unary_stream(arg, ctx)
            if inspect.isasyncgen(result):
                async for message in result:
                    await self._send(call, message, encode)
            else:
                await result
            self._finish(sid, call, None, ctx.code, ctx.details)
        except AbortError:
            code = ctx.code if ctx.code != grpc.StatusCode.OK else grpc.StatusCode.UNKNOWN
            self._finish(sid, call, None, code, ctx.details)
        except asyncio.CancelledError:
            if self._calls.get(sid) is call:
                self._forget(sid)
            raise
        except Exception as e:
            log.exception("gRPC handler of %s failed", call.path.decode(errors="replace"))
            self._finish(sid, call, None, grpc.StatusCode.UNKNOWN,
                         f"Unexpected {type(e)}: {e}")

    async def _send(self, call: Call, message: Any, encode: Any) -> None:
        """One message of a streaming answer; returns once it is within the send windows
        (back-pressure on the handler)."""
        if self._calls.get(call.sid) is not call or self._closed:
            raise asyncio.CancelledError  # the stream or connection is gone
        data = bytes(encode(message) if encode is not None else message)
        if not call.headers_sent:
            call.headers_sent = True
            self._write(f.frame(f.HEADERS, f.END_HEADERS, call.sid, f.RESPONSE_HEADERS))
        self._pending.append((call.sid, memoryview(f.MESSAGE_PREFIX.pack(0, len(data)) + data),
                              b""))
        self._flush()
        while any(p[0] == call.sid for p in self._pending):
            call.drained = asyncio.get_running_loop().create_future()
            self._draining.add(call)
            await call.drained

    def _finish(self, sid: int, call: Call, response: bytes | None,
                code: grpc.StatusCode, details: str) -> None:
        if self._calls.get(sid) is not call or self._closed:
            return
        trailing = call.ctx.trailing if call.ctx is not None else ()
        status = f.status_fields(code.value[0], details, trailing)
        if self._resets:
            self._resets -= 1
        if response is None and call.headers_sent:
            self._pending.append((sid, memoryview(b""),
                                  f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, sid, status)))
            self._flush()
            return
        if response is None:
            self._forget(sid)
            self._write(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, sid,
                                f.RESPONSE_HEADERS + status))
            return
        self._write(f.frame(f.HEADERS, f.END_HEADERS, sid, f.RESPONSE_HEADERS))
        call.headers_sent = True
        data = f.MESSAGE_PREFIX.pack(0, len(response)) + response
        self._pending.append((sid, memoryview(data),
                              f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, sid, status)))
        self._flush()

    def _answer_status(self, sid: int, call: Call, code: grpc.StatusCode,
                       details: str) -> None:
        """A trailers-only answer before the request is complete: the stream is then
        reset with NO_ERROR so the client stops sending (RFC 9113, 8.1)."""
        call.done = True
        self._finish(sid, call, None, code, details)
        self._write(f.rst_stream(sid, f.NO_ERROR))

    def _flush(self) -> None:
        """Sends queued answers in order, as far as the send windows allow."""
        pending, self._pending = self._pending, []
        for i, (sid, data, trailers) in enumerate(pending):
            call = self._calls.get(sid)
            if call is None:
                continue
            while data:
                size = min(len(data), self._send_window, call.send_window, self._peer_frame)
                if size <= 0:
                    break
                self._write(f.frame(f.DATA, 0, sid, bytes(data[:size])))
                data = data[size:]
                self._send_window -= size
                call.send_window -= size
            if data:
                self._pending = [(sid, data, trailers), *pending[i + 1:], *self._pending]
                break
            if trailers:
                self._write(trailers)
                self._forget(sid)
        if self._draining:
            draining, self._draining = self._draining, set()
            for call in draining:  # each checks whether its message left
                if call.drained is not None and not call.drained.done():
                    call.drained.set_result(None)

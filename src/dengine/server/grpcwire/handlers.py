"""The handler-facing part of a connection: a call's request messages handed to its
grpc method handler (one, or an async iterator for streams), the handler run as a task,
its answer framed (trailers-only, constant-bytes unary answer, or messages sent as the
windows allow), the deadline (docs/grpc-frontend.md, "Streams")."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from dengine.server.grpcwire import frames as f
from dengine.server.grpcwire.call import Call
from dengine.server.grpcwire.context import AbortError
from dengine.server.grpcwire.state import ConnectionState

log = logging.getLogger(__name__)


class Handlers(ConnectionState):
    """Runs calls' handlers and frames their answers."""

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

    async def _run(self, sid: int, call: Call) -> None:
        ctx = call.ctx
        assert ctx is not None
        try:
            handler = self._server.methods.get(call.path)
            if handler is None:
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
                if call.half_closed and call.inbox:  # all there already (the usual case)
                    request: bytes | None = call.inbox.popleft()
                    call.queued = 0
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
                    call.task = None  # ended: not to be cancelled by its own _forget
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
        status = (f.OK_STATUS if code is grpc.StatusCode.OK and not details and not trailing
                  else f.status_fields(code.value[0], details, trailing))
        if self._resets:
            self._resets -= 1
        if response is None:
            end = f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, sid,
                          status if call.headers_sent else f.RESPONSE_HEADERS + status)
            if not call.half_closed:
                # The client may still be sending: RST_STREAM NO_ERROR stops it (RFC 9113,
                # 8.1; grpc core's answer; without it grpc's client failed its next write
                # with "Internal error from Core" instead of reading this status).
                end += f.rst_stream(sid, f.NO_ERROR)
            if call.headers_sent:
                self._pending.append((sid, memoryview(b""), end))
                self._flush()
            else:
                self._forget(sid)
                self._write(end)
            return
        call.headers_sent = True
        size = len(response) + 5
        trailers = f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, sid, status)
        if (not self._pending and size <= self._peer_frame and size <= self._send_window
                and size <= call.send_window):
            # The usual unary answer: all of it at once.
            self._send_window -= size
            call.send_window -= size
            self._write(f.frame(f.HEADERS, f.END_HEADERS, sid, f.RESPONSE_HEADERS)
                        + f.FRAME_HEADER.pack(size >> 16, size & 0xFFFF, f.DATA, 0, sid)
                        + f.MESSAGE_PREFIX.pack(0, size - 5) + response + trailers)
            self._forget(sid)
            return
        self._write(f.frame(f.HEADERS, f.END_HEADERS, sid, f.RESPONSE_HEADERS))
        data = f.MESSAGE_PREFIX.pack(0, len(response)) + response
        self._pending.append((sid, memoryview(data), trailers))
        self._flush()

    def _answer_status(self, sid: int, call: Call, code: grpc.StatusCode,
                       details: str) -> None:
        """A trailers-only answer before the request is complete (then reset with
        NO_ERROR by `_finish`: the client stops sending)."""
        call.done = True
        self._finish(sid, call, None, code, details)

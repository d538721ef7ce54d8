"""The request side of a connection: HEADERS (and CONTINUATION) decoded into calls,
checked (method, content-type, encoding, timeout, limits) and started; DATA cut into
messages for them, with their receive windows (docs/grpc-frontend.md, "Data flow")."""

from __future__ import annotations

import asyncio
import re
import time
import zlib
from typing import cast

import grpc

from dengine.server.grpcwire import frames as f
from dengine.server.grpcwire.call import Call, ConnectionError_
from dengine.server.grpcwire.context import Head, WireContext
from dengine.server.grpcwire.handlers import Handlers
from dengine.server.grpcwire.state import HEADER_CACHE, MAX_HEADER_LIST

_PRIORITY_FIELDS = 5
# grpc-go's test of a gRPC content-type: application/grpc, alone or with +subtype or ;params
_GRPC_CONTENT_TYPE = re.compile(rb"application/grpc(?:$|[+;])")
# grpc-encoding -> zlib's wbits (deflate is zlib's format, gzip gzip's), as grpc.aio takes
# them; a python or Go client configured to compress uses one of these.
_WBITS = {b"gzip": 31, b"deflate": 15}


class Incoming(Handlers):
    """Turns request frames into calls and their messages."""

    @staticmethod
    def _unpad(flags: int, payload: bytes) -> bytes:
        if not flags & f.PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            raise ConnectionError_(f.PROTOCOL_ERROR, "padding not shorter than the payload")
        return payload[1:len(payload) - payload[0]]

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
        head = self._decode(block)
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
        call = Call(sid, head, self._peer_initial)
        self._calls[sid] = call
        problem = self._check_request(call)
        server = self._server
        if problem is None and server.max_rpcs is not None and server.rpcs >= server.max_rpcs:
            problem = grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!", 200
        if problem is not None:
            code, details, http = problem
            if http == 200:
                self._answer_status(sid, call, code, details)
            else:
                self._not_grpc(sid, call, http, code, details)
            return
        server.rpcs += 1
        call.counted = True
        call.task = asyncio.get_running_loop().create_task(self._run(sid, call))
        if flags & f.END_STREAM:
            self._half_close(call)

    def _decode(self, block: bytes) -> Head:
        """The decoded block; cached while the dynamic table stays as it was (a Go client
        sends the same few indexed bytes on every call)."""
        cached = self._header_cache.get(block)
        if cached is not None:
            return cached
        table = self._decoder.header_table.dynamic_entries
        before = tuple(table)
        head = Head(cast(list[tuple[bytes, bytes]], self._decoder.decode(block, raw=True)))
        if tuple(table) != before or len(self._header_cache) >= HEADER_CACHE:
            self._header_cache.clear()
        if tuple(table) == before:
            self._header_cache[block] = head
        return head

    def _check_request(self, call: Call) -> tuple[grpc.StatusCode, str, int] | None:
        """Fills `call`'s deadline, encoding and context; a status (and the HTTP status
        to answer it with) when the call cannot proceed."""
        head = call.head
        method, content_type = head.method, head.content_type
        encoding, timeout = head.encoding, head.timeout
        # What every client sends, else the other forms grpc-go takes:
        if content_type != b"application/grpc" and not _GRPC_CONTENT_TYPE.match(content_type):
            return (grpc.StatusCode.INVALID_ARGUMENT, "invalid gRPC request content-type "
                    f"\"{content_type.decode('latin-1')}\"", 415)
        if method != b"POST":
            return (grpc.StatusCode.INTERNAL, "Received a HEADERS frame with :method "
                    f"\"{method.decode('latin-1')}\" which should be POST", 405)
        if encoding and encoding != b"identity":
            wbits = _WBITS.get(encoding)
            if wbits is None:
                return (grpc.StatusCode.UNIMPLEMENTED, "grpc: Decompressor is not installed "
                        f"for grpc-encoding \"{encoding.decode('latin-1')}\"", 200)
            call.wbits = wbits
        deadline = None
        if timeout:
            try:
                seconds = f.parse_timeout(timeout)
            except ValueError:
                return grpc.StatusCode.INTERNAL, "Error parsing 'grpc-timeout' metadata", 200
            deadline = time.monotonic() + seconds
            call.timer = asyncio.get_running_loop().call_later(seconds, self._expire, call)
        if self._certificate is None:
            self._certificate = self._server.certificate(self._transport)
        call.ctx = WireContext(head, deadline, self._peer, self._certificate)
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
        if not self._take_messages(call, body):
            return
        if flags & f.END_STREAM:
            self._half_close(call)
        else:
            self._grant(call)

    def _not_grpc(self, sid: int, call: Call, http: int, code: grpc.StatusCode,
                  details: str) -> None:
        """A request that is not a gRPC call (another content-type or method), answered
        as grpc-go answers it: that HTTP status with gRPC's status
        fields, then RST_STREAM NO_ERROR so that the client stops sending."""
        call.done = True
        self._forget(sid)
        self._write(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, sid,
                            f.error_headers(http) + f.status_fields(code.value[0], details)))
        self._write(f.rst_stream(sid, f.NO_ERROR))

    def _take_messages(self, call: Call, data: bytes) -> bool:
        """Moves the complete messages of `call.body` and `data` to its inbox (inflated if
        compressed); False when one is refused (compressed without an encoding, over the
        size limit, corrupt) and the call answered."""
        if not call.body and len(data) >= 5:  # one whole message (a unary request)
            compressed, length = f.MESSAGE_PREFIX.unpack_from(data)
            if (length + 5 == len(data) and not compressed
                    and length <= self._server.max_receive_message_length):
                call.inbox.append(data[5:])
                call.queued += length
                call.wake()
                return True
        body = call.body
        body += data
        while len(body) >= 5:
            compressed, length = f.MESSAGE_PREFIX.unpack_from(body)
            limit = self._server.max_receive_message_length
            if compressed and not call.wbits:
                self._answer_status(call.sid, call, grpc.StatusCode.INTERNAL,
                                    "grpc: compressed flag set with identity or empty encoding")
                return False
            if length > limit:
                self._answer_status(call.sid, call, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"Received message larger than max ({length} vs. {limit})")
                return False
            if len(body) < 5 + length:
                break
            message = bytes(body[5:5 + length])
            del body[:5 + length]
            if compressed:
                inflated = self._inflate(call, message, limit)
                if inflated is None:
                    return False
                message = inflated
            call.inbox.append(message)
            call.queued += len(message)
            call.wake()
        return True

    def _inflate(self, call: Call, data: bytes, limit: int) -> bytes | None:
        """A compressed message inflated, up to `limit` bytes (a small message may
        inflate to gigabytes); None when refused and the call answered."""
        inflater = zlib.decompressobj(call.wbits)
        try:
            message = inflater.decompress(data, limit + 1)
        except zlib.error as e:
            message, problem = b"", str(e)
        else:
            problem = "" if inflater.eof else "truncated data"
        if len(message) > limit:
            self._answer_status(call.sid, call, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                "Decompressed message larger than max")  # grpc.aio's text
            return None
        if problem:
            self._answer_status(call.sid, call, grpc.StatusCode.INTERNAL,
                                f"grpc: failed to decompress the received message: {problem}")
            return None
        return message

    def _half_close(self, call: Call) -> None:
        if call.done:
            return
        if call.body:
            self._answer_status(call.sid, call, grpc.StatusCode.INTERNAL,
                                "the request ended inside a message")
            return
        call.half_closed = True
        call.wake()

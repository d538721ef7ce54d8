"""One gRPC call's state on a hand-framed connection (docs/grpc-frontend.md), and the
connection error that ends a connection."""

from __future__ import annotations

import asyncio
from collections import deque

from dengine.server.grpcwire.context import Head, WireContext

STREAM_WINDOW = 1 << 20  # granted per stream (SETTINGS_INITIAL_WINDOW_SIZE)


class ConnectionError_(Exception):
    """A connection error (RFC 9113, 5.4.1): GOAWAY with `code`, then close."""

    def __init__(self, code: int, debug: str) -> None:
        super().__init__(debug)
        self.code = code


class Call:
    """One stream's call: its request messages as they arrive, its handler task."""

    __slots__ = ("body", "counted", "ctx", "done", "drained", "half_closed", "head",
                 "headers_sent", "inbox", "path", "queued", "recv_window", "send_window", "sid",
                 "streaming", "task", "timer", "waiter", "wbits")

    def __init__(self, sid: int, head: Head, send_window: int) -> None:
        self.sid = sid
        self.head = head
        self.path = head.path
        self.body = bytearray()  # bytes of a message not complete yet
        self.inbox: deque[bytes] = deque()  # complete messages not taken by the handler
        self.half_closed = False  # the client's END_STREAM arrived
        self.waiter: asyncio.Future[None] | None = None  # the handler waits for a message
        self.streaming = False  # the handler takes a stream of requests
        self.queued = 0  # bytes of the inbox's messages
        self.recv_window = STREAM_WINDOW
        self.send_window = send_window
        self.headers_sent = False
        self.drained: asyncio.Future[None] | None = None  # a writer waits for the windows
        self.ctx: WireContext | None = None
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None  # the deadline's
        self.done = False  # answered (or refused): later DATA is dropped
        self.counted = False  # in the server's count of calls in progress
        self.wbits = 0  # how its compressed messages inflate (zlib's wbits; 0: identity)

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

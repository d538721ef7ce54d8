"""The per-call context handed to servicers: the part of grpc.aio's ServicerContext that
dengine's handlers use (docs/grpc-frontend.md, "The per-call context")."""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import grpc

# Request headers that are transport, not metadata (grpc leaves them out too).
_NOT_METADATA = frozenset((b"te", b"content-type", b"grpc-timeout", b"grpc-encoding",
                           b"grpc-accept-encoding"))


class AbortError(Exception):
    """Raised by `abort` (as grpc.aio's AbortError): the call ends with the status set."""


def metadata_of(fields: list[tuple[bytes, bytes]]) -> tuple[tuple[str, str | bytes], ...]:
    """Invocation metadata from decoded request headers (`-bin` values base64-decoded)."""
    out: list[tuple[str, str | bytes]] = []
    for name, value in fields:
        if name[:1] == b":" or name in _NOT_METADATA:
            continue
        if name.endswith(b"-bin"):
            out.append((name.decode(), base64.b64decode(value + b"=" * (-len(value) % 4))))
        else:
            out.append((name.decode(), value.decode("latin-1")))
    return tuple(out)


class Head:
    """A request's decoded header block and what is read from it: its path, timeout,
    encoding and metadata. A connection keeps it for as long as the same block bytes
    mean the same fields (a client repeats a few indexed bytes on every call), so each
    is read once, not per call."""

    __slots__ = ("_metadata", "content_type", "encoding", "fields", "method", "path",
                 "timeout")

    def __init__(self, fields: list[tuple[bytes, bytes]]) -> None:
        self.fields = fields
        self._metadata: tuple[tuple[str, str | bytes], ...] | None = None
        self.path = self.method = self.content_type = self.encoding = self.timeout = b""
        for name, value in fields:
            if name == b":path":
                self.path = value
            elif name == b":method":
                self.method = value
            elif name == b"content-type":
                self.content_type = value
            elif name == b"grpc-encoding":
                self.encoding = value
            elif name == b"grpc-timeout":
                self.timeout = value

    def metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        if self._metadata is None:
            self._metadata = metadata_of(self.fields)
        return self._metadata


class WireContext:
    """One call's context. `deadline` is on time.monotonic's clock (None: no timeout)."""

    __slots__ = ("_certificate", "_head", "_peer", "code", "deadline", "details",
                 "trailing", "writer")

    def __init__(self, head: Head, deadline: float | None,
                 peer: str, certificate: dict[str, list[bytes]]) -> None:
        self._head = head
        self._peer = peer
        self._certificate = certificate
        self.deadline = deadline
        self.code = grpc.StatusCode.OK
        self.details = ""
        self.trailing: tuple[tuple[str, str | bytes], ...] = ()
        # Sends one message of a streaming answer (set by the connection for streams).
        self.writer: Callable[[Any], Awaitable[None]] | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._head.metadata()

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    async def abort(self, code: grpc.StatusCode, details: str = "",
                    trailing_metadata: Any = ()) -> NoReturn:
        self.code, self.details = code, details
        if trailing_metadata:
            self.trailing = tuple(trailing_metadata)
        raise AbortError(details)

    async def write(self, message: Any) -> None:
        """One message of a streaming answer, once the send windows let it go."""
        if self.writer is None:
            raise RuntimeError("write() on a unary call")
        await self.writer(message)

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.trailing = tuple(metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> dict[str, list[bytes]]:
        """The verified TLS client certificate as grpc gives it ({} without one)."""
        return self._certificate

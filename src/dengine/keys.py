"""Keys and values are bytes everywhere below the public API; a str is taken as UTF-8."""

from __future__ import annotations

from typing import Any

from dengine.errors import InvalidRequest


def as_bytes(data: Any, what: str = "key") -> bytes:
    """`data` as bytes (str -> UTF-8); InvalidRequest naming `what` for any other type."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise InvalidRequest(f"{what} must be bytes or str, got {type(data).__name__}")

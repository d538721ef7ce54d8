"""Helpers for node tests: free ports and running coroutines with a deadline."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run a test coroutine on a fresh event loop; a hang fails the test instead of CI."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(predicate: Any, timeout: float = 10.0, interval: float = 0.01) -> None:
    """Wait until predicate() is true; AssertionError after timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)

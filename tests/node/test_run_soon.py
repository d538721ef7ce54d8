"""logthread.run_soon: run_in_executor's answers (result, error, cancel before start)
without chaining two futures."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from dengine.errors import StorageError
from dengine.node.logthread import run_soon


def test_run_soon_answers_as_run_in_executor_does() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(max_workers=1)
        try:
            threads: list[str] = []
            await run_soon(loop, executor, lambda a, b: threads.append(f"{a}{b}"), "x", "y")
            assert threads == ["xy"]

            def fail() -> None:
                raise StorageError("disk gone")

            with pytest.raises(StorageError, match="disk gone"):
                await run_soon(loop, executor, fail)

            # cancelled while an earlier call holds the thread: it never runs
            gate = threading.Event()
            ran: list[int] = []
            first = run_soon(loop, executor, gate.wait)
            second = run_soon(loop, executor, ran.append, 2)
            second.cancel()
            await asyncio.sleep(0)  # its done callbacks run (as run_in_executor's do)
            gate.set()
            await first
            await run_soon(loop, executor, ran.append, 3)  # after the cancelled one (FIFO)
            assert ran == [3] and second.cancelled()
        finally:
            executor.shutdown(wait=True)

    asyncio.run(main())

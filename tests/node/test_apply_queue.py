"""The apply runs beside the next turns: writes and reads still wait for the real apply."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from node_helpers import free_port, run

from dengine import Engine
from dengine.errors import DengineError, StorageError


async def _lone_engine(tmp_path: Path, **extra: Any) -> Engine:
    engine = await Engine.start(
        str(tmp_path / "n1"), tick_ms=5, election_timeout_ms=50, heartbeat_interval_ms=15,
        clock_drift_ms=10, listen_peer=f"127.0.0.1:{free_port()}",
        listen_client=f"127.0.0.1:{free_port()}", **extra,
    )
    await engine.wait_ready(timeout=5)
    return engine


def test_slow_apply_writes_resolve_only_once_applied_in_commit_order(tmp_path: Path) -> None:
    async def main() -> None:
        engine = await _lone_engine(tmp_path)
        node = engine._node
        sm = node._sm
        assert sm is not None
        applied_chunks: list[list[int]] = []
        real_apply = node._apply._apply

        def slow_apply(entries: Any) -> Any:
            time.sleep(0.005)  # the next turns persist meanwhile
            applied_chunks.append([e.index for e in entries])
            return real_apply(entries)

        node._apply._apply = slow_apply  # type: ignore[method-assign]
        seen: list[bool] = []

        async def put_and_check(i: int) -> None:
            key, value = b"k%d" % (i % 7), b"v%d" % i
            await engine.put(key, value)
            # resolved: this node's state machine holds the write (or a later one to key)
            seen.append(sm.last_applied().index <= node.applied_index
                        and sm.get(key) is not None)

        try:
            for _ in range(5):
                await asyncio.gather(*(put_and_check(i) for i in range(60)))
                got = await engine.get(b"k6", "linearizable")
                assert got == sm.get(b"k6") and got is not None
            flat = [i for chunk in applied_chunks for i in chunk]
            assert flat == sorted(flat) and len(flat) == len(set(flat))
            assert len(applied_chunks) > 1
            assert all(seen) and len(seen) == 300
        finally:
            await engine.stop()

    run(main())


def test_a_failing_apply_stops_the_node_and_fails_pending_writes(tmp_path: Path) -> None:
    async def main() -> None:
        engine = await _lone_engine(tmp_path)
        node = engine._node
        await engine.put(b"a", b"1")
        calls = threading.Event()

        def broken_apply(entries: Any) -> Any:
            calls.set()
            raise StorageError("disk gone")

        node._apply._apply = broken_apply  # type: ignore[method-assign]
        try:
            with pytest.raises(DengineError):
                await engine.put(b"b", b"2", timeout=5.0)
            assert calls.is_set()
            assert not node.running
            with pytest.raises(DengineError, match="disk gone"):
                await engine.put(b"c", b"3")
        finally:
            await engine.stop()

    run(main())


def test_small_writes_are_persisted_and_applied_on_the_loop(tmp_path: Path) -> None:
    """One put at a time: no round trip through the log or apply thread (latency)."""

    async def main() -> None:
        engine = await _lone_engine(tmp_path)
        node = engine._node
        threads: dict[str, set[str]] = {"persist": set(), "apply": set()}
        real_persist, real_apply = node._persist, node._apply._apply

        def persist(rd: Any, save: bool) -> None:
            threads["persist"].add(threading.current_thread().name)
            real_persist(rd, save)

        def apply(entries: Any) -> Any:
            threads["apply"].add(threading.current_thread().name)
            return real_apply(entries)

        node._persist = persist  # type: ignore[method-assign]
        node._apply._apply = apply  # type: ignore[method-assign]
        try:
            for i in range(20):
                await engine.put(b"k%d" % i, b"v")
            loop_thread = threading.current_thread().name
            assert threads == {"persist": {loop_thread}, "apply": {loop_thread}}
            assert await engine.get(b"k19") == b"v"
        finally:
            await engine.stop()

    run(main())


def test_a_small_chunk_never_overtakes_one_queued_on_the_apply_thread(tmp_path: Path) -> None:
    async def main() -> None:
        engine = await _lone_engine(tmp_path)
        node = engine._node
        applied: list[tuple[int, bool]] = []  # (first index, on the loop thread)
        loop_thread = threading.current_thread()
        real_apply = node._apply._apply

        def apply(entries: Any) -> Any:
            on_loop = threading.current_thread() is loop_thread
            if not on_loop:
                time.sleep(0.05)  # a big chunk still applying when the small one commits
            applied.append((entries[0].index, on_loop))
            return real_apply(entries)

        node._apply._apply = apply  # type: ignore[method-assign]
        try:
            # more than _INLINE_MAX_ENTRIES: applied on the apply thread
            big = engine.write([_insert(b"big%d" % i) for i in range(1100)])
            task = asyncio.ensure_future(big)
            await asyncio.sleep(0.01)  # committed, queued on the apply thread, sleeping
            await engine.put(b"small", b"1")
            assert task.done()  # resolved in commit order, before the small write
            firsts = [index for index, _ in applied]
            assert firsts == sorted(firsts)
            assert not applied[0][1]  # the big chunk went to the apply thread
            assert await engine.get(b"small") == b"1"
        finally:
            await engine.stop()

    run(main())


def _insert(key: bytes, value: bytes = b"x" * 100) -> Any:
    from dengine.proto import WriteCommand

    cmd = WriteCommand()
    cmd.insert.key = key
    cmd.insert.value = value
    return cmd


def test_few_but_large_entries_are_persisted_and_applied_on_the_threads(tmp_path: Path) -> None:
    """The inline bound counts bytes too (known from the proposal, not measured per entry)."""

    async def main() -> None:
        engine = await _lone_engine(tmp_path)
        node = engine._node
        loop_thread = threading.current_thread()
        on_loop: dict[str, list[bool]] = {"persist": [], "apply": []}
        real_persist, real_apply = node._persist, node._apply._apply

        def persist(rd: Any, save: bool) -> None:
            if rd.entries:
                on_loop["persist"].append(threading.current_thread() is loop_thread)
            real_persist(rd, save)

        def apply(entries: Any) -> Any:
            on_loop["apply"].append(threading.current_thread() is loop_thread)
            return real_apply(entries)

        node._persist = persist  # type: ignore[method-assign]
        node._apply._apply = apply  # type: ignore[method-assign]
        try:
            big = b"v" * (400 * 1024)
            await engine.write([_insert(b"big%d" % i, big) for i in range(3)])  # 1.2 MB
            assert on_loop == {"persist": [False], "apply": [False]}
            await engine.put(b"small", b"1")
            assert on_loop == {"persist": [False, True], "apply": [False, True]}
            assert await engine.get(b"big2") == big
        finally:
            await engine.stop()

    run(main())


@pytest.mark.parametrize("batch", [False, True])
def test_small_readies_are_persisted_on_the_log_thread_under_concurrent_load(
        tmp_path: Path, batch: bool) -> None:
    """With many writes waiting, the loop keeps serving while the log thread fsyncs
    (logthread.PERSIST_OFF_LOOP_WAITING); a lone write is persisted on the loop, and so is
    a Ready of PERSIST_OFF_LOOP_MAX_ENTRIES commands or more (its group commit is large
    already), in entries of their own or (batch_writes) in one batch entry."""

    def entries(writes: int) -> int:
        return 1 if batch else writes

    async def main() -> None:
        engine = await _lone_engine(tmp_path, batch_writes=batch)
        node = engine._node
        loop_thread = threading.current_thread()
        on_loop: list[tuple[int, bool]] = []  # (entries, persisted on the loop thread)
        real_persist = node._persist

        def persist(rd: Any, save: bool) -> None:
            if rd.entries:
                on_loop.append((len(rd.entries), threading.current_thread() is loop_thread))
            real_persist(rd, save)

        node._persist = persist  # type: ignore[method-assign]
        try:
            await engine.put(b"alone", b"1")
            assert on_loop == [(1, True)]
            on_loop.clear()
            # 32 writes proposed in one turn: one Ready of 32 commands, on the log thread
            await asyncio.gather(*(engine.put(b"k%d" % i, b"v") for i in range(32)))
            assert on_loop[0] == (entries(32), False)
            assert await engine.get(b"k31") == b"v"
            on_loop.clear()
            # 128 in one turn: a group commit large already, on the loop (no hand-off)
            await asyncio.gather(*(engine.put(b"m%d" % i, b"v") for i in range(128)))
            assert on_loop[0] == (entries(128), True)
            assert await engine.get(b"m127") == b"v"
        finally:
            await engine.stop()

    run(main())

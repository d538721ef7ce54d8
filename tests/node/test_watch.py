"""Engine.watch: the embedded watch over a node's applied state (node/watch.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from node_helpers import FAST, run

from dengine import Compacted, Engine, InvalidRequest, Unavailable
from dengine.api import EventType, WatchEvent


async def take(watch: object, n: int, timeout: float = 5.0) -> list[WatchEvent]:
    out: list[WatchEvent] = []

    async def go() -> None:
        async for event in watch:  # type: ignore[attr-defined]
            out.append(event)
            if len(out) == n:
                return

    await asyncio.wait_for(go(), timeout)
    return out


def test_engine_watch_live_history_filters_and_compaction(tmp_path: Path) -> None:
    async def main() -> None:
        async with await Engine.start(str(tmp_path), **FAST,
                                      auto_compaction_retention="0") as engine:
            await engine.wait_ready(timeout=5)
            first = (await engine.put(b"/a/1", b"x")).revision
            live = engine.watch(b"/a/", prefix=True, prev_kv=True)
            reader = asyncio.ensure_future(take(live, 3))
            await asyncio.sleep(0.05)  # the watch starts "now", after the first put
            await engine.put(b"/a/2", b"y")
            await engine.put(b"/b", b"not watched")
            await engine.put(b"/a/1", b"x2")
            await engine.delete(b"/a/2")
            events = await reader
            assert [(e.type, e.kv.key, e.kv.value) for e in events] == [
                (EventType.PUT, b"/a/2", b"y"), (EventType.PUT, b"/a/1", b"x2"),
                (EventType.DELETE, b"/a/2", b"")]
            assert events[1].prev_kv is not None and events[1].prev_kv.value == b"x"
            assert events[2].prev_kv is not None and events[2].prev_kv.value == b"y"
            assert [e.revision for e in events] == [first + 1, first + 3, first + 4]
            assert live.revision == first + 4
            await live.close()
            # history, with a filter
            past = engine.watch(b"/a/", prefix=True, start_revision=first,
                                filters=["nodelete"])
            assert [e.kv.value for e in await take(past, 3)] == [b"x", b"y", b"x2"]
            await past.close()
            # compaction: below it, Compacted with etcd's compact_revision; at it, fine
            await engine.compact(first + 2)
            with pytest.raises(Compacted) as info:
                await take(engine.watch(b"/a/", prefix=True, start_revision=first), 1)
            assert info.value.compact_revision == first + 2
            at = engine.watch(b"/a/", prefix=True, start_revision=first + 2)
            assert [e.revision for e in await take(at, 2)] == [first + 3, first + 4]
            # a future start waits for its revision
            future = engine.watch(b"/a/", prefix=True, start_revision=first + 6)
            reader = asyncio.ensure_future(take(future, 1))
            await engine.put(b"/a/3", b"skipped")
            await engine.put(b"/a/4", b"seen")
            assert [e.kv.value for e in await reader] == [b"seen"]
            with pytest.raises(InvalidRequest):
                engine.watch(b"b", b"a")
            with pytest.raises(InvalidRequest):
                engine.watch(b"a", filters=["nope"])
            # a stopped node ends its watches with Unavailable
            waiting = asyncio.ensure_future(take(engine.watch(b"/z"), 1))
            await asyncio.sleep(0.05)
        with pytest.raises(Unavailable):
            await waiting

    run(main())


def test_engine_watch_of_a_big_history_comes_in_whole_revisions(tmp_path: Path) -> None:
    async def main() -> None:
        async with await Engine.start(str(tmp_path), **FAST,
                                      auto_compaction_retention="0") as engine:
            await engine.wait_ready(timeout=5)
            from dengine import Op
            start = (await engine.put(b"k0", b"v")).revision
            for i in range(30):  # a txn of 100 puts per revision: batches of whole ones
                await engine.txn(success=[Op.put(b"k%d/%d" % (i, j), b"v") for j in range(100)])
            watch = engine.watch(b"k", prefix=True, start_revision=start)
            events = await take(watch, 1 + 30 * 100, timeout=30)
            assert [e.revision for e in events] == sorted(e.revision for e in events)
            assert len({(e.kv.key, e.revision) for e in events}) == len(events)
            await watch.close()

    run(main())

"""Client.watch and SyncClient.watch (client/watch.py over the native WatchPoll and gRPC):
live events, history, filters, compaction, close; against a real engine (one node:
its leadership never moves under a loaded CI machine; resumption is tests/e2e)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from test_kv_api import serving

from dengine import Client, SyncClient
from dengine.api import EventType, WatchEvent
from dengine.errors import Compacted, InvalidRequest


async def take(watch: Any, n: int, timeout: float = 10.0) -> list[WatchEvent]:
    out: list[WatchEvent] = []

    async def go() -> None:
        async for event in watch:
            out.append(event)
            if len(out) == n:
                return

    await asyncio.wait_for(go(), timeout)
    return out


@pytest.mark.parametrize("transport", ["native", "grpc"])
def test_client_watch(tmp_path: Path, transport: str) -> None:
    async def main() -> None:
        async with serving(tmp_path, nodes=1) as (_, address), Client(
                address, transport=transport) as client:
            first = (await client.put(b"/w/a", b"1")).revision
            live = client.watch(b"/w/", prefix=True, prev_kv=True)
            reader = asyncio.ensure_future(take(live, 3))
            await asyncio.sleep(0.2)  # the first poll fixes "now"
            await client.put(b"/w/b", b"2")
            await client.put(b"/x", b"no")
            await client.put(b"/w/a", b"3")
            await client.delete(b"/w/b")
            events = await reader
            assert [(e.type, e.kv.key, e.kv.value, e.revision) for e in events] == [
                (EventType.PUT, b"/w/b", b"2", first + 1),
                (EventType.PUT, b"/w/a", b"3", first + 3),
                (EventType.DELETE, b"/w/b", b"", first + 4)]
            assert events[1].prev_kv is not None and events[1].prev_kv.value == b"1"
            assert live.revision == first + 4
            await live.close()
            async for _ in live:
                raise AssertionError("a closed watch yields nothing")
            # history, filters, single key
            past = client.watch(b"/w/a", start_revision=1)
            assert [e.kv.value for e in await take(past, 2)] == [b"1", b"3"]
            await past.close()
            puts = client.watch(b"/w/", prefix=True, start_revision=first,
                                filters=["noput"])
            assert [e.type for e in await take(puts, 1)] == [EventType.DELETE]
            await puts.close()
            # a close while a poll waits ends the iteration
            idle = client.watch(b"/idle")
            waiting = asyncio.ensure_future(take(idle, 1))
            await asyncio.sleep(0.1)
            await idle.close()
            with pytest.raises(AssertionError):  # wait_for sees no event: take ends empty
                assert await waiting
            # compaction
            await client.compact(first + 2)
            with pytest.raises(Compacted) as info:
                await take(client.watch(b"/w/", prefix=True, start_revision=first), 1)
            assert info.value.compact_revision == first + 2
            with pytest.raises(InvalidRequest):
                client.watch(b"b", b"a")

    asyncio.run(asyncio.wait_for(main(), 60))


def test_sync_client_watch(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path, nodes=1) as (_, address):
            def blocking() -> list[tuple[bytes, bytes]]:
                with SyncClient(address) as client:
                    rev = client.put(b"/s/1", b"a").revision
                    client.put(b"/s/2", b"b")
                    with client.watch(b"/s/", prefix=True, start_revision=rev) as watch:
                        got = [next(watch), next(watch)]
                        assert watch.revision == rev + 1
                    return [(e.kv.key, e.kv.value) for e in got]

            assert await asyncio.to_thread(blocking) == [(b"/s/1", b"a"), (b"/s/2", b"b")]

    asyncio.run(asyncio.wait_for(main(), 60))


def test_closing_the_client_ends_its_watches(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path, nodes=1) as (_, address):
            client = Client(address)
            watch = client.watch(b"/closing")

            async def drain() -> list[WatchEvent]:
                return [event async for event in watch]

            task = asyncio.ensure_future(drain())
            await asyncio.sleep(0.3)  # its poll waits on the node
            await client.close()
            assert await asyncio.wait_for(task, 10) == []

    asyncio.run(asyncio.wait_for(main(), 60))

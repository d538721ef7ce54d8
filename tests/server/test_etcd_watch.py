"""etcd's Watch service (server/etcd/watch.py) spoken raw over gRPC: ids, created order,
events and headers, cancel, progress requests, progress_notify, compaction, fragment,
client watch ids, hasleader. In-process members (test_etcd_api's cluster)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from test_etcd_api import cluster, follower_of, leader_of, run

from dengine.proto.etcd import rpc_pb2

W = rpc_pb2.WatchRequest
C = rpc_pb2.WatchCreateRequest


async def applied(member: Any, revision: int) -> None:
    """Until `member` applied the store revision `revision`."""
    while member.engine.watches.revision() < revision:
        await asyncio.sleep(0.01)


class Stream:
    def __init__(self, channel: grpc.aio.Channel, metadata: Any = None) -> None:
        stub = channel.stream_stream(
            "/etcdserverpb.Watch/Watch", request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=rpc_pb2.WatchResponse.FromString)
        self.call = stub(metadata=metadata)

    async def send(self, req: rpc_pb2.WatchRequest) -> None:
        await self.call.write(req)

    async def recv(self, timeout: float = 5.0) -> rpc_pb2.WatchResponse:
        resp = await asyncio.wait_for(self.call.read(), timeout)
        assert resp is not grpc.aio.EOF
        assert resp.header.revision > 0 and resp.header.member_id  # etcdctl needs a header
        return resp  # type: ignore[no-any-return]


@pytest.mark.frontends
def test_watch_stream_like_etcd(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, max_request_bytes=4096,
                           watch_progress_notify_interval_s=0.3) as members:
            leader, follower = leader_of(members), follower_of(members)
            first = (await leader.kv("Put", rpc_pb2.PutRequest(key=b"a", value=b"0"))
                     ).header.revision
            await applied(follower, first)
            s = Stream(follower.channel)
            await s.send(W(create_request=C(key=b"a")))
            await s.send(W(create_request=C(key=b"a", range_end=b"b", prev_kv=True)))
            await s.send(W(create_request=C(key=b"a", watch_id=7)))
            await s.send(W(create_request=C(key=b"a", watch_id=7)))
            await s.send(W(create_request=C(key=b"b", range_end=b"a")))
            got = [await s.recv() for _ in range(5)]
            assert [(r.watch_id, r.created, r.canceled) for r in got] == [
                (0, True, False), (1, True, False), (7, True, False), (-1, True, True),
                (-1, True, True)]
            assert got[3].cancel_reason == "mvcc: duplicate watch ID provided on the WatchStream"
            assert got[4].cancel_reason == "mvcc: watcher range is empty"
            assert all(r.header.revision == first for r in got)
            # events, per watch, with the header at the event's revision
            await leader.kv("Put", rpc_pb2.PutRequest(key=b"a", value=b"1"))
            events = {}
            for _ in range(3):
                r = await s.recv()
                events[r.watch_id] = r
            assert sorted(events) == [0, 1, 7]
            assert events[1].events[0].prev_kv.value == b"0"
            assert not events[0].events[0].HasField("prev_kv")
            assert events[0].header.revision == first + 1
            # progress: watch_id -1 at the revision every watch is current to
            await s.send(W(progress_request=rpc_pb2.WatchProgressRequest()))
            p = await s.recv()
            assert p.watch_id == -1 and not p.events and p.header.revision == first + 1
            # cancel: canceled once; an unknown id gets nothing
            await s.send(W(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=0)))
            c = await s.recv()
            assert (c.watch_id, c.canceled) == (0, True)
            await s.send(W(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=42)))
            await s.send(W(progress_request=rpc_pb2.WatchProgressRequest()))
            assert (await s.recv()).watch_id == -1  # (nothing came for the unknown id)
            # compacted start: created, then canceled with compact_revision
            await leader.kv("Put", rpc_pb2.PutRequest(key=b"a", value=b"2"))
            for _ in range(2):
                await s.recv()  # watches 1 and 7
            await leader.kv("Compact", rpc_pb2.CompactionRequest(revision=first + 2))
            await leader.kv("Put", rpc_pb2.PutRequest(key=b"z", value=b"after"))
            await applied(follower, first + 3)
            await s.send(W(create_request=C(key=b"a", start_revision=first)))
            created, canceled = await s.recv(), await s.recv()
            assert created.created and created.watch_id == 2  # the next auto id (7 was chosen)
            assert (canceled.watch_id, canceled.canceled, canceled.compact_revision) == (
                2, True, first + 2)
            call = s.call
            call.cancel()
            # fragment: events of one response beyond max_request_bytes
            s = Stream(follower.channel)
            start = (await leader.kv("Put", rpc_pb2.PutRequest(key=b"f", value=b"x" * 1500))
                     ).header.revision
            for _ in range(3):
                await leader.kv("Put", rpc_pb2.PutRequest(key=b"f", value=b"x" * 1500))
            await applied(follower, start + 3)
            await s.send(W(create_request=C(key=b"f", start_revision=start, fragment=True)))
            assert (await s.recv()).created
            parts = []
            while not parts or parts[-1].fragment:
                parts.append(await s.recv())
            assert len(parts) > 1 and sum(len(p.events) for p in parts) == 4
            assert all(p.fragment for p in parts[:-1])
            # progress_notify: an empty response with the watch's id when idle
            await s.send(W(create_request=C(key=b"idle", progress_notify=True)))
            created = await s.recv()
            notify = await s.recv(timeout=5)
            assert notify.watch_id == created.watch_id and not notify.events
            s.call.cancel()

    run(main())


@pytest.mark.frontends
def test_watch_requiring_a_leader_ends_without_one(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path) as members:
            follower = follower_of(members)
            s = Stream(follower.channel, metadata=(("hasleader", "true"),))
            await s.send(W(create_request=C(key=b"a")))
            assert (await s.recv()).created
            others = [m for m in members.values() if m is not follower]
            for m in others:
                await m.server.stop(0)
                await m.etcd.stop()
                await m.engine.stop()
                members.pop(m.engine.node_id)
                await m.channel.close()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await asyncio.wait_for(s.call.read(), 10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert err.value.details() == "etcdserver: no leader"
            # a new one is refused at once, before any request (as etcd's: a request
            # written after the refusal arrived fails in grpcio's aio client with its own
            # "Internal error from Core", which a faster server made likely)
            s = Stream(follower.channel, metadata=(("hasleader", "true"),))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await asyncio.wait_for(s.call.read(), 10)
            assert err.value.details() == "etcdserver: no leader"

    run(main())

"""Forged peer frames against real nodes over TCP: out-of-bounds terms and indexes are
dropped where frames are decoded, the cluster keeps serving and every node restarts.

A message with term 2**64 - 1 once made all three nodes adopt and persist that term and
stop with "Value out of range: 18446744073709551616" at their next election, and again at
every restart; an acknowledgement of entries the leader never had made it read past its
log.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import crc32c
from node_helpers import Cluster, run

from dengine.errors import NotLeader, Timeout, Unavailable
from dengine.node.transport import HEADER, encode_frame, encode_message_frames
from dengine.proto import (
    Hello,
    LogId,
    Message,
    MessageType,
    PeerFrame,
    SnapshotChunk,
    SnapshotMetadata,
)
from dengine.raft.limits import MAX_TERM

U64_MAX = 2**64 - 1
T = MessageType


async def _forge(
    port: int, as_node: int, to_node: int, messages: list[Message], chunk: bool = False,
    *, cluster_id: str,
) -> None:
    """Connect to a node's peer port as `as_node` (a member) and send `messages` (and,
    with `chunk`, a whole one-chunk snapshot of term 2**64 - 1)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        hello = Hello(cluster_id=cluster_id, node_id=as_node, to_id=to_node)
        writer.write(encode_frame(PeerFrame(hello=hello).SerializeToString()))
        length, _ = HEADER.unpack(await reader.readexactly(HEADER.size))
        assert PeerFrame.FromString(await reader.readexactly(length)).hello.node_id == to_node
        for frame in encode_message_frames(messages, 1 << 20):
            writer.write(frame)
        if chunk:
            data = b"not a snapshot"
            meta = SnapshotMetadata(last_included=LogId(index=5, term=1),
                                    checksum=hashlib.sha256(data).digest())
            frame = PeerFrame(snapshot_chunk=SnapshotChunk(
                metadata=meta, offset=0, data=data, done=True, term=U64_MAX,
                crc32c=crc32c.crc32c(data), total_size=len(data)))
            writer.write(encode_frame(frame.SerializeToString()))
        await writer.drain()
    finally:
        writer.close()


async def _put(cluster: Cluster, key: bytes, value: bytes) -> None:
    """Write through the leader, following a leader change (a loaded machine may see one)."""
    for _ in range(20):
        try:
            await (await cluster.leader()).put(key, value)
            return
        except (NotLeader, Unavailable, Timeout):
            await asyncio.sleep(0.05)
    raise AssertionError("no leader took the write")


def test_forged_terms_and_indexes_neither_stop_nor_poison_the_cluster(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = Cluster(tmp_path)
        await cluster.start_all()
        try:
            await _put(cluster, b"k", b"v1")
            term = (await cluster.leader()).status().term
            for target in (1, 2, 3):
                sender = 2 if target == 1 else 1
                await _forge(cluster.peer_ports[target], sender, target, [
                    Message(type=T.MSG_HEARTBEAT, from_id=sender, to_id=target, term=U64_MAX),
                    Message(type=T.MSG_APPEND_RESPONSE, from_id=sender, to_id=target,
                            term=U64_MAX),
                    Message(type=T.MSG_APPEND_RESPONSE, from_id=sender, to_id=target,
                            term=term, index=10**9),
                    Message(type=T.MSG_APPEND, from_id=sender, to_id=target, term=term,
                            index=U64_MAX, log_term=term, commit=U64_MAX),
                    Message(type=T.MSG_SNAPSHOT, from_id=sender, to_id=target, term=term,
                            snapshot=SnapshotMetadata(last_included=LogId(index=10**6,
                                                                          term=term))),
                ], chunk=True, cluster_id=cluster.cluster_id())
            await asyncio.sleep(0.5)  # five election timeouts: time to campaign (and crash)
            await _put(cluster, b"k", b"v2")
            for engine in cluster.engines.values():
                assert engine.status().term <= MAX_TERM
                # dropped where the frame was decoded: the two terms and the index above
                # the bounds, the MSG_SNAPSHOT outside a transfer, the chunk's term (the
                # acknowledgement of index 10**9 is within bounds: the leader's core drops it)
                assert engine._node._transport.rejected_messages == 5

            await cluster.stop_all()
            await cluster.start_all()  # nothing out of bounds was persisted
            assert await (await cluster.leader()).get(b"k") == b"v2"
            await _put(cluster, b"k", b"v3")
            for engine in cluster.engines.values():
                assert engine.status().term < term + 1000  # no forged term persisted
        finally:
            await cluster.stop_all()

    run(main())

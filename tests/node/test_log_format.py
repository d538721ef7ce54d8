"""Peers announce the log entry format they apply (the transport's Hello `log_format`): a
leader makes batch entries only while every other member applies them, and never sends
an append carrying one to a member of an older release (which would apply it as a
rejected command and silently diverge)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from node_helpers import FAST, free_port, run, until
from test_transport import Inbox, make

from dengine import Engine
from dengine.config import NodeConfig
from dengine.kv.codec import LOG_FORMAT_BATCH, encode_batch, encode_insert, is_batch_entry
from dengine.node.node import Node
from dengine.node.peer_frames import encode_frame
from dengine.node.ports import NodeEnv
from dengine.node.transport import Transport
from dengine.proto import Entry, EntryPayload, Hello, Message, MessageType, PeerFrame
from dengine.server.metrics import _transport_metrics

PUT = encode_insert(b"k", b"v")


class OlderTransport(Transport):
    """The transport of a release before log formats: its Hello announces none."""

    def _hello(self, to_id: int) -> bytes:
        hello = Hello(cluster_id=self.cluster_id, node_id=self.node_id,
                      client_address=self.client_address, to_id=to_id,
                      peer_address=self.listen)
        return encode_frame(PeerFrame(hello=hello).SerializeToString())


def _append(frm: int, to: int, index: int, command: bytes) -> Message:
    entry = Entry(index=index, term=1, payload=EntryPayload(command=command))
    return Message(type=MessageType.MSG_APPEND, from_id=frm, to_id=to, term=1,
                   index=index - 1, log_term=1, entries=[entry])


def test_an_older_peer_gets_no_append_carrying_a_batch_entry() -> None:
    async def main() -> None:
        ports = {1: free_port(), 2: free_port(), 3: free_port()}
        inboxes = {i: Inbox() for i in ports}
        t1 = make(1, ports, inboxes[1])
        t2 = make(2, ports, inboxes[2])
        t3 = OlderTransport(node_id=3, cluster_id="c1", listen=f"127.0.0.1:{ports[3]}",
                            peers={i: f"127.0.0.1:{p}" for i, p in ports.items() if i != 3},
                            on_messages=inboxes[3])
        for t in (t1, t2, t3):
            await t.start()
        try:
            await until(lambda: t1.peer_log_format(2) and t1.peer_log_format(3))
            assert t1.peer_log_format(2) == LOG_FORMAT_BATCH
            assert t1.peer_log_format(3) == 1  # announced nothing: an older release
            assert t3.peer_log_format(1) == LOG_FORMAT_BATCH
            batch = encode_batch([PUT, PUT])
            for to in (2, 3):
                t1.send([_append(1, to, 5, batch), _append(1, to, 6, PUT),
                         Message(type=MessageType.MSG_HEARTBEAT, from_id=1, to_id=to, term=1)])
            await until(lambda: len(inboxes[2].messages) == 3
                        and len(inboxes[3].messages) == 2)
            got = [m for _, m in inboxes[3].messages]
            assert [m.type for m in got] == [MessageType.MSG_APPEND, MessageType.MSG_HEARTBEAT]
            assert not any(is_batch_entry(e.payload.command) for m in got for e in m.entries)
            assert is_batch_entry(inboxes[2].messages[0][1].entries[0].payload.command)
            assert t1.log_formats.withheld_appends == 1
            st = SimpleNamespace(voters=[1, 2, 3], learners=[], node_id=1)
            withheld = next(f for f in _transport_metrics(t1, st)
                            if f.name == "dengine_peer_withheld_appends")
            assert [s.value for s in withheld.samples if s.name.endswith("_total")] == [1]
        finally:
            for t in (t1, t2, t3):
                await t.close()

    run(main())


async def _cluster(base: Path, older: set[int], **extra: Any) -> dict[int, Engine]:
    """Three embedded engines on 127.0.0.1; the nodes in `older` announce no log format."""
    peers = {i: f"127.0.0.1:{free_port()}" for i in (1, 2, 3)}

    async def start(i: int) -> Engine:
        config = NodeConfig(**{**FAST, **extra}).replace(
            node_id=i, data_dir=str(base / f"n{i}"), listen_peer=peers[i],
            listen_client=f"127.0.0.1:{free_port()}",
            peers={j: a for j, a in peers.items() if j != i})
        node = Node(config, NodeEnv(transport=OlderTransport if i in older else None))
        await node.start()
        engine = Engine(node)
        engine.compactor.start()
        engine.lessor.start()
        return engine

    engines = await asyncio.gather(*(start(i) for i in (1, 2, 3)))
    return dict(zip((1, 2, 3), engines, strict=True))


async def _leader(engines: dict[int, Engine], not_: int = 0) -> Engine:
    await until(lambda: sum(e.is_leader for e in engines.values()) == 1
                and all(e.leader_id for e in engines.values()))
    leader = next(e for e in engines.values() if e.is_leader)
    if leader.node_id == not_:  # an older release's leader would batch nothing itself
        await leader.move_leader(1 if not_ != 1 else 2)
        await until(lambda: engines[1 if not_ != 1 else 2].is_leader)
        leader = engines[1 if not_ != 1 else 2]
    return leader


async def _entries_for_20_writes(leader: Engine) -> int:
    await leader.put(b"warm", b"up")
    before = leader.status().commit_index
    results = await asyncio.gather(*(leader.put(b"k%d" % i, b"v") for i in range(20)))
    assert len({r.revision for r in results}) == 20  # each write its own revision
    return leader.status().commit_index - before


def test_a_leader_batches_only_while_every_member_announces_batch_entries(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        engines = await _cluster(tmp_path / "new", older=set())
        try:
            assert await _entries_for_20_writes(await _leader(engines)) < 20
        finally:
            await asyncio.gather(*(e.stop() for e in engines.values()))
        engines = await _cluster(tmp_path / "mixed", older={3})
        try:
            leader = await _leader(engines, not_=3)
            assert await _entries_for_20_writes(leader) >= 20  # one entry per write
            # ... and every replica holds the same keys and revisions (nothing diverged)
            await until(lambda: len({e.status().applied_index for e in engines.values()}) == 1)
            kvs = [[(kv.key, kv.mod_revision) for kv in (await e.range(
                b"k", b"l", consistency="eventual")).kvs] for e in engines.values()]
            assert kvs[0] == kvs[1] == kvs[2] and len(kvs[0]) == 20
        finally:
            await asyncio.gather(*(e.stop() for e in engines.values()))

    run(main())

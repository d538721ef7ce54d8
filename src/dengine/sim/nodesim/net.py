"""The simulated network between whole nodes: the node's `PeerTransport` over it.

A message is serialized on send and parsed on delivery (no object is shared between
nodes). Each message is, independently and by the seed: lost (`loss`), delayed (1-`delay`
ms, rarely a 20-200 ms straggler: reordering), duplicated (`dup`). Partitions are per
direction (`blocked`: (from, to) pairs), so one-way and two-way partitions are the same
mechanism; a message on a link blocked at send or at delivery is lost. A delivery to a
node that is down is lost; to a paused node it waits until the node resumes (its socket
buffers hold it).

Snapshots travel over the same network, as the real transport's frames do: chunks read
from the sender's simulated disk by the real `SnapshotSender` (window, cumulative acks,
rewinds on a mismatch), stored by the receiver's real `SnapshotReceiver` through the
node's chunk handler, acknowledged back. Each frame is lost, delayed, duplicated or
blocked like any message; where TCP would reset the connection (nothing acknowledged for
`STALL_S`), the transfer resumes from the last acknowledged offset, as after a reconnect.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dengine.kv.codec import LOG_FORMAT_BATCH
from dengine.node.peer_frames import PeerLogFormats, without_batch_appends
from dengine.node.snapshot_send import SnapshotSender
from dengine.proto import Message, SnapshotAck, SnapshotChunk, SnapshotMetadata
from dengine.storage.fileio import FileIO

# Frame kinds on the simulated wire (the first byte): Raft message, snapshot chunk, ack.
_MSG, _CHUNK, _ACK = 0x6D, 0x63, 0x61
CHUNK_BYTES = 2048  # small, so that a snapshot of a few KiB takes several chunks
WINDOW = 4
STALL_S = 0.1


@dataclass
class NetFaults:
    """The network's current fault settings (changed by the world's fault schedule)."""

    loss: float = 0.0
    dup: float = 0.0
    max_delay_ms: float = 5.0
    straggler: float = 0.0  # chance of a 20-200 ms delay
    blocked: set[tuple[int, int]] = field(default_factory=set)
    # Links whose every message is also delivered a second time, 0.5-15 ms after the
    # longest delay (behind newer messages).
    echo: set[tuple[int, int]] = field(default_factory=set)


class SimNetwork:
    """Carries messages between the world's nodes (see the module docstring)."""

    def __init__(
        self,
        rng: random.Random,
        schedule: Callable[[float, Callable[[], None]], None],
        deliver: Callable[[int, int, bytes], None],
    ) -> None:
        self.rng = rng
        self.faults = NetFaults()
        self._schedule = schedule  # (delay seconds, callback) on the world's clock
        self._deliver = deliver  # (from, to, bytes), when it arrives
        # Told (from, to) when a late copy of the `echo` fault arrives (the fault schedule
        # strikes then).
        self.on_echo: Callable[[int, int], None] | None = None
        # Each told (from, to) as a snapshot chunk leaves, until it returns True (the
        # `snapcut` and `bitrot` faults strike a receiver then).
        self.chunk_hooks: list[Callable[[int, int], bool]] = []
        self.stats = {"sent": 0, "lost": 0, "dup": 0, "straggler": 0, "blocked": 0,
                      "echo": 0, "snapshot_chunks": 0}
        # The log format each node's running incarnation announces (its Hello's): the
        # world sets it as the node starts (a member of the older release announces 1).
        self.log_formats: dict[int, int] = {}

    def send(self, src: int, dst: int, data: bytes) -> None:
        faults, rng, stats = self.faults, self.rng, self.stats
        stats["sent"] += 1
        if (src, dst) in faults.blocked:
            stats["blocked"] += 1
            return
        if faults.loss and rng.random() < faults.loss:
            stats["lost"] += 1
            return
        copies = 1
        if faults.dup and rng.random() < faults.dup:
            copies = 2
            stats["dup"] += 1
        if faults.echo and (src, dst) in faults.echo:
            stats["echo"] += 1
            late = rng.uniform(0.5, 15.0) + faults.max_delay_ms
            self._schedule(late / 1000.0, lambda: self._echo(src, dst, data))
        for _ in range(copies):
            delay = rng.uniform(0.2, faults.max_delay_ms)
            if faults.straggler and rng.random() < faults.straggler:
                delay = rng.uniform(20.0, 200.0)
                stats["straggler"] += 1
            self._schedule(delay / 1000.0, lambda: self._arrive(src, dst, data))

    def chunk_sent(self, src: int, dst: int) -> None:
        if self.chunk_hooks:
            self.chunk_hooks = [h for h in self.chunk_hooks if not h(src, dst)]

    def _echo(self, src: int, dst: int, data: bytes) -> None:
        self._arrive(src, dst, data)
        if self.on_echo is not None:
            self.on_echo(src, dst)

    def _arrive(self, src: int, dst: int, data: bytes) -> None:
        if (src, dst) in self.faults.blocked:
            self.stats["blocked"] += 1
            return
        self._deliver(src, dst, data)


class SimTransport:
    """One node incarnation's `PeerTransport` on the `SimNetwork`."""

    def __init__(self, network: SimNetwork, fileio: FileIO, **kwargs: Any) -> None:
        self.network = network
        self.node_id: int = kwargs["node_id"]
        self.on_messages = kwargs["on_messages"]
        self.on_chunk = kwargs["on_snapshot_chunk"]
        self.peers: dict[int, str] = dict(kwargs.get("peers") or {})
        self.log_formats = PeerLogFormats(self.node_id, network.log_formats)
        # Set by the world on a member of the older release: what it must never receive
        # is reported there (`received_batch`).
        self.on_batch: Callable[[int], None] | None = None
        self.closed = False
        self._snapshots = SnapshotSender(self.node_id, CHUNK_BYTES, WINDOW,
                                         kwargs.get("on_snapshot_done"), fileio)
        self._pumping: dict[int, asyncio.Task[None]] = {}
        self._watch: dict[int, asyncio.TimerHandle] = {}

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self.closed = True
        self._snapshots.close()

    def set_peers(self, peers: dict[int, str]) -> None:
        for gone in set(self.peers) - set(peers):
            self._snapshots.cancel(gone)
        self.peers = dict(peers)

    def send(self, messages: Iterable[Message]) -> None:
        if self.closed:
            return
        send, formats = self.network.send, self.log_formats
        for m in messages:
            # as the real transport: no batch entry for a peer of an older log format
            if formats.of(m.to_id) < LOG_FORMAT_BATCH and not formats.replicable(m.to_id, [m]):
                continue
            send(self.node_id, m.to_id, bytes((_MSG,)) + m.SerializeToString())

    def receive(self, src: int, data: bytes) -> None:
        """The world: bytes from `src` arrived for this node (on its loop)."""
        if self.closed:
            return
        kind, body = data[0], data[1:]
        if kind == _MSG:
            message = Message.FromString(body)
            if self.on_batch is not None and not without_batch_appends([message]):
                self.on_batch(src)
            self.on_messages(src, [message])
        elif kind == _CHUNK:
            asyncio.get_running_loop().create_task(
                self.on_chunk(src, SnapshotChunk.FromString(body)))
        elif self._snapshots.on_ack(src, SnapshotAck.FromString(body)):
            self._kick(src)

    def peer_client_address(self, node_id: int) -> str:
        return f"sim-client-{node_id}"

    def peer_log_format(self, node_id: int) -> int:
        return self.log_formats.of(node_id) if node_id in self.peers else 0

    def is_connected(self, node_id: int) -> bool:
        return not self.closed and node_id in self.peers

    # -- snapshots

    def send_snapshot(
        self, peer: int, metadata: SnapshotMetadata, term: int, path: Path
    ) -> bool:
        if self.closed or peer not in self.peers:
            return False
        if not self._snapshots.start(peer, metadata, term, path):
            return False
        self._kick(peer)
        return True

    def cancel_snapshot(self, peer: int) -> bool:
        return self._snapshots.cancel(peer)

    def snapshot_transfers(self) -> list[int]:
        return self._snapshots.peers()

    def send_snapshot_ack(self, peer: int, ack: SnapshotAck) -> None:
        if not self.closed:
            self.network.send(self.node_id, peer, bytes((_ACK,)) + ack.SerializeToString())

    def _kick(self, peer: int) -> None:
        """Send what the window allows to `peer` (one sending task per peer)."""
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        watch = self._watch.pop(peer, None)
        if watch is not None:
            watch.cancel()
        if peer in self._snapshots.peers():
            self._watch[peer] = loop.call_later(STALL_S, self._stalled, peer)
        if peer not in self._pumping:
            self._pumping[peer] = loop.create_task(self._pump(peer))

    def _stalled(self, peer: int) -> None:
        """Nothing acknowledged for a while: a new connection, resuming from the last ack."""
        self._watch.pop(peer, None)
        if not self.closed and peer in self._snapshots.peers():
            self._snapshots.reconnected(peer)
            self._kick(peer)

    async def _pump(self, peer: int) -> None:
        sender = self._snapshots
        try:
            while not self.closed and sender.due(peer):
                chunk = await sender.next_chunk(peer)
                if chunk is not None and not self.closed:
                    self.network.stats["snapshot_chunks"] += 1
                    self.network.chunk_sent(self.node_id, peer)
                    self.network.send(self.node_id, peer,
                                      bytes((_CHUNK,)) + chunk.SerializeToString())
        finally:
            self._pumping.pop(peer, None)

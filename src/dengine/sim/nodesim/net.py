"""The simulated network between whole nodes: the node's `PeerTransport` over it.

A message is serialized on send and parsed on delivery (no object is shared between
nodes). Each message is, independently and by the seed: lost (`loss`), delayed (1-`delay`
ms, rarely a 20-200 ms straggler: reordering), duplicated (`dup`). Partitions are per
direction (`blocked`: (from, to) pairs), so one-way and two-way partitions are the same
mechanism; a message on a link blocked at send or at delivery is lost. A delivery to a
node that is down is lost; to a paused node it waits until the node resumes (its socket
buffers hold it).

Snapshots are not streamed over this network (the simulator runs without log compaction
for now): `send_snapshot` refuses, and the core falls back to retrying.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dengine.proto import Message, SnapshotAck, SnapshotMetadata


@dataclass
class NetFaults:
    """The network's current fault settings (changed by the world's fault schedule)."""

    loss: float = 0.0
    dup: float = 0.0
    max_delay_ms: float = 5.0
    straggler: float = 0.0  # chance of a 20-200 ms delay
    blocked: set[tuple[int, int]] = field(default_factory=set)


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
        self.stats = {"sent": 0, "lost": 0, "dup": 0, "straggler": 0, "blocked": 0}

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
        for _ in range(copies):
            delay = rng.uniform(0.2, faults.max_delay_ms)
            if faults.straggler and rng.random() < faults.straggler:
                delay = rng.uniform(20.0, 200.0)
                stats["straggler"] += 1
            self._schedule(delay / 1000.0, lambda: self._arrive(src, dst, data))

    def _arrive(self, src: int, dst: int, data: bytes) -> None:
        if (src, dst) in self.faults.blocked:
            self.stats["blocked"] += 1
            return
        self._deliver(src, dst, data)


class SimTransport:
    """One node incarnation's `PeerTransport` on the `SimNetwork`."""

    def __init__(self, network: SimNetwork, **kwargs: Any) -> None:
        self.network = network
        self.node_id: int = kwargs["node_id"]
        self.on_messages = kwargs["on_messages"]
        self.peers: dict[int, str] = dict(kwargs.get("peers") or {})
        self.closed = False

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self.closed = True

    def set_peers(self, peers: dict[int, str]) -> None:
        self.peers = dict(peers)

    def send(self, messages: Iterable[Message]) -> None:
        if self.closed:
            return
        send = self.network.send
        for m in messages:
            send(self.node_id, m.to_id, m.SerializeToString())

    def receive(self, src: int, data: bytes) -> None:
        """The world: bytes from `src` arrived for this node (on its loop)."""
        if not self.closed:
            self.on_messages(src, [Message.FromString(data)])

    def peer_client_address(self, node_id: int) -> str:
        return f"sim-client-{node_id}"

    def is_connected(self, node_id: int) -> bool:
        return not self.closed and node_id in self.peers

    def send_snapshot(
        self, peer: int, metadata: SnapshotMetadata, term: int, path: Path
    ) -> bool:
        return False

    def cancel_snapshot(self, peer: int) -> bool:
        return False

    def snapshot_transfers(self) -> list[int]:
        return []

    def send_snapshot_ack(self, peer: int, ack: SnapshotAck) -> None:
        pass

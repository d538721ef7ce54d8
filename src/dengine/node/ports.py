"""What the node calls on its log, snapshot store and peer transport (and, in
`dengine.storage.state_machine.StateMachine`, on its state machine): exactly that.

The node builds the file-backed implementations (`dengine.node.recovery`,
`dengine.node.snapshots`, `dengine.node.transport`) and uses them through these types
only, so that a reader sees what the runtime needs from each, and a test or another
backend can stand in for one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dengine.proto import LogId, Membership, Message, SnapshotAck, SnapshotMetadata
from dengine.raft import LogStorage, RaftCore
from dengine.storage.fileio import FileIO
from dengine.storage.kvfile import StoreImage


class NodeLog(LogStorage, Protocol):
    """The Raft log: what the core reads and writes through (`LogStorage`: the node's
    persist and recovery use the same calls), and closing it at stop."""

    def close(self) -> None: ...


class SnapshotFiles(Protocol):
    """The snapshot files under DATA_DIR/snapshots (`dengine.node.snapshots.SnapshotStore`)."""

    def directory(self, metadata: SnapshotMetadata) -> Path: ...
    def file(self, metadata: SnapshotMetadata) -> Path: ...
    def has(self, metadata: SnapshotMetadata) -> bool: ...
    def sha256(self, metadata: SnapshotMetadata) -> bytes: ...
    def remove(self, metadata: SnapshotMetadata) -> None: ...
    def write(
        self, image: StoreImage, last: LogId, membership: Membership
    ) -> SnapshotMetadata: ...
    def prune(
        self, current: SnapshotMetadata | None, *, leftovers: bool = False
    ) -> list[Path]: ...


class PeerTransport(Protocol):
    """The peer transport (`dengine.node.transport.Transport`)."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def set_peers(self, peers: dict[int, str]) -> None: ...
    def send(self, messages: Iterable[Message]) -> None: ...
    def peer_client_address(self, node_id: int) -> str: ...
    def peer_log_format(self, node_id: int) -> int: ...
    def is_connected(self, node_id: int) -> bool: ...
    def send_snapshot(
        self, peer: int, metadata: SnapshotMetadata, term: int, path: Path
    ) -> bool: ...
    def cancel_snapshot(self, peer: int) -> bool: ...
    def snapshot_transfers(self) -> list[int]: ...
    def send_snapshot_ack(self, peer: int, ack: SnapshotAck) -> None: ...


# Makes the peer transport; called with `dengine.node.transport.Transport`'s keyword
# arguments (node_id, cluster_id, listen, peers, on_messages, ...).
TransportFactory = Callable[..., PeerTransport]
# Makes the core: (config, log, rng, *, bootstrap) like RaftCore.
CoreFactory = Callable[..., RaftCore]


@dataclass(frozen=True)
class NodeEnv:
    """What a node takes from its surroundings; the defaults are the real ones.

    The deterministic simulator (`dengine.sim.nodesim`) runs real `Node`s on a virtual
    clock (its event loop's), a simulated disk and network, with a seeded RNG; broken
    cores for its teeth come through `core`. Nothing here is looked up per entry.
    """

    clock: Callable[[], float] | None = None  # monotonic seconds (None: time.monotonic)
    # The data dir's files: identity, Raft log, state machine, snapshots (None: RealDisk)
    fileio: FileIO | None = None
    rng: random.Random | None = None  # the core's randomness (None: an unseeded Random)
    transport: TransportFactory | None = None  # None: dengine.node.transport.Transport
    core: CoreFactory | None = None  # None: RaftCore
    # The state machine's checkpoints on a thread of their own (False: written inline).
    background_checkpoints: bool = True
    # The executors are real threads: a persist handed to the log thread is answered by
    # `logthread.run_soon` (False: by the loop's `run_in_executor`, whose threads the
    # simulator's loop models).
    real_threads: bool = True

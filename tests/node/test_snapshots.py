"""Snapshots and compaction in embedded clusters: threshold, pruning, catch-up by snapshot,
a follower stopped in the middle of a transfer, a damaged snapshot file, an interrupted
install."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from node_helpers import FAST, Cluster, free_port, run, until

from dengine import Engine
from dengine.kv.mvcc import MvccStore
from dengine.node.snapshots import SnapshotStore
from dengine.proto import (
    Entry,
    HardState,
    LogId,
    Member,
    Membership,
    SnapshotAck,
    SnapshotChunk,
)
from dengine.storage import FileRaftLog, FileStateMachine
from dengine.storage.state_machine import image_of

SNAP = {"snapshot_threshold_entries": 50, "snapshot_chunk_bytes": 4096,
        "log_segment_bytes": 4096}


async def put_many(engine: Engine, start: int, count: int, size: int = 100) -> None:
    """`count` puts, one log entry each (one at a time: concurrent ones share a batch
    entry, and the thresholds here count entries)."""
    for i in range(start, start + count):
        await engine.put(b"k%06d" % i, b"v%06d" % i + b"x" * size)


async def all_present(engine: Engine, count: int) -> bool:
    values = await engine.get_many([b"k%06d" % i for i in range(count)], "eventual")
    return all(v is not None and v.startswith(b"v%06d" % i) for i, v in enumerate(values))


def settled(engine: Engine, threshold: int = 50) -> bool:
    """No snapshot is due, being written or waiting for its compaction."""
    node = engine._node
    st = engine.status()
    return (node._snaps.task is None and node._snaps.compact_to is None
            and st.applied_index - st.snapshot_index < threshold)


def snapshot_dirs(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "snapshots").iterdir()
                  if p.name.startswith("snap-"))


def segments(data_dir: Path) -> list[str]:
    return [n for n in os.listdir(data_dir / "raft") if n.startswith("seg-")]


def test_threshold_snapshot_compacts_the_log_and_prunes_old_snapshots(tmp_path: Path) -> None:
    async def main() -> None:
        settings = {**FAST, **SNAP, "listen_peer": f"127.0.0.1:{free_port()}"}
        async with await Engine.start(str(tmp_path), **settings) as engine:
            await engine.wait_ready()
            await put_many(engine, 0, 200)
            await until(lambda: engine.status().snapshot_index >= 150)
            await put_many(engine, 200, 300)
            await until(lambda: engine.status().snapshot_index >= 400 and settled(engine))
            st = engine.status()
            assert st.first_log_index > 300  # the log was compacted behind the snapshot
            assert st.first_log_index <= st.snapshot_index + 1
            assert len(snapshot_dirs(tmp_path)) <= 2  # snapshots_to_keep
            assert len(segments(tmp_path)) < 20  # whole segments were deleted (~45 written)
        async with await Engine.start(str(tmp_path), **settings) as engine:
            await engine.wait_ready()
            assert engine.status().snapshot_index >= 400
            assert await all_present(engine, 500)

    run(main())


def test_a_snapshot_being_written_at_stop_is_finished_and_compacts_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopping in the middle of a snapshot's write used to drop its compaction: the next
    start then held and read up to twice the threshold of log entries (and snapshotted
    again at once). Now stop waits for the write (its thread ran to the end anyway) and
    compacts the log to it."""
    writing = threading.Event()
    write = SnapshotStore.write

    def slow_write(self: SnapshotStore, *args: Any) -> Any:
        writing.set()
        time.sleep(0.3)
        return write(self, *args)

    monkeypatch.setattr(SnapshotStore, "write", slow_write)

    async def main() -> None:
        settings = {**FAST, **SNAP, "listen_peer": f"127.0.0.1:{free_port()}"}
        engine = await Engine.start(str(tmp_path), **settings)
        await engine.wait_ready()
        await put_many(engine, 0, 120)
        await until(writing.is_set)
        assert engine.status().snapshot_index == 0
        await engine.stop()

    run(main())
    log = FileRaftLog(tmp_path / "raft")
    snap = log.snapshot_metadata()
    assert snap is not None and snap.last_included.index >= 50
    tail = SNAP["snapshot_threshold_entries"] // 10
    assert log.first_index() == snap.last_included.index - tail + 1
    store = SnapshotStore(tmp_path / "snapshots", 2)
    assert snapshot_dirs(tmp_path) == [store.directory(snap).name]
    log.close()


def test_stopped_follower_catches_up_through_a_snapshot(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = Cluster(tmp_path, **SNAP)
        await cluster.start_all()
        try:
            leader = await cluster.leader()
            leader = await cluster.put_many(0, 50)
            lagging = next(i for i in cluster.engines if i != leader.node_id)
            await cluster.stop(lagging)
            leader = await cluster.put_many(50, 450)
            await until(lambda: leader.status().first_log_index > 60)
            follower = await cluster.start(lagging)
            await until(lambda: follower.status().applied_index >= leader.status().commit_index,
                        timeout=20)
            assert follower._node._snaps.installed >= 1
            assert follower.status().snapshot_index > 50
            assert await all_present(follower, 500)
            # and it keeps replicating from the log after the install
            leader = await cluster.put_many(500, 20)
            await until(lambda: follower.status().applied_index >= leader.status().commit_index)
            assert await all_present(follower, 520)
        finally:
            await cluster.stop_all()

    run(main())


def test_follower_stopped_mid_transfer_keeps_its_old_state_and_resumes(tmp_path: Path) -> None:
    async def main() -> None:
        # ~1 MB snapshot in 4 KiB chunks (4 in flight): the transfer takes ~60 round trips
        cluster = Cluster(tmp_path, snapshot_threshold_entries=200,
                          snapshot_chunk_bytes=4096, log_segment_bytes=64 * 1024)
        await cluster.start_all()
        try:
            leader = await cluster.leader()
            leader = await cluster.put_many(0, 100)
            lagging = next(i for i in cluster.engines if i != leader.node_id)
            await until(lambda: cluster.engines[lagging].status().applied_index
                        >= leader.status().commit_index)
            await cluster.stop(lagging)
            leader = await cluster.put_many(100, 900, size=1000)
            await until(lambda: leader.status().first_log_index > 200)
            incoming = cluster.data_dir(lagging) / "snapshots"

            def partial_size() -> int:
                parts = list(incoming.glob("incoming-*/snapshot.part"))
                return parts[0].stat().st_size if parts else 0

            follower = await cluster.start(lagging)
            await until(lambda: partial_size() > 20_000, timeout=20, interval=0.002)
            await cluster.stop(lagging)  # in the middle of the transfer
            received = partial_size()
            assert received > 0
            # the old state is intact and usable: the first 100 keys, the log it had
            sm = FileStateMachine(cluster.data_dir(lagging) / "sm")
            assert sm.last_applied().index < leader.status().snapshot_index
            assert all(sm.get(b"k%06d" % i) is not None for i in range(100))
            assert sm.get(b"k%06d" % 500) is None
            sm.close()
            FileRaftLog(cluster.data_dir(lagging) / "raft").close()

            follower = await cluster.start(lagging)
            offsets: list[int] = []  # offsets of the chunks the restarted follower gets
            receiver = follower._node._receiver
            receive = receiver.receive

            def spy(chunk: SnapshotChunk) -> SnapshotAck:
                offsets.append(chunk.offset)
                return receive(chunk)

            receiver.receive = spy  # type: ignore[method-assign]
            await until(lambda: follower.status().applied_index >= leader.status().commit_index,
                        timeout=30)
            assert await all_present(follower, 1000)
            assert not list(incoming.glob("incoming-*"))
            # the transfer resumed from what the follower held, not from zero
            assert offsets and 0 < offsets[0] <= received
        finally:
            await cluster.stop_all()

    run(main())


def test_damaged_snapshot_is_refused_then_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        cluster = Cluster(tmp_path, **SNAP)
        await cluster.start_all()
        try:
            leader = await cluster.leader()
            leader = await cluster.put_many(0, 20)
            lagging = next(i for i in cluster.engines if i != leader.node_id)
            await until(lambda: cluster.engines[lagging].status().applied_index >= 20)
            await cluster.stop(lagging)
            leader = await cluster.put_many(20, 300)
            await until(lambda: leader.status().first_log_index > 30 and settled(leader))
            # flip a byte in the middle of every snapshot file (of whichever node leads)
            for path in tmp_path.glob("n*/snapshots/snap-*/snapshot.bin"):
                data = bytearray(path.read_bytes())
                data[len(data) // 2] ^= 0xFF
                path.write_bytes(bytes(data))
            follower = await cluster.start(lagging)
            # refused (SHA-256 mismatch), the leader rewrites its snapshot, then it works
            await until(lambda: follower.status().applied_index >= leader.status().commit_index,
                        timeout=20)
            assert await all_present(follower, 300)
            assert follower._node._snaps.installed >= 1
            assert "does not match the expected" in caplog.text  # it was refused first
        finally:
            await cluster.stop_all()

    run(main())


def test_install_interrupted_between_state_machine_and_log_is_finished(tmp_path: Path) -> None:
    """A crash after the state machine took a snapshot but before the log did."""
    peer_port, own_port = free_port(), free_port()
    membership = Membership(voters=[Member(id=1, address=f"127.0.0.1:{own_port}"),
                                    Member(id=2, address=f"127.0.0.1:{peer_port}")])
    raft_log = FileRaftLog(tmp_path / "raft")
    entry = Entry(index=1, term=1)
    entry.payload.config.CopyFrom(membership)
    raft_log.append([entry])
    raft_log.set_hard_state(HardState(term=2, commit=1))
    raft_log.close()
    (tmp_path / "snapshots").mkdir()
    store = SnapshotStore(tmp_path / "snapshots", keep=2)
    values = MvccStore()
    values.insert_all([b"k%d" % i for i in range(30)], [b"v%d" % i for i in range(30)])
    meta = store.write(image_of(values), LogId(index=40, term=2), membership)
    sm = FileStateMachine(tmp_path / "sm")
    sm.apply_snapshot_from_file(meta, str(store.directory(meta)))
    sm.close()

    async def main() -> None:
        settings = {**FAST, "peers": {2: f"127.0.0.1:{peer_port}"},
                    "listen_peer": f"127.0.0.1:{own_port}"}
        async with await Engine.start(str(tmp_path), **settings) as engine:
            st = engine.status()
            assert (st.first_log_index, st.last_log_index, st.snapshot_index) == (41, 40, 40)
            assert st.applied_index == 40 and list(st.voters) == [1, 2]
            assert await engine.get(b"k7", "eventual") == b"v7"

    run(main())


def test_interval_snapshot_without_an_entry_threshold(tmp_path: Path) -> None:
    async def main() -> None:
        settings = {**FAST, "snapshot_threshold_entries": 0, "snapshot_interval_s": 0.2,
                    "listen_peer": f"127.0.0.1:{free_port()}"}
        async with await Engine.start(str(tmp_path), **settings) as engine:
            await engine.wait_ready()
            await put_many(engine, 0, 5)
            await until(lambda: engine.status().snapshot_index >= 5, timeout=5)
            index = engine.status().snapshot_index
            dirs = snapshot_dirs(tmp_path)  # an earlier interval may have snapshotted index < 5
            await asyncio.sleep(0.5)  # nothing new applied: no new snapshot
            assert engine.status().snapshot_index == index
            assert snapshot_dirs(tmp_path) == dirs


    run(main())

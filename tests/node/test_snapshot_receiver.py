"""The follower side of InstallSnapshot: whatever chunks arrive (out of order, duplicated,
damaged, of another snapshot), the partial file is a prefix of the right snapshot, and a
complete snapshot is verified before it enters the store."""

from __future__ import annotations

import hashlib
import random
import tempfile
from pathlib import Path

import crc32c
from hypothesis import given, settings
from hypothesis import strategies as st

from dengine.node.snapshots import PART_FILE, SnapshotReceiver, SnapshotStore
from dengine.proto import LogId, Member, Membership, SnapshotChunk, SnapshotMetadata

CHUNK = 100


def _snapshot(index: int, size: int, seed: int) -> tuple[SnapshotMetadata, bytes]:
    data = random.Random(seed).randbytes(size)
    meta = SnapshotMetadata(last_included=LogId(index=index, term=1),
                            checksum=hashlib.sha256(data).digest(),
                            membership=Membership(voters=[Member(id=1, address="h:1")]))
    return meta, data


def _chunk(
    meta: SnapshotMetadata, data: bytes, offset: int, damaged: bool = False
) -> SnapshotChunk:
    piece = data[offset : offset + CHUNK]
    return SnapshotChunk(metadata=meta, offset=offset, data=piece, total_size=len(data),
                         done=offset + len(piece) == len(data), term=1, attempt=1,
                         crc32c=crc32c.crc32c(piece) ^ (1 if damaged else 0))


def _partials(store: SnapshotStore) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in store.root.glob(f"incoming-*/{PART_FILE}")}


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 9), st.booleans()),
                max_size=60))
def test_partial_file_is_always_a_prefix_of_the_snapshot_it_belongs_to(script) -> None:
    snaps = {"a": _snapshot(10, 950, 1), "b": _snapshot(20, 700, 2)}
    with tempfile.TemporaryDirectory() as tmp:
        store = SnapshotStore(Path(tmp), keep=2)
        receiver = SnapshotReceiver(store)
        for which, n, damaged in script:
            meta, data = snaps[which]
            offset = min(n * CHUNK, (len(data) - 1) // CHUNK * CHUNK)
            ack = receiver.receive(_chunk(meta, data, offset, damaged))
            assert not ack.error
            if ack.done:
                assert store.file(meta).read_bytes() == data
            elif ack.mismatch:
                assert ack.offset != offset or damaged
            partials = _partials(store)
            assert len(partials) <= 1  # never two partial transfers
            for part in partials.values():
                assert any(part == d[: len(part)] for _, d in snaps.values())
        # then the sender follows the acks: both complete from wherever they stand
        for meta, data in snaps.values():
            offset = 0
            for _ in range(40):
                ack = receiver.receive(_chunk(meta, data, offset))
                if ack.done:
                    break
                offset = ack.offset
            assert ack.done and store.file(meta).read_bytes() == data
        assert not _partials(store)


def test_a_damaged_snapshot_is_refused_and_discarded(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, keep=2)
    receiver = SnapshotReceiver(store)
    meta, data = _snapshot(5, 250, 3)
    bad = data[:120] + bytes([data[120] ^ 1]) + data[121:]  # the sender's file is damaged
    acks = [receiver.receive(_chunk(meta, bad, off)) for off in range(0, len(bad), CHUNK)]
    assert "does not match" in acks[-1].error and not acks[-1].done
    assert not store.has(meta) and not _partials(store)
    # a correct copy afterwards is accepted
    acks = [receiver.receive(_chunk(meta, data, off)) for off in range(0, len(data), CHUNK)]
    assert acks[-1].done and store.file(meta).read_bytes() == data


def test_resume_after_a_restart_of_the_receiver(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, keep=2)
    meta, data = _snapshot(7, 1000, 4)
    first = SnapshotReceiver(store)
    for off in range(0, 400, CHUNK):
        first.receive(_chunk(meta, data, off))
    first.close()
    again = SnapshotReceiver(SnapshotStore(tmp_path, keep=2))
    ack = again.receive(_chunk(meta, data, 0))  # the sender starts over...
    assert ack.mismatch and ack.offset == 400  # ...and is told to resume at 400
    for off in range(400, 1000, CHUNK):
        ack = again.receive(_chunk(meta, data, off))
    assert ack.done and store.file(meta).read_bytes() == data

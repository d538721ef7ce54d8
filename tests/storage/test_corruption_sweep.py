"""Every record boundary and seeded random offsets of every durable file, each byte flipped
in turn, each outcome checked against docs/formats.md ("Reading: torn tail or corruption"):

* appended files (Raft log segments, state machine WALs): damage in the header or in any
  record but the last refuses to start with `CorruptionError(path, offset of that record)`;
  damage in the last record is a torn tail (cut there, logged, everything before it kept);
  a byte in the preallocated zeros after it is free space gone bad (cut, nothing lost);
* files replaced atomically (`hardstate`, `meta`, `checkpoint`, snapshots): any damage
  refuses (`CorruptionError`), never a torn tail;
* never: a start that accepts different data than what was written; `node.json` (JSON,
  no framing) is refused for any flipped bit by its CRC32C field.
"""

from __future__ import annotations

import hashlib
import logging
import random
import shutil

import pytest
from test_corruption import WAL_CHUNKS, build, open_all

from dengine.config import NodeConfig
from dengine.errors import ClusterMismatch, CorruptionError, StorageError
from dengine.node.datadir import DataDir
from dengine.proto import LogId, SnapshotMetadata
from dengine.storage import FileStateMachine
from dengine.storage.records import (
    HEADER_SIZE,
    MAGIC_CHECKPOINT,
    MAGIC_HARD_STATE,
    MAGIC_LOG_META,
    MAGIC_SEGMENT,
    MAGIC_WAL,
    scan,
)

MAGIC = {"segment": MAGIC_SEGMENT, "wal": MAGIC_WAL, "hardstate": MAGIC_HARD_STATE,
         "meta": MAGIC_LOG_META, "checkpoint": MAGIC_CHECKPOINT}
RANDOM_OFFSETS = 25  # besides every record boundary (its length, CRC and payload bytes)


def _offsets(data: bytes, kind: str, seed: int) -> list[int]:
    found = scan(data, kind, MAGIC[kind])
    assert found.corruption is None and not found.torn
    out = set(range(HEADER_SIZE))
    for start, record in zip(found.offsets, found.records, strict=True):
        end = start + 8 + len(record)
        out.update((start, start + 3, start + 4, start + 7, start + 8, (start + end) // 2,
                    end - 1))
    rng = random.Random(seed)
    out.update(rng.randrange(found.valid_end) for _ in range(RANDOM_OFFSETS))
    if found.free_tail:  # a few bytes of the preallocated zeros
        out.update(rng.randrange(found.valid_end, len(data)) for _ in range(3))
    return sorted(out)


def _flipped(template, tmp_path, kind: str, rel: str, offset: int, n: int, mask: int):
    root = tmp_path / f"case{n}"
    shutil.copytree(template, root)
    path = root / rel
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))
    return root, str(path)


def _state(root) -> tuple:
    log, sm = open_all(root)
    try:
        entries = [(e.index, e.term, e.payload.SerializeToString())
                   for e in log.entries(log.first_index(), log.last_index() + 1)]
        image = sm.image()
        return (entries, log.hard_state().SerializeToString(), sm.last_applied().index,
                image.revision, sorted(image.items.items()))
    finally:
        log.close()
        sm.close()


@pytest.mark.parametrize("kind", ["segment", "wal", "hardstate", "meta", "checkpoint"])
def test_every_record_boundary_and_random_offsets(tmp_path, kind, caplog):
    caplog.set_level(logging.WARNING, logger="dengine.storage")
    template = tmp_path / "template"
    paths = build(template)
    rel = paths[kind][len(str(template)) + 1:]
    intact = _state(template)
    data = (template / rel).read_bytes()
    found = scan(data, kind, MAGIC[kind])
    appended = kind in ("segment", "wal")
    last = found.offsets[-1]
    wrong = []
    for n, offset in enumerate(_offsets(data, kind, seed=len(kind))):
        mask = 1 << (n % 8)
        root, path = _flipped(template, tmp_path, kind, rel, offset, n, mask)
        try:
            state = _state(root)
        except CorruptionError as e:
            record = max([o for o in found.offsets if o <= offset], default=0)
            expected = 0 if offset < HEADER_SIZE else record
            if appended and offset >= last:
                wrong.append((offset, f"refused ({e}), but the damage is in the last record "
                                      "or after it: a torn tail"))
            elif e.path != path or e.offset != expected:
                wrong.append((offset, f"refused at {e.path}:{e.offset}, expected "
                                      f"{path}:{expected}"))
        else:
            if not appended or offset < last:
                wrong.append((offset, "accepted: damage before valid data must refuse"))
            elif state == intact and offset < found.valid_end:
                wrong.append((offset, "accepted whole: the damaged last record was read"))
            elif offset < found.valid_end and state[0] != intact[0][:len(state[0])]:
                wrong.append((offset, "accepted other entries than were written"))
            elif offset >= found.valid_end and state != intact:
                wrong.append((offset, "free space gone bad lost data"))
        shutil.rmtree(root)
    assert not wrong, f"{kind}: {wrong}"


def test_snapshot_file_every_record_boundary_and_random_offsets(tmp_path):
    """A snapshot file is refused whole for any flipped byte (its SHA-256, before any
    record is decoded), and the state machine keeps its old state."""
    paths = build(tmp_path)
    del paths
    snap = tmp_path / "snapshots" / "s1" / "snapshot.bin"
    data = snap.read_bytes()
    meta = SnapshotMetadata(last_included=LogId(index=20, term=1),
                            checksum=hashlib.sha256(data).digest())
    target = FileStateMachine(tmp_path / "target")
    before = target.last_applied()
    found = scan(data, "snapshot", data[:4])
    offsets = sorted({o + d for o in found.offsets for d in (0, 4, 8)}
                     | set(random.Random(7).sample(range(len(data)), 25)) | {0, 5, 7})
    try:
        for n, offset in enumerate(offsets):
            damaged = bytearray(data)
            damaged[offset] ^= 1 << (n % 8)
            snap.write_bytes(bytes(damaged))
            with pytest.raises(CorruptionError):
                target.apply_snapshot_from_file(meta, str(snap.parent))
            assert target.last_applied() == before
        snap.write_bytes(data)
        target.apply_snapshot_from_file(meta, str(snap.parent))
        assert target.last_applied().index == 20
    finally:
        target.close()


def test_the_wal_chunks_are_the_records_swept() -> None:
    # The WAL of `build` holds one record per chunk: the sweep hits each chunk's bytes.
    assert len(WAL_CHUNKS) >= 4


def test_node_json_every_bit_of_every_byte(tmp_path):
    """node.json (JSON: no record framing) carries a CRC32C of its fields: every single
    flipped bit is refused with StorageError, never read as another identity (245 of its
    1,000-odd flips were before: another cluster id, token or `joined`)."""
    config = NodeConfig(node_id=1, peers={2: "h:1"}, initial_cluster_token="tok")
    cluster_id = DataDir(tmp_path).claim_for(config)
    path = tmp_path / "node.json"
    raw = path.read_bytes()
    accepted = []
    for offset in range(len(raw)):
        for bit in range(8):
            damaged = bytearray(raw)
            damaged[offset] ^= 1 << bit
            path.write_bytes(bytes(damaged))
            try:
                DataDir(tmp_path).claim_for(config)
            except (StorageError, ClusterMismatch):
                continue
            accepted.append((offset, bit))
    assert not accepted
    path.write_bytes(raw)
    assert DataDir(tmp_path).claim_for(config) == cluster_id


def test_node_json_of_an_earlier_release_without_a_crc_is_read(tmp_path):
    (tmp_path / "node.json").write_text(
        '{"format": 2, "node_id": 1, "cluster_id": "c0ffee", "joined": false, '
        '"initial_cluster_token": "tok"}\n')
    assert DataDir(tmp_path).read_identity() == (1, "c0ffee")

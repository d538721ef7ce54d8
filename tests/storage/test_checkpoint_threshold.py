"""A big store is not rewritten after every `checkpoint_bytes` of WAL: the threshold grows
with the last checkpoint's size, so checkpoint cost per applied entry stays O(1)."""

from __future__ import annotations

import os

from storage_helpers import command_entry, insert

from dengine.storage import FileStateMachine


def test_checkpoint_waits_for_as_much_wal_as_the_last_checkpoint(tmp_path):
    sm = FileStateMachine(tmp_path, checkpoint_bytes=1024, background_checkpoint=False)
    index = 0

    def apply(n: int, key_base: int) -> None:
        nonlocal index
        entries = []
        for k in range(n):
            index += 1
            entries.append(command_entry(index, 1, insert(b"k%06d" % (key_base + k), b"x" * 200)))
        sm.apply_chunk(entries)

    apply(200, 0)  # a store of ~45 KB
    sm.checkpoint()
    checkpoint = tmp_path / "checkpoint"
    size, inode = checkpoint.stat().st_size, checkpoint.stat().st_ino
    assert size > 20 * 1024

    for _ in range(size // (4 * 230) // 2):  # about half the checkpoint's size of WAL
        apply(4, 0)
    assert checkpoint.stat().st_ino == inode  # far past checkpoint_bytes, not yet rewritten

    for _ in range(size // (4 * 230)):  # now more WAL than the checkpoint holds
        apply(4, 0)
    assert checkpoint.stat().st_ino != inode
    sm.close()

    reopened = FileStateMachine(tmp_path, checkpoint_bytes=1024, background_checkpoint=False)
    assert reopened.get(b"k000000") == b"x" * 200 and len(reopened) == 200
    assert reopened.last_applied().index == index
    reopened.close()
    assert os.path.exists(checkpoint)

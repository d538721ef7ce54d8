"""Checkpoints of the file state machine: the full map at some last_applied, plus the
first WAL to replay (format in docs/formats.md).

`Checkpointer` owns the checkpoint file of one state machine directory: loading it at
recovery, writing a new one (inline, or in the background while applies go on), the WALs
it makes obsolete, and the WAL size at which the next one is due. The state machine
freezes the point to write (a new WAL, and the state as of then) under its own lock and
hands it over.

In the background on a real disk, the checkpoint is written by a forked child process
(as Redis' BGSAVE): the fork, under the state machine's lock, gives the child a
copy-on-write image of the state at that point for free, and the child's encoding runs
on its own interpreter, so it neither copies the map first nor competes with the apply
path for the GIL. The child writes and syncs `checkpoint.tmp` and exits with
`os._exit`; a thread of the parent waits for it (blocked in the kernel, without the GIL),
then renames the file, syncs the directory and drops the WALs it covers. Elsewhere (no
`fork`, or a simulated disk in tests) a thread writes a copy of the map.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from dengine.errors import CorruptionError, StorageError
from dengine.proto import LogId, Membership, SnapshotMetadata
from dengine.storage import kvfile, records
from dengine.storage.fileio import FileIO, RealDisk

log = logging.getLogger("dengine.storage")

CHECKPOINT_FILE = "checkpoint"
_WAL_NAME = re.compile(r"^wal-(\d{10})$")
_CHECKPOINT_META = struct.Struct("<QQQQ")  # last applied index, term, first WAL seq, key count


def wal_name(seq: int) -> str:
    return f"wal-{seq:010d}"


def parse_wal_name(name: str) -> int | None:
    m = _WAL_NAME.match(name)
    return int(m.group(1)) if m else None


@dataclass
class CheckpointMeta:
    """Record 0 of a checkpoint (format 3): where the state is, what to replay after it,
    and the counts of the store image that follows."""

    last_applied: LogId
    wal_seq: int  # the first WAL to replay
    key_count: int
    membership: Membership | None
    snapshot: SnapshotMetadata | None
    revision: int = 1
    compact_revision: int = 0
    change_count: int = 0


def encode_checkpoint_meta(m: CheckpointMeta) -> bytes:
    return (
        _CHECKPOINT_META.pack(m.last_applied.index, m.last_applied.term, m.wal_seq, m.key_count)
        + kvfile.pack_blob(m.membership.SerializeToString() if m.membership is not None else b"")
        + kvfile.pack_blob(m.snapshot.SerializeToString() if m.snapshot is not None else b"")
        + bytes([(m.membership is not None) | (m.snapshot is not None) << 1])
        + kvfile.encode_counts(m.revision, m.compact_revision, m.change_count)
    )


def decode_checkpoint_meta(payload: bytes, path: str, offset: int) -> CheckpointMeta:
    try:
        index, term, wal_seq, count = _CHECKPOINT_META.unpack_from(payload, 0)
        m_blob, end = kvfile.unpack_blob(payload, _CHECKPOINT_META.size)
        s_blob, end = kvfile.unpack_blob(payload, end)
        flags = payload[end]
        membership = Membership.FromString(m_blob) if flags & 1 else None
        snapshot_meta = SnapshotMetadata.FromString(s_blob) if flags & 2 else None
        revision, compact, changes = kvfile.decode_counts(payload, end + 1)
    except (struct.error, IndexError, DecodeError) as e:
        raise CorruptionError(path, offset, f"undecodable checkpoint metadata: {e}") from None
    return CheckpointMeta(LogId(index=index, term=term), wal_seq, count, membership,
                          snapshot_meta, revision, compact, changes)


def checkpoint_chunks(
    head: CheckpointMeta, items: Iterable[tuple[bytes, bytes]],
    changes: Sequence[kvfile.ChangeTuple],
) -> Iterator[bytes]:
    """A checkpoint's bytes after the file header: record 0 (`head`, its change count
    taken from `changes`), the live keys' `(key, packed)` blocks, then the change blocks."""
    head.change_count = len(changes)
    yield records.frame(encode_checkpoint_meta(head))
    yield from kvfile.encode_blocks(items)
    yield from kvfile.encode_change_blocks(changes)


class Checkpointer:
    """The checkpoint file of one state machine directory and the thread that writes it."""

    def __init__(
        self, io: FileIO, directory: str, checkpoint_bytes: int, background: bool
    ) -> None:
        self._io = io
        self._dir = directory
        self._path = os.path.join(directory, CHECKPOINT_FILE)
        self._checkpoint_bytes = checkpoint_bytes
        self.background = background
        self.fork = background and can_fork(io)  # background checkpoints by a child process
        self._thread: threading.Thread | None = None
        # WAL bytes that trigger a checkpoint: `checkpoint_bytes`, or the size of the last
        # checkpoint written or loaded if larger, so a big store is rewritten at most once
        # per its own size of WAL (amortized O(1) per applied entry, write amplification
        # <= 2x).
        self.threshold = checkpoint_bytes
        self.written = 0  # checkpoints written (installed) since this object was made

    def load(self) -> tuple[CheckpointMeta, kvfile.StoreImage]:
        """The checkpoint's record 0 and the store image it holds."""
        heads: list[CheckpointMeta] = []

        def key_count(meta: bytes, offset: int) -> int:
            heads.append(decode_checkpoint_meta(meta, self._path, offset))
            return heads[0].key_count

        loaded = kvfile.load_strict(self._io, self._path, records.MAGIC_CHECKPOINT, key_count)
        self.threshold = max(self._checkpoint_bytes, loaded.scan.valid_end)
        head = heads[0]
        if len(loaded.changes) != head.change_count:
            raise CorruptionError(
                self._path, loaded.scan.valid_end,
                f"{len(loaded.changes)} changes, expected {head.change_count}",
            )
        image = kvfile.StoreImage(head.revision, head.compact_revision, loaded.state,
                                  loaded.changes)
        return head, image

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, chunks: Iterable[bytes], seq: int) -> None:
        """Write the checkpoint (`chunks`: the file's bytes after the header) and drop the
        WALs before `seq` on a background thread."""
        self._start_thread(self._finish_logged, chunks, seq)

    def start_forked(self, chunks: Callable[[], Iterable[bytes]], seq: int) -> None:
        """Fork a child that writes `chunks()` to `checkpoint.tmp`; a thread waits for it,
        then installs the file and drops the WALs before `seq`. Call it at the point to
        write, under the lock that stops the state from changing: the child sees the
        state as of the fork."""
        tmp = self._path + ".tmp"
        if self._io.exists(tmp):
            self._io.unlink(tmp)
        parent = os.getpid()
        read_end, write_end = os.pipe()
        began = time.perf_counter()
        try:
            pid = os.fork()
        except BaseException:
            os.close(read_end)
            os.close(write_end)
            raise
        if pid == 0:  # the child: never returns
            _write_in_child(tmp, chunks, write_end, parent)
        os.close(write_end)
        log.debug("%s: checkpoint writer process %d forked in %.1f ms", self._dir, pid,
                  (time.perf_counter() - began) * 1e3)
        self._start_thread(self._reap_logged, pid, read_end, seq)

    def _start_thread(self, target: Callable[..., None], *args: object) -> None:
        self._thread = threading.Thread(
            target=target, args=args, name="dengine-checkpoint", daemon=True
        )
        self._thread.start()

    def wait(self) -> None:
        """Wait for the background checkpoint, if one is running."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def finish(self, chunks: Iterable[bytes], seq: int) -> None:
        """Write the checkpoint, then drop the WALs it covers (those before `seq`)."""
        self.write(chunks)
        self.drop_wals_before(seq)

    def _finish_logged(self, chunks: Iterable[bytes], seq: int) -> None:
        try:
            self.finish(chunks, seq)
        except Exception:
            # The WALs are intact, so nothing is lost; the next checkpoint retries.
            log.exception("%s: background checkpoint failed", self._dir)

    def _reap_logged(self, pid: int, read_end: int, seq: int) -> None:
        try:
            self._reap(pid, read_end, seq)
        except Exception:
            log.exception("%s: background checkpoint failed", self._dir)

    def _reap(self, pid: int, read_end: int, seq: int) -> None:
        """Wait for the child's report and exit, then install its file and drop the WALs."""
        try:
            report = b"".join(iter(lambda: os.read(read_end, 4096), b""))
        finally:
            os.close(read_end)
        _, status = os.waitpid(pid, 0)
        tmp = self._path + ".tmp"
        code = os.waitstatus_to_exitcode(status)
        if code != 0 or not report.startswith(b"ok "):
            if self._io.exists(tmp):
                self._io.unlink(tmp)
            how = f"exit status {code}" if code >= 0 else f"signal {-code}"
            detail = report.decode("utf-8", "replace").strip() or "no report"
            raise StorageError(f"checkpoint writer process {pid} failed ({how}): {detail}")
        self._io.rename(tmp, self._path)
        self._io.fsync_dir(self._dir)
        self.threshold = max(self._checkpoint_bytes, int(report[3:]))
        self.written += 1
        self.drop_wals_before(seq)

    def write(self, chunks: Iterable[bytes]) -> None:
        """Replace the checkpoint file atomically (write temp, fsync, rename, fsync dir)."""
        written = 0

        def counted() -> Iterator[bytes]:
            nonlocal written
            for chunk in _with_header(chunks):
                written += len(chunk)
                yield chunk

        self._io.atomic_write(self._path, counted())
        self.threshold = max(self._checkpoint_bytes, written)
        self.written += 1

    def drop_wals_before(self, seq: int) -> None:
        names = self._io.listdir(self._dir)
        old = [n for n in names if (s := parse_wal_name(n)) is not None and s < seq]
        self._io.remove_durably([os.path.join(self._dir, n) for n in old])


def can_fork(io: FileIO) -> bool:
    """Whether checkpoints on `io` can be written by a forked child: a real disk (a
    simulated one lives in this process's memory) and an OS with `fork`."""
    return type(io) is RealDisk and hasattr(os, "fork")


def _with_header(chunks: Iterable[bytes]) -> Iterator[bytes]:
    yield records.encode_header(records.MAGIC_CHECKPOINT)
    yield from chunks


def _write_in_child(
    path: str, chunks: Callable[[], Iterable[bytes]], report: int, parent: int
) -> None:
    """In the forked child: write and sync `path`, report on `report`, and `os._exit`.

    Only this thread exists in the child; the parent's other threads may have held locks
    when it forked (the event loop's, logging's), so the child touches nothing but its
    arguments, the pure-Python codec and plain system calls. It closes every inherited
    file descriptor first (so it holds no socket or file of the parent's), takes the
    default action for SIGINT and SIGTERM, and stops if the parent dies.
    """
    code = 1
    try:
        gc.disable()  # a collection would touch (copy) every tracked object's page
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        os.closerange(3, report)
        os.closerange(report + 1, 1 << 20)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        written = 0
        for chunk in _with_header(chunks()):
            view = memoryview(chunk)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            written += len(chunk)
            if os.getppid() != parent:
                os._exit(3)  # the parent died: nobody will install this file
        os.fsync(fd)
        os.close(fd)
        os.write(report, b"ok %d" % written)
        code = 0
    except BaseException as e:
        with contextlib.suppress(BaseException):
            os.write(report, repr(e).encode("utf-8", "replace")[:4000])
    finally:
        os._exit(code)

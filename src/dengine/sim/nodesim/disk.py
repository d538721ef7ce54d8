"""One node incarnation's view of its simulated disk: a fence and a power switch.

Every simulated node keeps one `SimulatedDisk` (its files survive kills and restarts; a
power cut loses or tears what was not synced, `dengine.storage.fileio`). Each incarnation
(one start of the node, until it is killed or loses power) reaches the disk through its
own `FencedDisk`:

* once the incarnation is dead, every operation raises `ProcessGone` (nothing a dead
  process "still does" reaches the disk);
* a power cut can be armed to happen at the n-th next mutating operation (`arm`): the
  operation raises, the world is told (`on_cut`, which cuts the power of the disk and
  stops the node's loop), so cuts land inside an append, between a write and its fsync,
  between a rename and the directory's fsync...
* or armed to happen at the n-th mutating operation counted from the first one that
  touches the snapshot directory (`arm_snapshot`): inside a snapshot being written,
  received, installed (the state machine, then the log) or pruned;
* an I/O error (EIO, or ENOSPC: disk full) can be armed the same way (`arm_error`): the
  operation fails without effect, as a write or fsync that returned an error.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator

from dengine.errors import StorageError
from dengine.storage.fileio import AppendFile, FileIO, SimulatedCrash, SimulatedDisk


class ProcessGone(StorageError):
    """The incarnation that holds this handle is dead (killed or powered off)."""


class FencedDisk(FileIO):
    """`disk` as seen by one incarnation; see the module docstring."""

    def __init__(self, disk: SimulatedDisk, on_cut: Callable[[], None]) -> None:
        self.disk = disk
        self.alive = True
        self._on_cut = on_cut
        self._countdown: int | None = None
        self._error: tuple[int, int] | None = None  # (operations left, errno)
        self._snapshot_countdown: int | None = None  # armed, not counting yet
        self._snapshot_marker = "/snapshots/"
        self.in_snapshot = False  # the armed cut counts from a snapshot operation
        self.error_fired = False  # an armed I/O error was raised
        self.mutations = 0

    def arm(self, n: int | None) -> None:
        """Cut the power at the n-th next mutating operation (None: disarm, errors too)."""
        self._countdown = n
        if n is None:
            self._error = self._snapshot_countdown = None

    def arm_snapshot(self, n: int, marker: str = "/snapshots/") -> None:
        """Cut the power at the n-th mutating operation from the next one on a path that
        holds `marker` (a `snapshots` directory, or `/incoming-`: a transfer being
        received); that one counts as the first."""
        self._snapshot_countdown = n
        self._snapshot_marker = marker

    def arm_error(self, n: int, errno_: int) -> None:
        """Fail the n-th next mutating operation with OSError(errno_)."""
        self._error = (n, errno_)

    def _live(self) -> None:
        if not self.alive:
            raise ProcessGone("the process is gone")

    def _mutate(self, what: str) -> None:
        self._live()
        self.mutations += 1
        if self._snapshot_countdown is not None and self._snapshot_marker in what:
            self._countdown, self._snapshot_countdown = self._snapshot_countdown, None
            self.in_snapshot = True
        if self._countdown is not None:
            self._countdown -= 1
            if self._countdown <= 0:
                self._countdown = None
                self._on_cut()  # marks this incarnation dead and cuts the disk's power
                raise SimulatedCrash(f"power cut during {what}")
        if self._error is not None:
            left, errno_ = self._error
            self._error = (left - 1, errno_) if left > 1 else None
            if left <= 1:
                self.error_fired = True
                raise OSError(errno_, os.strerror(errno_), what.rpartition(" ")[2])

    # -- reads

    def exists(self, path: str) -> bool:
        self._live()
        return self.disk.exists(path)

    def isdir(self, path: str) -> bool:
        self._live()
        return self.disk.isdir(path)

    def listdir(self, path: str) -> list[str]:
        self._live()
        return self.disk.listdir(path)

    def read(self, path: str) -> bytes:
        self._live()
        return self.disk.read(path)

    def size(self, path: str) -> int:
        self._live()
        return self.disk.size(path)

    def read_chunks(self, path: str, chunk_bytes: int) -> Iterator[bytes]:
        self._live()
        return self.disk.read_chunks(path, chunk_bytes)

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        self._live()
        return self.disk.read_range(path, offset, size)

    # -- mutations

    def mkdir(self, path: str) -> None:
        self._mutate("mkdir " + path)
        self.disk.mkdir(path)

    def open_append(
        self, path: str, *, position: int | None = None, preallocate: int = 0
    ) -> AppendFile:
        if not self.disk.exists(path):
            self._mutate("create " + path)
        else:
            self._live()
        return _FencedFile(self, path, self.disk.open_append(
            path, position=position, preallocate=preallocate))

    def truncate(self, path: str, size: int) -> None:
        self._mutate("truncate " + path)
        self.disk.truncate(path, size)

    def fsync(self, path: str) -> None:
        self._mutate("fsync " + path)
        self.disk.fsync(path)

    def rename(self, src: str, dst: str) -> None:
        self._mutate("rename " + src)
        self.disk.rename(src, dst)

    def unlink(self, path: str) -> None:
        self._mutate("unlink " + path)
        self.disk.unlink(path)

    def rmtree(self, path: str) -> None:
        self._mutate("rmtree " + path)
        self.disk.rmtree(path)

    def fsync_dir(self, path: str) -> None:
        self._mutate("fsync_dir " + path)
        self.disk.fsync_dir(path)

    def atomic_write(self, path: str, chunks: Iterable[bytes]) -> None:
        FileIO.atomic_write(self, path, chunks)


class _FencedFile(AppendFile):
    def __init__(self, fence: FencedDisk, path: str, inner: AppendFile) -> None:
        self._fence = fence
        self._path = path
        self._inner = inner

    def write(self, data: bytes) -> None:
        self._fence._mutate("write " + self._path)
        self._inner.write(data)

    def sync(self) -> None:
        self._fence._mutate("sync " + self._path)
        self._inner.sync()

    def close(self) -> None:
        self._inner.close()

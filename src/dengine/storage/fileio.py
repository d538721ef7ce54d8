"""The thin file-I/O layer every storage module goes through.

`RealDisk` does plain POSIX I/O. `SimulatedDisk` keeps files in memory and models what a
power cut does to data that was not made durable: file bytes written since the last
`datasync` may be lost or torn, and creates/renames/unlinks in a directory that was not
`fsync_dir`-ed since may be lost (a random prefix of them survives, in order).

Durability is explicit: nothing is durable until `AppendFile.sync()` (file data) and
`fsync_dir()` (directory entries) return. `atomic_write` and `makedirs` build on those.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any

from dengine.errors import StorageError


class AppendFile(ABC):
    """A file open for appending. `sync()` makes everything written so far durable."""

    @abstractmethod
    def write(self, data: bytes) -> None: ...

    @abstractmethod
    def sync(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...


class FileIO(ABC):
    """File-system operations used by storage. Paths are plain strings."""

    @abstractmethod
    def exists(self, path: str) -> bool: ...

    @abstractmethod
    def isdir(self, path: str) -> bool: ...

    @abstractmethod
    def listdir(self, path: str) -> list[str]: ...

    @abstractmethod
    def mkdir(self, path: str) -> None:
        """Create one directory (not durable until its parent is fsync_dir-ed)."""

    @abstractmethod
    def read(self, path: str) -> bytes: ...

    def size(self, path: str) -> int:
        """The file's length in bytes."""
        return len(self.read(path))

    def read_chunks(self, path: str, chunk_bytes: int) -> Iterator[bytes]:
        """The file's bytes in pieces of at most `chunk_bytes`, read one at a time (a big
        file is then never held whole in memory)."""
        data = self.read(path)
        for start in range(0, len(data), chunk_bytes):
            yield data[start : start + chunk_bytes]

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        """`size` bytes of the file from `offset` (StorageError if the file is shorter)."""
        data = self.read(path)[offset : offset + size]
        if len(data) != size:
            raise StorageError(f"{path}: {size} bytes at offset {offset} asked, {len(data)} there")
        return data

    @abstractmethod
    def open_append(
        self, path: str, *, position: int | None = None, preallocate: int = 0
    ) -> AppendFile:
        """Open (creating if missing) for appending at `position` (default: the end).

        With `preallocate` > 0 the file is kept zero-filled ahead of the writes, in steps of
        that many bytes, so that a sync after an append flushes data only: no file-size
        change, hence no file-system journal commit, which makes small fdatasyncs cheaper.
        Readers treat an all-zero tail as free space.
        """

    @abstractmethod
    def truncate(self, path: str, size: int) -> None:
        """Cut the file to `size` bytes (not durable until `fsync` or a handle's `sync`)."""

    @abstractmethod
    def fsync(self, path: str) -> None:
        """Make the file's content (and size) durable."""

    @abstractmethod
    def rename(self, src: str, dst: str) -> None:
        """Atomically replace `dst` by `src` (same directory); durable after fsync_dir."""

    @abstractmethod
    def unlink(self, path: str) -> None: ...

    @abstractmethod
    def rmtree(self, path: str) -> None: ...

    @abstractmethod
    def fsync_dir(self, path: str) -> None: ...

    def makedirs(self, path: str) -> None:
        """Create `path` and missing parents, durably (each new entry's parent is synced)."""
        path = os.path.normpath(path)
        if self.isdir(path):
            return
        parent = os.path.dirname(path)
        if parent and parent != path:
            self.makedirs(parent)
        self.mkdir(path)
        self.fsync_dir(parent or ".")

    def atomic_write(self, path: str, chunks: Iterable[bytes]) -> None:
        """Replace `path` with `chunks`: write a temp file, sync it, rename, sync the dir."""
        tmp = path + ".tmp"
        if self.exists(tmp):
            self.unlink(tmp)
        f = self.open_append(tmp)
        try:
            for chunk in chunks:
                f.write(chunk)
            f.sync()
        finally:
            f.close()
        self.rename(tmp, path)
        self.fsync_dir(os.path.dirname(path) or ".")

    def remove_durably(self, paths: list[str]) -> None:
        """Unlink files of one directory, then sync that directory once."""
        if not paths:
            return
        for path in paths:
            self.unlink(path)
        self.fsync_dir(os.path.dirname(paths[0]) or ".")


class _RealAppendFile(AppendFile):
    def __init__(self, path: str, position: int | None, preallocate: int) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        self._allocated = os.fstat(self._fd).st_size
        self._position = self._allocated if position is None else position
        self._step = preallocate

    def write(self, data: bytes) -> None:
        end = self._position + len(data)
        if self._step and end > self._allocated:
            new_size = -(-end // self._step) * self._step
            self._pwrite_all(bytes(new_size - self._allocated), self._allocated)
            self._allocated = new_size
        self._pwrite_all(data, self._position)
        self._position = end
        self._allocated = max(self._allocated, end)

    def _pwrite_all(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view = view[written:]
            offset += written

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class RealDisk(FileIO):
    """The operating system's file system."""

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def mkdir(self, path: str) -> None:
        os.mkdir(path)

    def read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def size(self, path: str) -> int:
        return os.stat(path).st_size

    def read_chunks(self, path: str, chunk_bytes: int) -> Iterator[bytes]:
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(chunk_bytes):
                yield chunk

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        fd = os.open(path, os.O_RDONLY)
        try:
            pieces = []
            while size > 0:
                piece = os.pread(fd, size, offset)
                if not piece:
                    raise StorageError(f"{path}: {size} bytes at offset {offset} are not there")
                pieces.append(piece)
                offset += len(piece)
                size -= len(piece)
        finally:
            os.close(fd)
        return b"".join(pieces)

    def open_append(
        self, path: str, *, position: int | None = None, preallocate: int = 0
    ) -> AppendFile:
        return _RealAppendFile(path, position, preallocate)

    def truncate(self, path: str, size: int) -> None:
        os.truncate(path, size)

    def fsync(self, path: str) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def rmtree(self, path: str) -> None:
        shutil.rmtree(path)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- simulated disk ----------------------------------------------------------------------


class SimulatedCrash(Exception):
    """Raised by SimulatedDisk when a scheduled power cut happens in the middle of an operation."""


class _File:
    __slots__ = ("data", "synced")

    def __init__(self) -> None:
        self.data = bytearray()
        self.synced = b""


class _Dir:
    __slots__ = ("entries", "pending", "synced")

    def __init__(self) -> None:
        self.entries: dict[str, _File | _Dir] = {}
        self.synced: dict[str, _File | _Dir] = {}
        # Namespace operations since the last fsync_dir, in order: ("set", name, node),
        # ("del", name, "") or ("rename", old, new).
        self.pending: list[tuple[str, str, Any]] = []


class _SimAppendFile(AppendFile):
    def __init__(
        self, disk: SimulatedDisk, path: str, node: _File, position: int | None, step: int
    ) -> None:
        self._disk = disk
        self._path = path
        self._node = node
        self._closed = False
        self._generation_at_open = disk._generation
        self._position = len(node.data) if position is None else position
        self._step = step

    def write(self, data: bytes) -> None:
        with self._disk._lock:
            self._disk._tick("write", self._path)
            self._check()
            buf = self._node.data
            end = self._position + len(data)
            if self._step and end > len(buf):
                buf.extend(bytes(-(-end // self._step) * self._step - len(buf)))
            elif end > len(buf):
                buf.extend(bytes(end - len(buf)))
            buf[self._position : end] = data
            self._position = end

    def sync(self) -> None:
        with self._disk._lock:
            self._disk._tick("sync", self._path)
            self._check()
            self._node.synced = bytes(self._node.data)

    def close(self) -> None:
        self._closed = True

    def _check(self) -> None:
        if self._closed:
            raise StorageError(f"{self._path}: file is closed")
        if self._disk._generation != self._generation_at_open:
            raise StorageError(f"{self._path}: file handle from before a power cut")


def _common_prefix(a: bytes, b: bytes) -> int:
    """Length of the common prefix of a and b (block-wise, then byte-wise)."""
    limit = min(len(a), len(b))
    common = 0
    block = 4096
    while common + block <= limit and a[common : common + block] == b[common : common + block]:
        common += block
    while common < limit and a[common] == b[common]:
        common += 1
    return common


class SimulatedDisk(FileIO):
    """An in-memory file system that can lose everything not yet made durable.

    `power_cut(rng)` turns the disk into what a machine would find after losing power:
    each file keeps its synced bytes plus a random prefix of later writes, optionally
    followed by a few garbage or zero bytes (a torn write); each directory keeps its
    synced entries plus a random prefix of its later creates/renames/unlinks.
    `crash_after(n)` makes the n-th following mutating operation raise SimulatedCrash
    before it happens, so a test can cut power at every point of a procedure.
    """

    def __init__(self) -> None:
        self._root = _Dir()
        self._lock = threading.RLock()
        self._generation = 0
        self._countdown: int | None = None
        self.ops = 0  # mutating operations so far (for choosing crash points)

    # -- fault injection

    def crash_after(self, n: int | None) -> None:
        """Raise SimulatedCrash at the n-th next mutating operation (None: never)."""
        self._countdown = n

    def _tick(self, op: str, path: str) -> None:
        self.ops += 1
        if self._countdown is not None:
            self._countdown -= 1
            if self._countdown <= 0:
                self._countdown = None
                raise SimulatedCrash(f"power cut before {op} {path}")

    def power_cut(self, rng: random.Random, *, lose_all: bool = False) -> None:
        """Lose or tear everything not durable. `lose_all` keeps exactly the durable state."""
        with self._lock:
            self._generation += 1
            self._countdown = None
            self._cut_dir(self._root, rng, lose_all, set())

    def flip(self, path: str, offset: int, mask: int = 0x01) -> None:
        """Silent media corruption: XOR the byte at `offset` of `path` with `mask`, in
        what is written and in what is durable alike (no operation is counted)."""
        with self._lock:
            f = self._file(path)
            f.data[offset] ^= mask
            if offset < len(f.synced):
                synced = bytearray(f.synced)
                synced[offset] ^= mask
                f.synced = bytes(synced)

    def _cut_dir(self, d: _Dir, rng: random.Random, lose_all: bool, seen: set[int]) -> None:
        keep = 0 if lose_all or not d.pending else rng.randint(0, len(d.pending))
        entries = dict(d.synced)
        for kind, name, arg in d.pending[:keep]:
            if kind == "set":
                entries[name] = arg
            elif kind == "del":
                entries.pop(name, None)
            else:
                entries[arg] = entries.pop(name)
        d.entries = entries
        d.synced = dict(entries)
        d.pending = []
        for node in entries.values():
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, _Dir):
                self._cut_dir(node, rng, lose_all, seen)
            else:
                self._cut_file(node, rng, lose_all)

    @staticmethod
    def _cut_file(f: _File, rng: random.Random, lose_all: bool) -> None:
        current = bytes(f.data)
        if lose_all or current == f.synced:
            f.data = bytearray(f.synced)
            return
        common = _common_prefix(current, f.synced)
        if rng.random() < 0.25:
            result = f.synced
        else:
            cut = rng.randint(common, len(current))
            result = current[:cut]
            if cut < len(current) and rng.random() < 0.5:
                junk = rng.randint(1, 64)
                result += bytes(junk) if rng.random() < 0.5 else rng.randbytes(junk)
        f.data = bytearray(result)
        f.synced = bytes(result)

    # -- path helpers

    @staticmethod
    def _parts(path: str) -> list[str]:
        return [p for p in os.path.normpath(path).split("/") if p and p != "."]

    def _lookup(self, path: str) -> _File | _Dir | None:
        node: _File | _Dir = self._root
        for part in self._parts(path):
            if not isinstance(node, _Dir) or part not in node.entries:
                return None
            node = node.entries[part]
        return node

    def _parent(self, path: str) -> tuple[_Dir, str]:
        parts = self._parts(path)
        if not parts:
            raise StorageError(f"{path}: not a file path")
        parent = self._lookup("/".join(parts[:-1]))
        if not isinstance(parent, _Dir):
            raise FileNotFoundError(f"no such directory: {os.path.dirname(path)}")
        return parent, parts[-1]

    def _file(self, path: str) -> _File:
        node = self._lookup(path)
        if not isinstance(node, _File):
            raise FileNotFoundError(f"no such file: {path}")
        return node

    @staticmethod
    def _set(d: _Dir, name: str, node: _File | _Dir) -> None:
        d.entries[name] = node
        d.pending.append(("set", name, node))

    # -- FileIO

    def exists(self, path: str) -> bool:
        with self._lock:
            return self._lookup(path) is not None

    def isdir(self, path: str) -> bool:
        with self._lock:
            return isinstance(self._lookup(path), _Dir)

    def listdir(self, path: str) -> list[str]:
        with self._lock:
            node = self._lookup(path)
            if not isinstance(node, _Dir):
                raise FileNotFoundError(f"no such directory: {path}")
            return sorted(node.entries)

    def mkdir(self, path: str) -> None:
        with self._lock:
            self._tick("mkdir", path)
            parent, name = self._parent(path)
            if name in parent.entries:
                raise FileExistsError(path)
            self._set(parent, name, _Dir())

    def read(self, path: str) -> bytes:
        with self._lock:
            return bytes(self._file(path).data)

    def size(self, path: str) -> int:
        with self._lock:
            return len(self._file(path).data)

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        with self._lock:
            data = bytes(self._file(path).data[offset : offset + size])
        if len(data) != size:
            raise StorageError(f"{path}: {size} bytes at offset {offset} asked, {len(data)} there")
        return data

    def open_append(
        self, path: str, *, position: int | None = None, preallocate: int = 0
    ) -> AppendFile:
        with self._lock:
            node = self._lookup(path)
            if node is None:
                self._tick("create", path)
                parent, name = self._parent(path)
                node = _File()
                self._set(parent, name, node)
            if not isinstance(node, _File):
                raise IsADirectoryError(path)
            return _SimAppendFile(self, path, node, position, preallocate)

    def truncate(self, path: str, size: int) -> None:
        with self._lock:
            self._tick("truncate", path)
            del self._file(path).data[size:]

    def fsync(self, path: str) -> None:
        with self._lock:
            self._tick("fsync", path)
            f = self._file(path)
            f.synced = bytes(f.data)

    def rename(self, src: str, dst: str) -> None:
        with self._lock:
            self._tick("rename", src)
            parent, old = self._parent(src)
            dst_parent, new = self._parent(dst)
            if parent is not dst_parent:
                raise StorageError("SimulatedDisk renames only within one directory")
            node = parent.entries.pop(old, None)
            if node is None:
                raise FileNotFoundError(src)
            parent.entries[new] = node
            parent.pending.append(("rename", old, new))

    def unlink(self, path: str) -> None:
        with self._lock:
            self._tick("unlink", path)
            parent, name = self._parent(path)
            if not isinstance(parent.entries.get(name), _File):
                raise FileNotFoundError(path)
            del parent.entries[name]
            parent.pending.append(("del", name, ""))

    def rmtree(self, path: str) -> None:
        with self._lock:
            self._tick("rmtree", path)
            parent, name = self._parent(path)
            if not isinstance(parent.entries.get(name), _Dir):
                raise FileNotFoundError(path)
            del parent.entries[name]
            parent.pending.append(("del", name, ""))

    def fsync_dir(self, path: str) -> None:
        with self._lock:
            self._tick("fsync_dir", path)
            node = self._lookup(path)
            if not isinstance(node, _Dir):
                raise FileNotFoundError(f"no such directory: {path}")
            node.synced = dict(node.entries)
            node.pending = []


# --- dry run ------------------------------------------------------------------------------


class _NullAppendFile(AppendFile):
    def write(self, data: bytes) -> None:
        pass

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


class DryRunDisk(FileIO):
    """Reads from `base`; changes nothing, but records in `actions` what would change.

    `dengine check` opens a data dir's storage through it with the very code start-up
    runs, so it reaches the same verdict (the same error, or the same torn tails cut and
    leftovers deleted) without touching a file. Directories it would create read as empty
    and files it would delete as absent, which is all recovery reads back.
    """

    def __init__(self, base: FileIO | None = None) -> None:
        self._base = base or RealDisk()
        self.actions: list[tuple[str, str, str]] = []  # (operation, path, detail)
        self._made: set[str] = set()
        self._gone: set[str] = set()

    def _note(self, op: str, path: str, detail: str = "") -> None:
        if op not in ("fsync", "fsync_dir"):
            self.actions.append((op, path, detail))

    def exists(self, path: str) -> bool:
        path = os.path.normpath(path)
        return path in self._made or (path not in self._gone and self._base.exists(path))

    def isdir(self, path: str) -> bool:
        path = os.path.normpath(path)
        return path in self._made or (path not in self._gone and self._base.isdir(path))

    def listdir(self, path: str) -> list[str]:
        path = os.path.normpath(path)
        if path in self._made:
            return []
        return [n for n in self._base.listdir(path) if os.path.join(path, n) not in self._gone]

    def mkdir(self, path: str) -> None:
        self._note("mkdir", path)
        self._made.add(os.path.normpath(path))

    def read(self, path: str) -> bytes:
        return self._base.read(path)

    def size(self, path: str) -> int:
        return self._base.size(path)

    def read_chunks(self, path: str, chunk_bytes: int) -> Iterator[bytes]:
        return self._base.read_chunks(path, chunk_bytes)

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        return self._base.read_range(path, offset, size)

    def open_append(
        self, path: str, *, position: int | None = None, preallocate: int = 0
    ) -> AppendFile:
        if not self.exists(path):
            self._note("create", path)
        return _NullAppendFile()

    def truncate(self, path: str, size: int) -> None:
        self._note("truncate", path, f"to {size} bytes")

    def fsync(self, path: str) -> None:
        pass

    def rename(self, src: str, dst: str) -> None:
        self._note("replace", dst)

    def unlink(self, path: str) -> None:
        self._note("delete", path)
        self._gone.add(os.path.normpath(path))

    def rmtree(self, path: str) -> None:
        self._note("delete", path)
        self._gone.add(os.path.normpath(path))

    def fsync_dir(self, path: str) -> None:
        pass

    def atomic_write(self, path: str, chunks: Iterable[bytes]) -> None:
        self._note("replace", path)

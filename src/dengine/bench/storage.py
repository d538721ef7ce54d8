"""`dengine bench storage`: apply and log-append throughput, against a naive design.

The naive baseline's `apply_chunk` updates the map, then rewrites the whole map to disk
(and fsyncs) on every chunk, so its cost grows with the store.

Each case reports wall time and CPU time (user and kernel) per entry, and the run starts
by timing bare fdatasyncs of one chunk's worth of WAL bytes: wall time minus CPU time is
mostly waiting for the disk, so a reader can tell a disk-bound result from a CPU-bound one.
"""

from __future__ import annotations

import os
import random
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dengine.proto import Entry, LogId, SnapshotMetadata, WriteCommand
from dengine.storage import kvfile
from dengine.storage.file_state_machine import FileStateMachine
from dengine.storage.fileio import RealDisk
from dengine.storage.raft_log import FileRaftLog

KEY_BYTES = 16
VALUE_BYTES = 256
WAL_BYTES_PER_ENTRY = 25 + KEY_BYTES + VALUE_BYTES  # op header, key, value (docs/formats.md)
FSYNC_PROBES = 200


@dataclass
class BenchResult:
    name: str
    store_keys: int
    chunk: int
    entries: int
    seconds: float
    chunk_latencies: list[float]
    cpu_seconds: float = 0.0  # user-space CPU time of the process (all threads) in the calls
    sys_seconds: float = 0.0  # kernel CPU time (system calls: writes, fsyncs)

    @property
    def entries_per_s(self) -> float:
        return self.entries / self.seconds if self.seconds else 0.0

    @property
    def us_per_entry(self) -> float:
        return self.seconds / self.entries * 1e6 if self.entries else 0.0

    @property
    def cpu_us_per_entry(self) -> float:
        return self.cpu_seconds / self.entries * 1e6 if self.entries else 0.0

    @property
    def sys_us_per_entry(self) -> float:
        return self.sys_seconds / self.entries * 1e6 if self.entries else 0.0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.chunk_latencies)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else 0.0


def make_key(n: int) -> bytes:
    return b"%016d" % n


def insert_entries(first: int, keys: Sequence[int], rng: random.Random) -> list[Entry]:
    """Insert commands overwriting existing keys (the store size stays the same)."""
    out = []
    for i, k in enumerate(keys):
        cmd = WriteCommand()
        cmd.insert.key = make_key(k)
        cmd.insert.value = rng.randbytes(VALUE_BYTES)
        entry = Entry(index=first + i, term=1)
        entry.payload.command = cmd.SerializeToString()
        out.append(entry)
    return out


def _run(
    name: str, store_keys: int, chunk: int, step: Callable[[list[Entry]], object],
    make_chunk: Callable[[int], list[Entry]], min_seconds: float, max_chunks: int,
) -> BenchResult:
    """Call `step` on fresh chunks until `min_seconds` passed (at least 3 chunks)."""
    latencies: list[float] = []
    total = cpu = system = 0.0
    entries = 0
    while len(latencies) < max_chunks and (total < min_seconds or len(latencies) < 3):
        batch = make_chunk(chunk)
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        step(batch)
        elapsed = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu += after.ru_utime - before.ru_utime
        system += after.ru_stime - before.ru_stime
        latencies.append(elapsed)
        total += elapsed
        entries += len(batch)
    return BenchResult(name, store_keys, chunk, entries, total, latencies, cpu, system)


def bench_fdatasync(directory: str, chunks: Sequence[int]) -> list[BenchResult]:
    """Bare pwrite + fdatasync of one chunk's WAL bytes, in a preallocated file: the
    disk's share of each apply_chunk call (one row per chunk size, one "entry" = one sync)."""
    results = []
    path = os.path.join(directory, "fdatasync-probe")
    for chunk in chunks:
        data = os.urandom(chunk * WAL_BYTES_PER_ENTRY + 8)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.pwrite(fd, bytes(len(data) * FSYNC_PROBES), 0)
            os.fsync(fd)
            latencies = []
            before = resource.getrusage(resource.RUSAGE_SELF)
            for n in range(FSYNC_PROBES):
                os.pwrite(fd, data, n * len(data))
                start = time.perf_counter()
                os.fdatasync(fd)
                latencies.append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_SELF)
        finally:
            os.close(fd)
            os.unlink(path)
        name = f"fdatasync {len(data) / 1024:,.0f}K"
        results.append(BenchResult(
            name, 0, chunk, FSYNC_PROBES, sum(latencies), latencies,
            after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime,
        ))
    return results


def preload(directory: str, store_keys: int, rng: random.Random) -> FileStateMachine:
    """A FileStateMachine holding `store_keys` keys, installed from a snapshot (fast)."""
    io = RealDisk()
    value = rng.randbytes(VALUE_BYTES)
    state = {make_key(k): value for k in range(store_keys)}
    last = LogId(index=store_keys, term=1)
    snap_dir = os.path.join(directory, "preload-snapshot")
    checksum = kvfile.write_snapshot(io, snap_dir, state, last, None)
    del state
    sm = FileStateMachine(os.path.join(directory, "sm"))
    sm.apply_snapshot_from_file(SnapshotMetadata(last_included=last, checksum=checksum), snap_dir)
    shutil.rmtree(snap_dir)
    return sm


class NaiveStateMachine:
    """Every chunk rewrites the whole map, then fsyncs (cost grows with the store)."""

    def __init__(self, directory: str, state: dict[bytes, bytes]) -> None:
        self._path = os.path.join(directory, "naive.bin")
        self._state = state

    def apply_chunk(self, entries: list[Entry]) -> None:
        for entry in entries:
            cmd = WriteCommand.FromString(entry.payload.command)
            self._state[cmd.insert.key] = cmd.insert.value
        with open(self._path, "wb") as f:
            f.write(b"".join(
                len(k).to_bytes(8, "big") + k + len(v).to_bytes(8, "big") + v + bytes(8)
                for k, v in self._state.items()
            ))
            f.flush()
            os.fdatasync(f.fileno())


def bench_apply(
    directory: str, store_keys: int, chunks: Sequence[int], min_seconds: float,
    naive_max_seconds: float, rng: random.Random,
) -> list[BenchResult]:
    """apply_chunk at each chunk size, then the naive baseline on the same store."""
    sm = preload(directory, store_keys, rng)
    next_index = sm.last_applied().index + 1

    def make_chunk(n: int) -> list[Entry]:
        nonlocal next_index
        batch = insert_entries(next_index, [rng.randrange(store_keys) for _ in range(n)], rng)
        next_index += n
        return batch

    settle()
    results = [
        _run("apply_chunk", store_keys, c, sm.apply_chunk, make_chunk, min_seconds, 1_000_000)
        for c in chunks
    ]
    # The node's mode: the Raft log is the durable record, so the state machine WAL is
    # fsynced once a second (and before compaction), not per chunk (docs/architecture.md).
    sm.close()
    lazy = FileStateMachine(os.path.join(directory, "sm"), sync_apply=False)
    settle()
    apply_lazily = _syncing_every_second(lazy)
    results += [
        _run("apply_chunk (node mode: WAL fsync 1/s)", store_keys, c, apply_lazily, make_chunk,
             min_seconds, 1_000_000)
        for c in chunks
    ]
    naive = NaiveStateMachine(directory, lazy.items())
    lazy.close()
    settle()
    for c in chunks:
        # Each naive chunk costs a full rewrite; a few chunks are enough to show the slope.
        probe = _run("naive rewrite", store_keys, c, naive.apply_chunk, make_chunk, 0, 1)
        limit = max(1, int(naive_max_seconds / max(probe.seconds, 1e-6)))
        rest = _run("naive rewrite", store_keys, c, naive.apply_chunk, make_chunk,
                    naive_max_seconds, min(limit, 50))
        results.append(rest)
    return results


def _syncing_every_second(sm: FileStateMachine) -> Callable[[list[Entry]], None]:
    """apply_chunk without a per-chunk fsync, plus `sync()` once a second, as the node does."""
    last_sync = [time.monotonic()]

    def apply(entries: list[Entry]) -> None:
        sm.apply_chunk(entries)
        now = time.monotonic()
        if now - last_sync[0] >= 1.0:
            sm.sync()
            last_sync[0] = now

    return apply


def settle() -> None:
    """Flush other dirty data (preload files) so it does not slow the fsyncs measured next."""
    os.sync()
    time.sleep(0.5)


def bench_log_append(
    directory: str, batches: Sequence[int], min_seconds: float, rng: random.Random
) -> list[BenchResult]:
    results = []
    for batch_size in batches:
        path = os.path.join(directory, f"raft-{batch_size}")
        log = FileRaftLog(path)
        payload = WriteCommand()
        payload.insert.key = make_key(0)
        payload.insert.value = rng.randbytes(VALUE_BYTES)
        command = payload.SerializeToString()

        def make_chunk(n: int, log: FileRaftLog = log, command: bytes = command) -> list[Entry]:
            first = log.last_index() + 1
            out = []
            for i in range(n):
                entry = Entry(index=first + i, term=1)
                entry.payload.command = command
                out.append(entry)
            return out

        results.append(
            _run("log append", 0, batch_size, log.append, make_chunk, min_seconds, 1_000_000)
        )
        log.close()
        shutil.rmtree(path)
    return results


def run_storage_bench(
    *,
    sizes: Sequence[int],
    chunks: Sequence[int],
    min_seconds: float = 1.0,
    naive_max_seconds: float = 3.0,
    directory: str | None = None,
    seed: int = 1,
) -> list[BenchResult]:
    """Run every storage benchmark in a scratch directory (removed afterwards)."""
    rng = random.Random(seed)
    root = tempfile.mkdtemp(prefix="dengine-bench-", dir=directory)
    try:
        results = bench_fdatasync(root, chunks)
        results += bench_log_append(root, chunks, min_seconds, rng)
        for store_keys in sizes:
            sub = os.path.join(root, f"store-{store_keys}")
            os.makedirs(sub)
            results += bench_apply(sub, store_keys, chunks, min_seconds, naive_max_seconds, rng)
            shutil.rmtree(sub)
        return results
    finally:
        shutil.rmtree(root, ignore_errors=True)

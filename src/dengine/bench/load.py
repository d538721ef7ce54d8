"""Closed-loop load generator shared by `dengine bench put|get|mixed` and bench/compare.py.

`concurrency` workers each keep one request in flight against a `Target` (the embedded
Engine or a remote Client, anything with async `put` and `get`), until `total` requests
or `duration` seconds. Latencies are recorded per request with a monotonic clock.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class Target(Protocol):
    async def put(self, key: bytes, value: bytes) -> None: ...
    async def get(self, key: bytes, consistency: str = ...) -> bytes | None: ...


@dataclass
class LoadSpec:
    workload: str = "put"  # put | get | mixed
    total: int | None = 10_000
    duration: float | None = None
    concurrency: int = 64
    key_size: int = 8
    value_size: int = 256
    key_space: int = 10_000
    sequential_keys: bool = False
    read_ratio: float = 0.5  # for mixed
    consistency: str = "linearizable"
    seed: int = 1

    def describe(self) -> str:
        limit = f"{self.total} ops" if self.total else f"{self.duration}s"
        reads = f", {self.consistency}" if self.workload != "put" else ""
        ratio = f", read ratio {self.read_ratio}" if self.workload == "mixed" else ""
        return (f"{self.workload}{reads}{ratio}: {limit}, concurrency {self.concurrency}, "
                f"key {self.key_size} B, value {self.value_size} B, key space {self.key_space}")


@dataclass
class LoadResult:
    spec: LoadSpec
    ops: int = 0
    errors: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)
    error_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.ops / self.elapsed if self.elapsed > 0 else 0.0

    def percentile(self, q: float) -> float:
        """Latency in milliseconds at quantile q (0..1), nearest-rank."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        rank = min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))
        return ordered[rank] * 1000.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "workload": self.spec.workload,
            "consistency": self.spec.consistency,
            "concurrency": self.spec.concurrency,
            "value_size": self.spec.value_size,
            "ops": self.ops,
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "elapsed_s": round(self.elapsed, 3),
            "throughput_ops_s": round(self.throughput, 1),
            "latency_ms": {
                name: round(self.percentile(q), 3)
                for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999))
            },
        }


def make_key(n: int, size: int) -> bytes:
    """A fixed-size key for number n (zero-padded decimal, cut or padded to `size`)."""
    digits = b"%d" % n
    return digits.rjust(size, b"0")[-size:] if size >= 1 else digits


async def preload(target: Any, spec: LoadSpec, batch: int = 512) -> None:
    """Write every key of the key space once, so that reads find values."""
    value = b"v" * spec.value_size
    sem = asyncio.Semaphore(max(1, spec.concurrency))

    async def one(n: int) -> None:
        async with sem:
            await target.put(make_key(n, spec.key_size), value)

    for start in range(0, spec.key_space, batch):
        await asyncio.gather(*(one(n) for n in range(start, min(spec.key_space, start + batch))))


async def run_load(
    target: Target, spec: LoadSpec, progress: Callable[[int], None] | None = None
) -> LoadResult:
    """Run the workload and return its result. `progress(done)` is called a few times a second."""
    rng = random.Random(spec.seed)
    value = bytes(rng.getrandbits(8) for _ in range(spec.value_size))
    keys = [make_key(n, spec.key_size) for n in range(max(1, spec.key_space))]
    result = LoadResult(spec)
    latencies = result.latencies
    counter = [0]  # requests started
    total = spec.total
    deadline = time.monotonic() + spec.duration if spec.duration else None
    sequential = spec.sequential_keys
    consistency = spec.consistency
    read_ratio = {"get": 1.0, "put": 0.0}.get(spec.workload, spec.read_ratio)

    async def worker(wid: int) -> None:
        wrng = random.Random(spec.seed * 1_000_003 + wid)
        nkeys = len(keys)
        while True:
            n = counter[0]
            if total is not None and n >= total:
                return
            if deadline is not None and time.monotonic() >= deadline:
                return
            counter[0] = n + 1
            key = keys[n % nkeys] if sequential else keys[wrng.randrange(nkeys)]
            start = time.perf_counter()
            try:
                if read_ratio and (read_ratio >= 1.0 or wrng.random() < read_ratio):
                    await target.get(key, consistency)
                else:
                    await target.put(key, value)
            except Exception as e:  # a benchmark counts failures, it does not stop on them
                result.errors += 1
                kind = getattr(e, "code", type(e).__name__)
                result.error_kinds[kind] = result.error_kinds.get(kind, 0) + 1
                continue
            latencies.append(time.perf_counter() - start)

    async def reporter() -> None:
        while True:
            await asyncio.sleep(0.25)
            if progress is not None:
                progress(len(latencies) + result.errors)

    began = time.perf_counter()
    report_task = asyncio.create_task(reporter())
    try:
        await asyncio.gather(*(worker(w) for w in range(spec.concurrency)))
    finally:
        report_task.cancel()
    result.elapsed = time.perf_counter() - began
    result.ops = len(latencies)
    if progress is not None:
        progress(result.ops + result.errors)
    return result

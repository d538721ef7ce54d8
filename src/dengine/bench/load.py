"""Closed-loop load generator shared by `dengine bench put|get|mixed` and bench/compare.py.

`concurrency` workers each keep one request in flight against a `Target` (the embedded
Engine or a remote Client, anything with async `put` and `get`), until `total` requests
or `duration` seconds. Latencies are recorded per request with a monotonic clock.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from dengine.errors import InvalidRequest
from dengine.kv import LINEARIZABLE, consistency_name

QUANTILES = (0.5, 0.9, 0.99, 0.999)
QUANTILE_NAMES = ("p50", "p90", "p99", "p999")
WORKLOADS = ("put", "get", "mixed")
ERROR_BACKOFF_S = 0.01


class Target(Protocol):
    async def put(self, key: bytes, value: bytes) -> object: ...
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
    consistency: str = LINEARIZABLE
    seed: int = 1

    def validate(self) -> LoadSpec:
        """Raise InvalidRequest on settings that cannot make a meaningful run; return self."""
        if self.workload not in WORKLOADS:
            raise InvalidRequest(f"unknown workload {self.workload!r}; expected one of "
                                 f"{', '.join(WORKLOADS)}")
        if self.total is None and self.duration is None:
            raise InvalidRequest("give a total number of requests or a duration")
        if self.total is not None and self.total <= 0:
            raise InvalidRequest(f"total must be positive, got {self.total}")
        if self.duration is not None and self.duration <= 0:
            raise InvalidRequest(f"duration must be positive, got {self.duration}")
        for name in ("concurrency", "key_size", "key_space"):
            if getattr(self, name) <= 0:
                raise InvalidRequest(f"{name} must be positive, got {getattr(self, name)}")
        if self.value_size < 0:
            raise InvalidRequest(f"value size must not be negative, got {self.value_size}")
        needed = len(str(self.key_space - 1))
        if self.key_size < needed:
            raise InvalidRequest(f"key size {self.key_size} is too small for a key space of "
                                 f"{self.key_space} (distinct keys need {needed} bytes)")
        if not 0.0 <= self.read_ratio <= 1.0:
            raise InvalidRequest(f"read ratio must be in [0, 1], got {self.read_ratio}")
        self.consistency = consistency_name(self.consistency)
        return self

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
        return self.percentiles((q,))[0]

    def percentiles(self, qs: tuple[float, ...] = QUANTILES) -> list[float]:
        """Latencies in milliseconds at each quantile of `qs` (one sort for all)."""
        if not self.latencies:
            return [0.0 for _ in qs]
        ordered = sorted(self.latencies)
        n = len(ordered)
        return [ordered[min(n - 1, max(0, math.ceil(q * n) - 1))] * 1000.0 for q in qs]

    def to_dict(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "workload": spec.workload,
            "consistency": spec.consistency if spec.workload != "put" else None,
            "read_ratio": spec.read_ratio if spec.workload == "mixed" else None,
            "concurrency": spec.concurrency,
            "key_size": spec.key_size,
            "value_size": spec.value_size,
            "key_space": spec.key_space,
            "ops": self.ops,
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "elapsed_s": round(self.elapsed, 3),
            "throughput_ops_s": round(self.throughput, 1),
            "latency_ms": {
                name: round(value, 3)
                for name, value in zip(QUANTILE_NAMES, self.percentiles(), strict=True)
            },
        }


def make_key(n: int, size: int) -> bytes:
    """A fixed-size key for number n (zero-padded decimal, cut or padded to `size`)."""
    digits = b"%d" % n
    return digits.rjust(size, b"0")[-size:] if size >= 1 else digits


async def preload(
    target: Any, spec: LoadSpec, progress: Callable[[int, float], None] | None = None,
    concurrency: int = 256,
) -> None:
    """Write every key of the key space once, so that reads find values."""
    value = b"v" * spec.value_size
    next_key = [0]
    began = time.perf_counter()

    async def writer() -> None:
        while next_key[0] < spec.key_space:
            n = next_key[0]
            next_key[0] = n + 1
            await target.put(make_key(n, spec.key_size), value)
            if progress is not None and n % 256 == 0:
                progress(n, time.perf_counter() - began)

    await asyncio.gather(*(writer() for _ in range(min(concurrency, spec.key_space))))
    if progress is not None:
        progress(spec.key_space, time.perf_counter() - began)


async def run_load(
    target: Target, spec: LoadSpec, progress: Callable[[int, float], None] | None = None
) -> LoadResult:
    """Run the workload and return its result.

    `progress(done, elapsed_s)` is called a few times a second and once at the end.
    """
    rng = random.Random(spec.seed)
    value = rng.randbytes(spec.value_size)
    keys = [make_key(n, spec.key_size) for n in range(spec.key_space)]
    result = LoadResult(spec)
    latencies = result.latencies
    counter = [0]  # requests started
    total = spec.total
    sequential = spec.sequential_keys
    consistency = spec.consistency
    read_ratio = {"get": 1.0, "put": 0.0}.get(spec.workload, spec.read_ratio)
    perf_counter = time.perf_counter
    began = perf_counter()
    deadline = began + spec.duration if spec.duration else None

    async def worker(wid: int) -> None:
        wrng = random.Random(spec.seed * 1_000_003 + wid)
        rand = wrng.random  # int(rand() * n): a third of randrange's cost, same spread
        nkeys = len(keys)
        append = latencies.append
        while True:
            n = counter[0]
            if total is not None and n >= total:
                return
            start = perf_counter()
            if deadline is not None and start >= deadline:
                return
            counter[0] = n + 1
            key = keys[n % nkeys] if sequential else keys[int(rand() * nkeys)]
            try:
                if read_ratio and (read_ratio >= 1.0 or rand() < read_ratio):
                    await target.get(key, consistency)
                else:
                    await target.put(key, value)
            except Exception as e:  # a benchmark counts failures, it does not stop on them
                result.errors += 1
                kind = str(getattr(e, "code", type(e).__name__))
                result.error_kinds[kind] = result.error_kinds.get(kind, 0) + 1
                # Back off like a real client: a target that fails at once (no leader)
                # must not spin and starve the very node it waits for.
                await asyncio.sleep(ERROR_BACKOFF_S)
                continue
            append(perf_counter() - start)

    async def reporter() -> None:
        while True:
            await asyncio.sleep(0.2)
            if progress is not None:
                progress(len(latencies) + result.errors, perf_counter() - began)

    report_task = asyncio.create_task(reporter())
    try:
        await asyncio.gather(*(worker(w) for w in range(spec.concurrency)))
    finally:
        report_task.cancel()
    result.elapsed = perf_counter() - began
    result.ops = len(latencies)
    if progress is not None:
        progress(result.ops + result.errors, result.elapsed)
    return result

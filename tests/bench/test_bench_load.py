"""The load generator: counts, percentiles, validation (in-process targets, no cluster)."""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dengine.bench.load import LoadResult, LoadSpec, make_key, preload, run_load
from dengine.errors import InvalidRequest, Unavailable


class DictTarget:
    """A key-value target that suspends once per call, like a real one."""

    def __init__(self, fail_every: int = 0) -> None:
        self.data: dict[bytes, bytes] = {}
        self.calls = 0
        self.fail_every = fail_every
        self.reads = 0

    async def put(self, key: bytes, value: bytes) -> None:
        await self._call()
        self.data[key] = value

    async def get(self, key: bytes, consistency: str = "linearizable") -> bytes | None:
        await self._call()
        self.reads += 1
        return self.data.get(key)

    async def _call(self) -> None:
        self.calls += 1
        n = self.calls
        await asyncio.sleep(0)
        if self.fail_every and n % self.fail_every == 0:
            raise Unavailable("injected")


def test_total_counts_every_request_once() -> None:
    target = DictTarget()
    spec = LoadSpec(workload="put", total=1000, concurrency=16, key_space=50)
    result = asyncio.run(run_load(target, spec))
    assert result.ops == 1000 and result.errors == 0
    assert target.calls == 1000
    assert len(result.latencies) == 1000
    assert set(target.data) <= {make_key(n, 8) for n in range(50)}
    assert all(len(v) == 256 for v in target.data.values())


def test_errors_are_counted_by_code_not_raised() -> None:
    target = DictTarget(fail_every=4)
    spec = LoadSpec(workload="put", total=400, concurrency=8)
    result = asyncio.run(run_load(target, spec))
    assert result.errors == 100 and result.ops == 300
    assert result.error_kinds == {"UNAVAILABLE": 100}


def test_mixed_read_ratio_and_sequential_keys() -> None:
    target = DictTarget()
    spec = LoadSpec(workload="mixed", total=4000, concurrency=4, read_ratio=0.25,
                    key_space=10, sequential_keys=True)
    asyncio.run(preload(target, spec))
    assert len(target.data) == 10
    target.reads = 0
    result = asyncio.run(run_load(target, spec))
    assert result.ops == 4000
    assert 800 < target.reads < 1200  # about a quarter


def test_duration_stops_the_run() -> None:
    spec = LoadSpec(workload="get", total=None, duration=0.2, concurrency=2)
    result = asyncio.run(run_load(DictTarget(), spec))
    assert result.ops > 0
    assert result.elapsed >= 0.2


def test_progress_reports_the_final_count() -> None:
    seen: list[int] = []
    spec = LoadSpec(workload="put", total=300, concurrency=3)
    asyncio.run(run_load(DictTarget(), spec, lambda done, _elapsed: seen.append(done)))
    assert seen[-1] == 300


@given(st.lists(st.floats(min_value=0.0, max_value=10.0), min_size=1, max_size=200),
       st.sampled_from([0.5, 0.9, 0.99, 0.999]))
def test_percentile_is_nearest_rank(samples: list[float], q: float) -> None:
    result = LoadResult(LoadSpec(), latencies=samples)
    reported = result.percentile(q) / 1000.0
    value = min(samples, key=lambda s: abs(s - reported))  # undo the ms conversion rounding
    assert reported == pytest.approx(value)
    n = len(samples)
    assert sum(1 for s in samples if s <= value) >= math.ceil(q * n)
    assert sum(1 for s in samples if s < value) < math.ceil(q * n)


@pytest.mark.parametrize(("changes", "message"), [
    ({"workload": "scan"}, "unknown workload"),
    ({"total": None, "duration": None}, "total number of requests or a duration"),
    ({"concurrency": 0}, "concurrency must be positive"),
    ({"key_size": 2, "key_space": 1000}, "too small for a key space"),
    ({"read_ratio": 1.5}, "read ratio"),
    ({"consistency": "strong"}, "unknown consistency"),
])
def test_bad_specs_get_clear_errors(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        LoadSpec(**changes).validate()  # type: ignore[arg-type]

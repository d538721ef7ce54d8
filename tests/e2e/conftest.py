"""Fixtures of the real-process tests; the helpers live in e2e_support.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Cluster


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Any]:
    """`make(n, **settings)` -> a started Cluster; all its processes stop at teardown."""
    made: list[Cluster] = []

    def make(n: int, start: bool = True, **settings: Any) -> Cluster:
        c = Cluster(tmp_path / f"cluster{len(made)}", n, **settings)
        (tmp_path / f"cluster{len(made)}").mkdir()
        made.append(c)
        if start:
            c.start()
        return c

    try:
        yield make
    finally:
        for c in made:
            c.stop()


@pytest.fixture(scope="session")
def failover_record(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[float]]:
    """Leader-kill-to-first-write times of this session, written to a JSON file at the end."""
    times: list[float] = []
    yield times
    if times:
        path = tmp_path_factory.getbasetemp() / "failover_times.json"
        ordered = sorted(times)
        summary = {"runs": len(times), "times_s": times,
                   "median_s": ordered[len(ordered) // 2], "max_s": ordered[-1]}
        path.write_text(json.dumps(summary, indent=2))
        print(f"\nleader kill -> first write: {summary} (written to {path})")

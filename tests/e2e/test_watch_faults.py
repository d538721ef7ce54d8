"""Watch under faults (issue 17's acceptance; watch_run.py): prefix watchers, one started
on each node, while clients put and delete under the prefix and the leader is killed,
paused and partitioned (and followers paused and cut off) receive exactly the committed
changes: every acknowledged write at its revision, revisions in order, no duplicate, the
state rebuilt from the events equal to a final linearizable range.

CI: one seed, the leader's faults and two follower faults (~30 s of faults). `-m slow`:
every fault kind, `DENGINE_WATCH_FAULT_SEEDS` (default "1,2,3"),
`DENGINE_WATCH_FAULT_SECONDS` (default 120) each. Each run writes its report as JSON to
the test's tmp dir.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from fault_run import FAULT_KINDS
from watch_run import WatchConfig, problems, run_watch_faults

CI_SEED = int(os.environ.get("DENGINE_WATCH_FAULT_SEED", "17"))
SLOW_SEEDS = [int(s) for s in os.environ.get("DENGINE_WATCH_FAULT_SEEDS", "1,2,3").split(",")
              if s]
SLOW_SECONDS = float(os.environ.get("DENGINE_WATCH_FAULT_SECONDS", "120"))


def check(tmp_path: Path, cfg: WatchConfig) -> None:
    report = asyncio.run(run_watch_faults(tmp_path, cfg))
    (tmp_path / "watch_report.json").write_text(json.dumps(report, indent=2, default=str))
    bad = problems(report)
    assert not bad, "\n".join(bad)
    kinds = {f[0] for f in report["faults"]}
    assert kinds == set(cfg.kinds), kinds


def test_watchers_get_exactly_the_committed_changes_under_faults(tmp_path: Path) -> None:
    check(tmp_path, WatchConfig(seed=CI_SEED, seconds=20.0))


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS)
def test_watchers_under_every_fault_kind(tmp_path: Path, seed: int) -> None:
    check(tmp_path, WatchConfig(seed=seed, seconds=SLOW_SECONDS, kinds=tuple(FAULT_KINDS),
                                rate=400.0))

"""`dengine bench storage` runs end to end on tiny sizes and reports wall and CPU time."""

from __future__ import annotations

import os
import random

from click.testing import CliRunner

from dengine.bench.storage import (
    FSYNC_PROBES,
    drop_history,
    insert_entries,
    preload,
    run_storage_bench,
)
from dengine.cli import cli
from dengine.errors import InvalidRequest
from dengine.storage.file_state_machine import FileStateMachine


def test_every_case_reports_entries_and_cpu_time(tmp_path):
    memory = []
    results = run_storage_bench(sizes=[200], chunks=[1, 10], min_seconds=0.01,
                                naive_max_seconds=0.01, directory=str(tmp_path),
                                checkpoint_chunk=50, checkpoint_windows=2, memory=memory,
                                window_seconds=0.05, checkpoint_bytes=20_000)
    rows = {(r.name.split()[0], r.chunk) for r in results}
    # A 20 kB threshold checkpoints the store almost all the time: maybe no free window.
    assert rows - {("checkpoint-free", 50)} == {
        (name, c) for name in ("fdatasync", "log", "apply_chunk", "naive") for c in (1, 10)
    } | {("checkpoint", 50)}
    for r in results:
        minimum = {"fdatasync": FSYNC_PROBES, "naive": r.chunk}.get(r.name.split()[0], 3 * r.chunk)
        if r.name.startswith("checkpoint"):
            minimum = r.chunk
        assert r.entries >= minimum, r
        assert r.seconds > 0 and r.cpu_seconds + r.sys_seconds > 0, r
    assert [(m.keys, m.raw_bytes) for m in memory] == [(200, 200 * 272)]
    assert list(tmp_path.iterdir()) == []  # the scratch directory is gone


def test_the_memory_case_measures_the_store_without_history(tmp_path):
    """Issue 16's memory target is for keys without history: updates leave changes behind
    until a compaction, and the probe must not count them."""
    rng = random.Random(3)
    sm = preload(str(tmp_path), 100, rng)
    first = sm.last_applied().index + 1
    sm.apply_chunk(insert_entries(first, list(range(100)), rng))  # 100 updates: history
    assert len(list(sm.read(lambda store: store.changes()))) >= 100
    sm.close()
    drop_history(str(tmp_path))
    sm = FileStateMachine(os.path.join(str(tmp_path), "sm"))
    store_revision = sm.read(lambda store: store.revision)
    assert sm.read(lambda store: store.compact_revision) == store_revision
    assert list(sm.read(lambda store: store.changes())) == []
    assert len(sm.items()) == 100
    sm.close()


def test_cli_prints_the_cpu_columns(tmp_path):
    result = CliRunner().invoke(cli, [
        "bench", "storage", "--sizes", "100,300", "--chunks", "10", "--seconds", "0.01",
        "--naive-seconds", "0.01", "--dir", str(tmp_path), "--cases", "fdatasync,log,apply",
    ], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "user us" in result.output and "sys us" in result.output
    assert "fdatasync 3K" in result.output and "300 vs 100 keys, chunk 10" in result.output


def test_cli_refuses_an_unknown_case(tmp_path):
    # main() prints a DengineError's message without a traceback (tests/test_cli*.py).
    result = CliRunner().invoke(cli, ["bench", "storage", "--cases", "apply,nope"])
    assert isinstance(result.exception, InvalidRequest)
    assert "--cases takes some of" in str(result.exception)

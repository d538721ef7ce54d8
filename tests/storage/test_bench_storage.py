"""`dengine bench storage` runs end to end on tiny sizes and reports wall and CPU time."""

from __future__ import annotations

from click.testing import CliRunner

from dengine.bench.storage import FSYNC_PROBES, run_storage_bench
from dengine.cli import cli


def test_every_case_reports_entries_and_cpu_time(tmp_path):
    results = run_storage_bench(sizes=[200], chunks=[1, 10], min_seconds=0.01,
                                naive_max_seconds=0.01, directory=str(tmp_path))
    rows = {(r.name.split()[0], r.chunk) for r in results}
    assert rows == {(name, c) for name in ("fdatasync", "log", "apply_chunk", "naive")
                    for c in (1, 10)}
    for r in results:
        minimum = {"fdatasync": FSYNC_PROBES, "naive": r.chunk}.get(r.name.split()[0], 3 * r.chunk)
        assert r.entries >= minimum, r
        assert r.seconds > 0 and r.cpu_seconds + r.sys_seconds > 0, r
    assert list(tmp_path.iterdir()) == []  # the scratch directory is gone


def test_cli_prints_the_cpu_columns(tmp_path):
    result = CliRunner().invoke(cli, [
        "bench", "storage", "--sizes", "100,300", "--chunks", "10", "--seconds", "0.01",
        "--naive-seconds", "0.01", "--dir", str(tmp_path),
    ], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "user us" in result.output and "sys us" in result.output
    assert "fdatasync 3K" in result.output and "300 vs 100 keys, chunk 10" in result.output

"""Rendering of benchmark results: a rich progress bar while running, tables after."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from dengine.bench.load import QUANTILE_NAMES


def console(stderr: bool = False) -> Console:
    """A console that does not squeeze tables to 80 columns when piped."""
    con = Console(stderr=stderr)
    return con if con.is_terminal else Console(stderr=stderr, width=140)


class RichProgress:
    """Implements runner.Progress: one bar per phase, on stderr (stdout stays for results)."""

    def __init__(self, enabled: bool = True) -> None:
        self._progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
            MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
            console=console(stderr=True), disable=not enabled, transient=False,
        )
        self._task: TaskID | None = None
        self._unit = "ops"

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._finish()
        self._progress.stop()

    def phase(self, name: str, total: float | None, unit: str = "ops") -> None:
        self._finish()
        self._unit = unit
        self._task = self._progress.add_task(name, total=total, rate="")

    def update(self, done: int, elapsed: float) -> None:
        if self._task is None:
            return
        rate = f"{done / elapsed:,.0f}/s" if elapsed > 0 else ""
        completed = elapsed if self._unit == "s" else done
        self._progress.update(self._task, completed=completed, rate=rate)

    def _finish(self) -> None:
        if self._task is not None:
            task = self._progress.tasks[-1]
            if task.total is not None:
                self._progress.update(self._task, completed=task.total)
            else:
                self._progress.update(self._task, total=1, completed=1)
            self._task = None


def results_table(rows: Sequence[dict[str, object]], title: str) -> Table:
    """One row per run (the dicts of BenchRun.to_dict)."""
    table = Table(title=title)
    for column in ("target", "workload", "in flight", "ops", "ops/s",
                   *(f"{q} ms" for q in QUANTILE_NAMES), "errors"):
        table.add_column(column, justify="left" if column in ("target", "workload") else "right")
    for row in rows:
        latency = row["latency_ms"]
        assert isinstance(latency, dict)
        table.add_row(
            str(row["target"]), workload_label(row), str(row["concurrency"]),
            f"{row['ops']:,}", f"{row['throughput_ops_s']:,.0f}",
            *(f"{latency[q]:.2f}" for q in QUANTILE_NAMES), _errors(row),
        )
    return table


def workload_label(row: dict[str, object]) -> str:
    if row["workload"] == "get":
        return f"get {row['consistency']}"
    if row["workload"] == "mixed":
        return f"mixed {row['read_ratio']:.0%} {row['consistency']} reads"
    return str(row["workload"])


def _errors(row: dict[str, object]) -> str:
    kinds = row.get("error_kinds") or {}
    assert isinstance(kinds, dict)
    if not row["errors"]:
        return "0"
    detail = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
    return f"{row['errors']} ({detail})"

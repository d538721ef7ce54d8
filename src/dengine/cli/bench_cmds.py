"""`dengine bench ...`: benchmark commands. Each subcommand prints a table."""

from __future__ import annotations

import click

from dengine.errors import InvalidRequest


@click.group()
def bench() -> None:
    """Measure throughput and latency (storage, and later the running engine)."""


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidRequest(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise InvalidRequest(f"{what} must be positive integers, got {text!r}")
    return values


@bench.command("storage")
@click.option("--sizes", default="10000,1000000", show_default=True,
              help="Store sizes (keys) for the apply benchmark, comma-separated.")
@click.option("--chunks", default="1,10,100,1000", show_default=True,
              help="Chunk (and log batch) sizes, comma-separated.")
@click.option("--seconds", default=1.0, show_default=True, type=float,
              help="Minimum measured time per case.")
@click.option("--naive-seconds", default=3.0, show_default=True, type=float,
              help="Time budget per case of the naive (rewrite-everything) baseline.")
@click.option("--dir", "directory", default=None, type=click.Path(file_okay=False),
              help="Scratch directory (default: the system temp dir).")
def storage(sizes: str, chunks: str, seconds: float, naive_seconds: float,
            directory: str | None) -> None:
    """apply_chunk and Raft log append throughput (one fsync per chunk/batch).

    Compares FileStateMachine with a naive baseline that rewrites the whole map per
    chunk, as the seed does. 16-byte keys, 256-byte values.
    """
    from rich.console import Console
    from rich.table import Table

    from dengine.bench.storage import run_storage_bench

    results = run_storage_bench(
        sizes=_int_list(sizes, "--sizes"), chunks=_int_list(chunks, "--chunks"),
        min_seconds=seconds, naive_max_seconds=naive_seconds, directory=directory,
    )
    table = Table(title="dengine storage benchmark (one fsync per chunk)")
    for column in ("benchmark", "store keys", "chunk", "entries", "entries/s", "us/entry",
                   "p50 ms/chunk", "p99 ms/chunk"):
        table.add_column(column, justify="left" if column == "benchmark" else "right")
    for r in results:
        table.add_row(
            r.name, f"{r.store_keys:,}" if r.store_keys else "-", str(r.chunk), f"{r.entries:,}",
            f"{r.entries_per_s:,.0f}", f"{r.us_per_entry:.2f}",
            f"{r.percentile(0.5) * 1e3:.2f}", f"{r.percentile(0.99) * 1e3:.2f}",
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # a pipe or file: do not squeeze the table to 80 columns
    console.print(table)
    apply = {(r.store_keys, r.chunk): r for r in results if r.name == "apply_chunk"}
    size_list = sorted({k for k, _ in apply})
    if len(size_list) >= 2:
        small, large = size_list[0], size_list[-1]
        for chunk in sorted({c for _, c in apply}):
            ratio = apply[(large, chunk)].us_per_entry / apply[(small, chunk)].us_per_entry
            console.print(f"apply cost per entry, {large:,} vs {small:,} keys, chunk {chunk}: "
                          f"{ratio:.2f}x")

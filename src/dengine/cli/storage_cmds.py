"""`dengine check DATA_DIR`: offline integrity check of a node's files."""

from __future__ import annotations

import os
import sys

import click


@click.command()
@click.argument("data_dir", type=click.Path())
def check(data_dir: str) -> None:
    """Scan every storage file under DATA_DIR without changing it.

    Prints, per file, its kind, record count, index range and status: ok, a torn tail
    (a write cut by a crash; truncated at the next start) or CORRUPT (with the offset).
    Exits with status 1 if any file is corrupt.
    """
    from rich.console import Console
    from rich.table import Table

    from dengine.storage.inspect import CORRUPT, TORN, inspect_data_dir

    if not os.path.isdir(data_dir):
        raise click.ClickException(f"data directory not found: {data_dir}")
    reports = inspect_data_dir(data_dir)
    table = Table(title=f"dengine check {data_dir}")
    for column in ("file", "kind", "records", "indexes", "status", "detail"):
        table.add_column(column, justify="right" if column == "records" else "left")
    for r in reports:
        style = {CORRUPT: "bold red", TORN: "yellow"}.get(r.status, "")
        table.add_row(
            os.path.relpath(r.path, data_dir), r.kind, str(r.records), r.index_range,
            f"[{style}]{r.status}[/]" if style else r.status, r.detail,
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)
    corrupt = [r for r in reports if r.status == CORRUPT]
    torn = [r for r in reports if r.status == TORN]
    console.print(f"{len(reports)} files, {len(torn)} torn tails, {len(corrupt)} corrupt")
    if corrupt:
        sys.exit(1)

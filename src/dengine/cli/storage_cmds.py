"""`dengine check DATA_DIR`: offline integrity check of a node's files."""

from __future__ import annotations

import json
import os
import sys

import click


@click.command()
@click.argument("data_dir", type=click.Path())
@click.option("--json", "as_json", is_flag=True,
              help="Print the report as one JSON object (same exit status).")
def check(data_dir: str, as_json: bool) -> None:
    """Scan every storage file under DATA_DIR and tell what start-up would do, changing
    nothing.

    Prints, per file, its kind, record count, index range and status: ok, a torn tail
    (a write cut by a crash; truncated at the next start), CORRUPT (with the offset) or
    damaged (a snapshot file, which start-up does not read). The verdict is start-up's own
    (the same code opens the log and the state machine): exits with status 1 exactly when
    a node would refuse to start on DATA_DIR.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from dengine.storage.inspect import CORRUPT, DAMAGED, TORN, check_data_dir
    from dengine.storage.recovery import NOTHING

    if not os.path.isdir(data_dir):
        raise click.ClickException(f"data directory not found: {data_dir}")
    from dengine.errors import StorageError
    from dengine.node.datadir import DataDir

    result = check_data_dir(data_dir)
    try:  # what start-up reads first (DataDir.claim_for)
        identity = DataDir(data_dir).read_identity()
    except StorageError as e:
        identity = None
        result.error = e.message  # start-up refuses it first
        for r in result.reports:
            if os.path.basename(r.path) == "node.json":
                r.status, r.detail = CORRUPT, e.message
    if as_json:
        click.echo(json.dumps({
            "data_dir": data_dir,
            "files": [{"file": os.path.relpath(r.path, data_dir), "kind": r.kind,
                       "records": r.records, "first_index": r.first_index,
                       "last_index": r.last_index, "status": r.status, "detail": r.detail}
                      for r in result.reports],
            "node_id": identity[0] if identity is not None else None,
            "cluster_id": identity[1] if identity is not None else None,
            "at_start_up": [
                f"{op} {os.path.relpath(path, data_dir)} {detail}".rstrip()
                for op, path, detail in result.actions
            ] + ([result.plan.describe()]
                 if result.plan is not None and result.plan.action != NOTHING else []),
            "start_up": "refuses" if result.error is not None else "proceeds",
            "error": result.error,
        }, indent=2))
        sys.exit(1 if result.error is not None else 0)
    table = Table(title=f"dengine check {data_dir}")
    for column in ("file", "kind", "records", "indexes", "status", "detail"):
        table.add_column(column, justify="right" if column == "records" else "left")
    for r in result.reports:
        style = {CORRUPT: "bold red", TORN: "yellow", DAMAGED: "yellow"}.get(r.status, "")
        table.add_row(
            os.path.relpath(r.path, data_dir), r.kind, str(r.records), r.index_range,
            f"[{style}]{r.status}[/]" if style else r.status, escape(r.detail),
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)
    count = {s: sum(r.status == s for r in result.reports) for s in (TORN, CORRUPT, DAMAGED)}
    console.print(f"{len(result.reports)} files, {count[TORN]} torn tails, "
                  f"{count[CORRUPT]} corrupt, {count[DAMAGED]} damaged snapshots")
    if identity is not None:
        console.print(f"node {identity[0]} of cluster {identity[1]!r}")
    for op, path, detail in result.actions:
        console.print(escape(f"at start-up: {op} {os.path.relpath(path, data_dir)} {detail}"
                             .rstrip()), soft_wrap=True)
    if result.plan is not None and result.plan.action != NOTHING:
        console.print(escape(f"at start-up: {result.plan.describe()}"), soft_wrap=True)
    if result.error is not None:
        console.print(escape(f"start-up refuses: {result.error}"), style="bold red",
                      soft_wrap=True)
        sys.exit(1)
    console.print("start-up proceeds")

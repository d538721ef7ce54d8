"""`dengine snapshot save | restore | status`: backups of a cluster's store, etcdctl's
commands (docs/operations.md, "Backup and restore")."""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from dengine.cli.client_cmds import client_options, run


@click.group()
def snapshot() -> None:
    """Back up a member's store to a file, inspect a backup, restore one into a new
    cluster's data dirs."""


@snapshot.command("save")
@click.argument("file", type=click.Path(dir_okay=False))
@client_options
def save(file: str, endpoints: str, timeout: float, transport: str, as_json: bool) -> None:
    """Save a backup of the store of the first endpoint that answers to FILE.

    The member streams its applied state at one point (etcd's Maintenance/Snapshot: the
    same bytes `etcdctl snapshot save` writes). FILE appears only once whole and checked.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TransferSpeedColumn,
    )

    from dengine.client.backup import save_snapshot

    console = Console(stderr=True)
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=console, transient=True,
                  disable=as_json or not console.is_terminal) as progress:
        task = progress.add_task("saving", total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        saved = run(endpoints, timeout, transport,
                    lambda client: save_snapshot(client, file, on_progress))
    from dengine.storage.backup import backup_info

    info = backup_info(file)
    if as_json:
        click.echo(json.dumps({"path": file, "endpoint": saved.endpoint, **_info_json(info)}))
    else:
        click.echo(f"Snapshot saved at {file} (from {saved.endpoint}: revision "
                   f"{info.revision}, {info.keys} keys, {info.size} bytes)")


def _info_json(info: Any) -> dict[str, Any]:
    # etcdctl's `snapshot status -w json` names, and dengine's own
    return {"hash": info.sha256, "revision": info.revision, "totalKey": info.keys,
            "totalSize": info.size, "index": info.last_included.index,
            "term": info.last_included.term}


@snapshot.command("status")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-w", "--write-out", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Same as -w json.")
def status(file: str, write_out: str, as_json: bool) -> None:
    """Check FILE whole (size, SHA-256, every record) and print its revision, key count,
    size and hash. A truncated or damaged file: an error, exit status 1."""
    from dengine.storage.backup import read_backup

    with tempfile.TemporaryDirectory(prefix="dengine-snapshot-") as work:
        info, _, _ = read_backup(file, Path(work))
    if as_json or write_out == "json":
        click.echo(json.dumps(_info_json(info)))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in ("hash", "revision", "total keys", "total size", "index", "term"):
        table.add_column(column, justify="left" if column == "hash" else "right")
    table.add_row(info.sha256[:16], str(info.revision), str(info.keys), str(info.size),
                  str(info.last_included.index), str(info.last_included.term))
    Console().print(table)


@snapshot.command("restore")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--data-dir", required=True, type=click.Path(file_okay=False),
              help="The new member's data dir (must not exist, or be empty).")
@click.option("--id", "node_id", type=click.IntRange(min=1), default=None,
              help="This member's id in --initial-cluster  [default: its only member]")
@click.option("--name", default=None,
              help="This member's name in --initial-cluster (3 or node3; etcd's flag).")
@click.option("--initial-cluster", default="",
              help="The new cluster's members, ID=PEER_URL,... (etcd's form: node1=http://"
                   "10.0.0.1:9181,...)  [default: one member, this one]")
@click.option("--initial-cluster-token", default="",
              help="The new cluster's token (give `dengine serve` the same).")
@click.option("--initial-advertise-peer-urls", default="",
              help="This member's peer URL (checked against --initial-cluster; alone: the "
                   "one-member cluster's)  [default: 127.0.0.1:9181]")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def restore(file: str, data_dir: str, node_id: int | None, name: str | None,
            initial_cluster: str, initial_cluster_token: str,
            initial_advertise_peer_urls: str, as_json: bool) -> None:
    """Make DATA_DIR, a data dir of a member of a NEW cluster, from backup FILE.

    Run it once per member (each with its --id, all with the same --initial-cluster and
    token), then start each with `dengine serve`. The store is the backup's (keys,
    revisions, history); the membership is --initial-cluster's (the old members are
    dropped); the cluster id is new. etcd's bbolt snapshots are not read (etcdctl
    snapshot restore reads those); dengine's backups are.
    """
    from dengine.config import url_address
    from dengine.errors import ConfigError
    from dengine.node.restore import member_id, parse_initial_cluster
    from dengine.node.restore import restore as restore_backup

    if node_id is not None and name is not None and member_id(name) != node_id:
        raise click.UsageError("--id and --name name different members")
    chosen = node_id if node_id is not None else member_id(name) if name else None
    peer = initial_advertise_peer_urls
    if peer and "://" in peer:
        peer = url_address(peer)
    if initial_cluster:
        members = parse_initial_cluster(initial_cluster)
        if chosen is None:
            if len(members) != 1:
                raise click.UsageError("give --id (or --name) of this member")
            [chosen] = members
        if peer and members.get(chosen) != peer:
            raise ConfigError(f"--initial-advertise-peer-urls {peer} is not member "
                              f"{chosen}'s address in --initial-cluster "
                              f"({members.get(chosen, 'absent')})")
    else:
        chosen = chosen or 1
        members = {chosen: peer or "127.0.0.1:9181"}
    done = restore_backup(file, data_dir, chosen, members, initial_cluster_token)
    info = done.info
    if as_json:
        click.echo(json.dumps({"data_dir": data_dir, "node_id": chosen,
                               "cluster_id": done.cluster_id,
                               "members": {str(i): a for i, a in members.items()},
                               **_info_json(info)}))
        return
    serve = ["dengine", "serve", "--data-dir", data_dir, "--id", str(chosen),
             "--listen-peer", members[chosen]]
    if initial_cluster_token:
        serve += ["--initial-cluster-token", initial_cluster_token]
    for i, address in sorted(members.items()):
        if i != chosen:
            serve += ["--peer", f"{i}={address}"]
    click.echo(f"restored {file} into {data_dir}: member {chosen} of the new cluster "
               f"{done.cluster_id} (revision {info.revision}, {info.keys} keys)")
    click.echo(f"start it with: {shlex.join(serve)} --listen-client HOST:PORT")
    sys.stdout.flush()

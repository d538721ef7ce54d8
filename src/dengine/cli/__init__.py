"""The `dengine` command line: a thin layer over the engine, client and storage tools.

Each command group lives in its own module and is registered here; a command does
argument parsing and printing only.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import click

from dengine.errors import DengineError, KvError

# (module, attribute) of every top-level command; imported lazily so that `dengine --help`
# and light commands stay fast.
_COMMANDS = {
    "check": ("dengine.cli.storage_cmds", "check"),
    "bench": ("dengine.cli.bench_cmds", "bench"),
    "serve": ("dengine.cli.server_cmds", "serve"),
    "cluster": ("dengine.cli.server_cmds", "cluster"),
    "put": ("dengine.cli.kv_cmds", "put"),
    "get": ("dengine.cli.kv_cmds", "get"),
    "del": ("dengine.cli.kv_cmds", "delete_cmd"),
    "delete": ("dengine.cli.kv_cmds", "delete"),
    "txn": ("dengine.cli.kv_cmds", "txn"),
    "compaction": ("dengine.cli.kv_cmds", "compaction"),
    "lease": ("dengine.cli.lease_cmds", "lease"),
    "watch": ("dengine.cli.watch_cmds", "watch"),
    "status": ("dengine.cli.client_cmds", "status"),
    "member": ("dengine.cli.client_cmds", "member"),
    "endpoint": ("dengine.cli.endpoint_cmds", "endpoint"),
    "move-leader": ("dengine.cli.endpoint_cmds", "move_leader"),
    "lock": ("dengine.cli.recipe_cmds", "lock"),
    "elect": ("dengine.cli.recipe_cmds", "elect"),
    "certs": ("dengine.cli.certs_cmds", "certs"),
    "snapshot": ("dengine.cli.snapshot_cmds", "snapshot"),
    "user": ("dengine.cli.auth_cmds", "user"),
    "role": ("dengine.cli.auth_cmds", "role"),
    "auth": ("dengine.cli.auth_cmds", "auth"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name, (mod, _) in _COMMANDS.items() if _exists(mod))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None or not _exists(target[0]):
            return None
        command = getattr(importlib.import_module(target[0]), target[1], None)
        return command if isinstance(command, click.Command) else None


def _exists(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@click.group(cls=_LazyGroup)
@click.version_option(package_name="dengine")
def cli() -> None:
    """dengine: a Raft-replicated key-value engine for coordination data."""


# Commands that run servers: gRPC's core logs there as it does by default (a failed TLS
# handshake on the client port is one of its lines).
_SERVER_COMMANDS = {"serve", "cluster", "bench"}


def error_line(e: DengineError) -> str:
    """`error [CODE]: message`; etcd's auth errors as etcdctl prints them (`Error:
    etcdserver: permission denied`), so scripts written for etcdctl match them."""
    if isinstance(e, KvError):
        from dengine.kv.auth import MESSAGES

        if e.message in MESSAGES:
            return f"Error: {e.message}"
    return f"error [{e.code}]: {e.message}"


def main() -> None:
    """Entry point: turn dengine errors into a clear message and exit code 1, never a traceback."""
    if not _SERVER_COMMANDS.intersection(sys.argv[1:2]):
        # A client command says itself what failed; gRPC's core would print its own lines
        # (a failed TLS handshake at its INFO level, a server's TLS alert at ERROR).
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except DengineError as e:
        click.echo(error_line(e), err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)

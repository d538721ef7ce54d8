"""`dengine status | member` and what every client command shares: thin over `dengine.Client`.

Keys and values on the command line are UTF-8 strings (bytes that are not UTF-8 pass
through unchanged), or hexadecimal with `--hex`. The key-value commands (get, put, del,
txn, compaction) are in `dengine.cli.kv_cmds`.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import math
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from dengine.client import Client, MemberInfo, NodeStatus
from dengine.client.routing import TRANSPORTS
from dengine.errors import DengineError, InvalidRequest
from dengine.tls import ClientTls, client_tls

T = TypeVar("T")

DEFAULT_ENDPOINTS = "127.0.0.1:9081"


class Seconds(click.ParamType):
    """A deadline: a finite number of seconds above 0 ("inf" and "nan" are refused)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not 0 < seconds < math.inf:
            self.fail(f"{value!r} is not a finite number of seconds above 0", param, ctx)
        return seconds


SECONDS = Seconds()


def _tls_option(name: str, help_text: str) -> Callable[..., Any]:
    """A TLS flag (etcdctl's name), kept in the click context for `run` (so that the
    commands do not take it as an argument)."""

    def keep(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value:
            ctx.meta.setdefault(_TLS_META, {})[name] = value

    return click.option(f"--{name}", f"tls_{name}", envvar=f"DENGINE_{name.upper()}",
                        metavar="FILE",
                        expose_value=False, callback=keep, type=click.Path(dir_okay=False),
                        help=help_text)


_TLS_META = "dengine.client_tls"


def tls_settings() -> ClientTls | None:
    """The client TLS of the running command's flags (None: plaintext)."""
    ctx = click.get_current_context(silent=True)
    given = ctx.meta.get(_TLS_META, {}) if ctx is not None else {}
    return client_tls(None, given.get("cacert"), given.get("cert"), given.get("key"))


_AUTH_META = "dengine.client_auth"


def _auth_option(name: str, metavar: str, help_text: str) -> Callable[..., Any]:
    """--user or --password (etcdctl's), kept in the click context for `client_settings`."""

    def keep(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value is not None:
            ctx.meta.setdefault(_AUTH_META, {})[name] = value

    return click.option(f"--{name}", f"auth_{name}", default=None, metavar=metavar,
                        expose_value=False, callback=keep, help=help_text)


def credentials(user: str | None, password: str | None) -> tuple[str, str] | None:
    """(name, password) of --user / --password, as etcdctl splits and asks for them."""
    if user is None:
        return None
    if password is not None:
        return user, password
    name, sep, given = user.partition(":")
    if not name:
        raise click.ClickException("empty user name is not allowed")
    if not sep:
        given = click.prompt("Password", hide_input=True, err=True)
    return name, given


def client_settings() -> dict[str, Any]:
    """The `Client` arguments of the running command's TLS and auth flags (the password
    asked for here when --user has none)."""
    ctx = click.get_current_context(silent=True)
    given = ctx.meta.get(_AUTH_META, {}) if ctx is not None else {}
    settings: dict[str, Any] = {"tls": tls_settings()}
    creds = credentials(given.get("user"), given.get("password"))
    if creds is not None:
        settings["user"], settings["password"] = creds
    return settings


def client_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--endpoints, --timeout, --transport, --json, TLS (--cacert, --cert, --key) and
    etcd's auth (--user, --password), shared by every client command."""
    fn = _auth_option("password", "PASSWORD",
                      "The password of --user (then --user holds the name only).")(fn)
    fn = _auth_option("user", "NAME[:PASSWORD]", "Act as this user when the cluster has "
                      "etcd's auth enabled (asks for the password if not given).")(fn)
    fn = _tls_option("key", "TLS: the client certificate's key (env DENGINE_KEY).")(fn)
    fn = _tls_option("cert", "TLS: a client certificate, for nodes that require one "
                             "(env DENGINE_CERT).")(fn)
    fn = _tls_option("cacert", "TLS: the CA that signed the nodes' certificates; turns TLS "
                               "on (env DENGINE_CACERT).")(fn)
    fn = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(fn)
    fn = click.option("--transport", type=click.Choice(list(TRANSPORTS)), default="auto",
                      show_default=True,
                      help="auto: the native protocol where a node offers it, else gRPC.")(fn)
    fn = click.option("--timeout", type=SECONDS, default=5.0, show_default=True,
                      help="Deadline in seconds, retries included.")(fn)
    fn = click.option("--endpoints", envvar="DENGINE_ENDPOINTS", default=DEFAULT_ENDPOINTS,
                      show_default=True, metavar="HOST:PORT,...",
                      help="Client addresses of some or all nodes (env DENGINE_ENDPOINTS).")(fn)
    return fn


hex_option = click.option("--hex", "use_hex", is_flag=True,
                          help="KEY/VALUE are hexadecimal; print values as hexadecimal.")


def run(endpoints: str, timeout: float, transport: str,
        action: Callable[[Client], Coroutine[Any, Any, T]]) -> T:
    """Run one client action on a fresh event loop, closing the client afterwards. A
    command gives up at once when no endpoint can be connected to (refused, unknown host)
    rather than retrying until --timeout: a one-shot command has no restart to wait for."""

    settings = client_settings()

    async def main() -> T:
        async with Client(endpoints, timeout=timeout, transport=transport,
                          dial_timeout=0.0, **settings) as client:
            return await action(client)

    return asyncio.run(main())


def decode_arg(text: str, use_hex: bool, what: str) -> bytes:
    if use_hex:
        try:
            return binascii.unhexlify(text)
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"{what} {text!r} is not valid hexadecimal") from None
    return text.encode("utf-8", "surrogateescape")


def emit(data: dict[str, Any] | list[Any]) -> None:
    click.echo(json.dumps(data, indent=None if isinstance(data, dict) else 2))


@click.command()
@client_options
def status(endpoints: str, timeout: float, transport: str, as_json: bool) -> None:
    """Show every endpoint's node: id, role, term, leader, commit/applied/last log index."""
    results = run(endpoints, timeout, transport, lambda c: c.status_all())
    if as_json:
        emit([
            {"endpoint": ep, "error": {"code": r.code, "message": r.message}}
            if isinstance(r, DengineError) else r.to_dict()
            for ep, r in results.items()
        ])
    else:
        _print_status_table(results)
    if all(isinstance(r, DengineError) for r in results.values()):
        sys.exit(1)


def _print_status_table(results: dict[str, NodeStatus | DengineError]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None)
    for column in ("endpoint", "id", "role", "term", "leader", "commit", "applied",
                   "last index"):
        table.add_column(column, justify="left" if column in ("endpoint", "role") else "right")
    errors = []
    for endpoint, r in results.items():
        if isinstance(r, DengineError):
            table.add_row(endpoint, "-", "[red]unreachable[/red]", *["-"] * 5)
            where = "" if endpoint in r.message else f"{endpoint}: "
            errors.append(f"{where}error [{r.code}]: {r.message}")
        else:
            leader = str(r.leader_id) if r.leader_id else "none"
            role = f"[bold]{r.role}[/bold]" if r.role == "leader" else r.role
            table.add_row(endpoint, str(r.node_id), role, str(r.term), leader,
                          str(r.commit_index), str(r.applied_index), str(r.last_log_index))
    Console().print(table)
    for line in errors:  # why each one is unreachable
        click.echo(line, err=True)


@click.group()
def member() -> None:
    """Cluster membership: list, add a learner, promote it to voter, remove a member.

    One change at a time (single-server changes): a change asked while another is still
    pending is retried until --timeout.
    """


@member.command("list")
@client_options
def member_list(endpoints: str, timeout: float, transport: str, as_json: bool) -> None:
    """List voters and learners as the leader sees them (with replication progress)."""
    members = run(endpoints, timeout, transport, lambda c: c.members())
    _print_members(members, as_json)


@member.command("add")
@click.argument("node_id", metavar="ID", type=click.IntRange(min=1))
@click.argument("address", metavar="HOST:PORT")
@click.option("--promote", is_flag=True,
              help="Promote it to voter automatically once it has caught up.")
@client_options
def member_add(node_id: int, address: str, promote: bool, endpoints: str, timeout: float,
               transport: str, as_json: bool) -> None:
    """Add node ID, whose peer listener is HOST:PORT, as a learner.

    Start the new node first (`dengine serve --join ...` does all of this by itself)."""
    members = run(endpoints, timeout, transport,
                  lambda c: c.add_member(node_id, address, promote))
    _print_members(members, as_json)


@member.command("promote")
@click.argument("node_id", metavar="ID", type=click.IntRange(min=1))
@client_options
def member_promote(node_id: int, endpoints: str, timeout: float, transport: str,
                   as_json: bool) -> None:
    """Make learner ID a voter (refused until it has caught up with the leader)."""
    members = run(endpoints, timeout, transport, lambda c: c.promote_member(node_id))
    _print_members(members, as_json)


@member.command("remove")
@click.argument("node_id", metavar="ID", type=click.IntRange(min=1))
@client_options
def member_remove(node_id: int, endpoints: str, timeout: float, transport: str,
                  as_json: bool) -> None:
    """Remove member ID (a voter or a learner; the leader hands over first if it is ID)."""
    members = run(endpoints, timeout, transport, lambda c: c.remove_member(node_id))
    _print_members(members, as_json)


def _print_members(members: list[MemberInfo], as_json: bool) -> None:
    if as_json:
        emit({"members": [m.to_dict() for m in members]})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None)
    for column in ("id", "role", "peer address", "client address", "match index"):
        table.add_column(column, justify="right" if column in ("id", "match index") else "left")
    for m in sorted(members, key=lambda m: m.id):
        role = f"[bold]{m.role} (leader)[/bold]" if m.is_leader else m.role
        table.add_row(str(m.id), role, m.address, m.client_address or "-", str(m.match_index))
    Console().print(table)

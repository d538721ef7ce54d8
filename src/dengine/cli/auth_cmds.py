"""`dengine user | role | auth ...`: etcdctl's auth commands, arguments and output over
etcd's Auth service (`dengine.client.auth`), with `--user NAME[:PASSWORD]` (and
`--password`) as etcdctl takes them (docs/auth.md)."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import Callable
from typing import Any

import click

from dengine.cli.client_cmds import (
    DEFAULT_ENDPOINTS,
    SECONDS,
    _tls_option,
    credentials,
    tls_settings,
)
from dengine.client.auth import AuthClient
from dengine.errors import DengineError
from dengine.kv.ops import prefix_range_end
from dengine.proto.etcd import rpc_pb2 as pb
from dengine.proto.etcd.auth_pb2 import Permission

_ROOT_ROLE_MISSING = "etcdserver: root user does not have root role"
_PERM_TYPES = {"read": Permission.READ, "write": Permission.WRITE,
               "readwrite": Permission.READWRITE}


def auth_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("-w", "--write-out", type=click.Choice(["simple", "json"]),
                      default="simple", show_default=True,
                      help="Output format (etcdctl's; json: etcd's response).")(fn)
    fn = _tls_option("key", "TLS: the client certificate's key (env DENGINE_KEY).")(fn)
    fn = _tls_option("cert", "TLS: a client certificate (env DENGINE_CERT).")(fn)
    fn = _tls_option("cacert", "TLS: the CA that signed the nodes' certificates; turns TLS "
                               "on (env DENGINE_CACERT).")(fn)
    fn = click.option("--password", default=None,
                      help="The password of --user (then --user holds the name only).")(fn)
    fn = click.option("--user", default=None, metavar="NAME[:PASSWORD]",
                      help="Act as this user (asks for the password if not given).")(fn)
    fn = click.option("--timeout", type=SECONDS, default=5.0, show_default=True,
                      help="Deadline of each call, in seconds.")(fn)
    fn = click.option("--endpoints", envvar="DENGINE_ENDPOINTS", default=DEFAULT_ENDPOINTS,
                      show_default=True, metavar="HOST:PORT,...",
                      help="Client addresses (gRPC) of the nodes (env DENGINE_ENDPOINTS).")(fn)
    return fn


def call(opts: dict[str, Any], method: str, request: Any) -> Any:
    """`method` of etcd's Auth service as --user, on the first endpoint that answers;
    etcd's error printed as etcdctl prints it ("Error: ...", exit 1)."""
    endpoints = [e.strip() for e in opts["endpoints"].split(",") if e.strip()]
    creds = credentials(opts["user"], opts["password"])

    async def main() -> Any:
        async with AuthClient(endpoints, timeout=opts["timeout"], tls=tls_settings()) as c:
            if creds is not None:
                try:
                    await c.authenticate(*creds)
                except DengineError as e:  # etcdctl: no client, ExitBadConnection
                    raise _BadConnection(e.message) from None
            if method != "AuthEnable":
                return await c.call(method, request)
            while True:  # etcdctl's auth enable: make root's role if it is missing
                try:
                    return await c.call(method, request)
                except DengineError as e:
                    if e.message != _ROOT_ROLE_MISSING:
                        raise
                    await c.call("RoleAdd", pb.AuthRoleAddRequest(name="root"))
                    await c.call("UserGrantRole",
                                 pb.AuthUserGrantRoleRequest(user="root", role="root"))

    try:
        return asyncio.run(main())
    except _BadConnection as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)
    except DengineError as e:
        click.echo(f"Error: {e.message}", err=True)
        sys.exit(1)


def _json(resp: Any) -> dict[str, Any]:
    """etcdctl's `-w json` of an Auth response: Go's encoding of etcd's message (zero
    fields left out, bytes in base64), fields in etcd's order."""
    h = resp.header
    header = {k: v for k, v in (("cluster_id", h.cluster_id), ("member_id", h.member_id),
                                ("revision", h.revision), ("raft_term", h.raft_term)) if v}
    out: dict[str, Any] = {"header": header}
    for name in ("users", "roles"):
        if name in resp.DESCRIPTOR.fields_by_name and getattr(resp, name):
            out[name] = list(getattr(resp, name))
    if "perm" in resp.DESCRIPTOR.fields_by_name and resp.perm:
        out["perm"] = [{k: v for k, v in (
            ("permType", p.permType), ("key", base64.b64encode(p.key).decode()),
            ("range_end", base64.b64encode(p.range_end).decode())) if v} for p in resp.perm]
    return out


def show(opts: dict[str, Any], resp: Any, *lines: str) -> None:
    """`lines` (etcdctl's simple output), or with `-w json` the response as etcdctl's JSON."""
    if opts.get("write_out") == "json":
        click.echo(json.dumps(_json(resp), separators=(",", ":")))
        return
    for line in lines:
        click.echo(line)


class _BadConnection(Exception):
    """The login failed (etcdctl makes no client: exit code 2)."""


def _new_password(name: str, given: str | None, interactive: bool) -> str:
    """etcdctl's: from NAME:PASSWORD, else asked twice, else (--interactive=false) a line
    of stdin."""
    if given is not None:
        return given
    if not interactive:
        return sys.stdin.readline().rstrip("\n")
    first = click.prompt(f"Password of {name}", hide_input=True, err=True)
    again = click.prompt(f"Type password of {name} again for confirmation",
                         hide_input=True, err=True)
    if first != again:
        raise click.ClickException("given passwords are different")
    return str(first)


# ---------------------------------------------------------------- user

@click.group()
def user() -> None:
    """Users: add, delete, list, get, grant-role, revoke-role, passwd (etcdctl's)."""


@user.command("add")
@click.argument("spec", metavar="NAME[:PASSWORD]")
@click.option("--no-password", is_flag=True, help="A user without password (no login).")
@click.option("--interactive", type=bool, default=True, show_default=True,
              help="Ask for the password (false: read it from stdin).")
@auth_options
def user_add(spec: str, no_password: bool, interactive: bool, **opts: Any) -> None:
    name, sep, given = spec.partition(":")
    if not name:
        raise click.ClickException("empty user name is not allowed")
    password = "" if no_password else _new_password(name, given if sep else None,
                                                     interactive)
    req = pb.AuthUserAddRequest(name=name, password=password)
    req.options.no_password = no_password
    show(opts, call(opts, "UserAdd", req), f"User {name} created")


@user.command("delete")
@click.argument("name")
@auth_options
def user_delete(name: str, **opts: Any) -> None:
    show(opts, call(opts, "UserDelete", pb.AuthUserDeleteRequest(name=name)),
         f"User {name} deleted")


@user.command("list")
@auth_options
def user_list(**opts: Any) -> None:
    resp = call(opts, "UserList", pb.AuthUserListRequest())
    show(opts, resp, *resp.users)


@user.command("get")
@click.argument("name")
@click.option("--detail", is_flag=True, help="Show each role's permissions too.")
@auth_options
def user_get(name: str, detail: bool, **opts: Any) -> None:
    resp = call(opts, "UserGet", pb.AuthUserGetRequest(name=name))
    if not detail:
        show(opts, resp, f"User: {name}", "Roles:" + "".join(f" {r}" for r in resp.roles))
        return
    click.echo(f"User: {name}")  # then each role as `role get` shows it (etcdctl's)
    for role in resp.roles:
        click.echo("")
        role_resp = call(opts, "RoleGet", pb.AuthRoleGetRequest(role=role))
        show(opts, role_resp, *_role_lines(role, role_resp))


@user.command("grant-role")
@click.argument("name")
@click.argument("role")
@auth_options
def user_grant_role(name: str, role: str, **opts: Any) -> None:
    show(opts, call(opts, "UserGrantRole", pb.AuthUserGrantRoleRequest(user=name, role=role)),
         f"Role {role} is granted to user {name}")


@user.command("revoke-role")
@click.argument("name")
@click.argument("role")
@auth_options
def user_revoke_role(name: str, role: str, **opts: Any) -> None:
    show(opts, call(opts, "UserRevokeRole", pb.AuthUserRevokeRoleRequest(name=name, role=role)),
         f"Role {role} is revoked from user {name}")


@user.command("passwd")
@click.argument("name")
@click.option("--interactive", type=bool, default=True, show_default=True,
              help="Ask for the password (false: read it from stdin).")
@auth_options
def user_passwd(name: str, interactive: bool, **opts: Any) -> None:
    password = _new_password(name, None, interactive)
    show(opts, call(opts, "UserChangePassword",
                    pb.AuthUserChangePasswordRequest(name=name, password=password)),
         "Password updated")


# ---------------------------------------------------------------- role

@click.group()
def role() -> None:
    """Roles: add, delete, list, get, grant-permission, revoke-permission (etcdctl's)."""


@role.command("add")
@click.argument("name")
@auth_options
def role_add(name: str, **opts: Any) -> None:
    show(opts, call(opts, "RoleAdd", pb.AuthRoleAddRequest(name=name)), f"Role {name} created")


@role.command("delete")
@click.argument("name")
@auth_options
def role_delete(name: str, **opts: Any) -> None:
    show(opts, call(opts, "RoleDelete", pb.AuthRoleDeleteRequest(role=name)),
         f"Role {name} deleted")


@role.command("list")
@auth_options
def role_list(**opts: Any) -> None:
    resp = call(opts, "RoleList", pb.AuthRoleListRequest())
    show(opts, resp, *resp.roles)


def permission_line(perm: Permission) -> str:
    """One permission as etcdctl's `role get` prints it."""
    key = perm.key.decode(errors="replace")
    if not perm.range_end:
        return f"\t{key}"
    if perm.range_end == b"\0":
        return f"\t[{key}, <open ended>"
    end = perm.range_end.decode(errors="replace")
    line = f"\t[{key}, {end})"
    if prefix_range_end(perm.key) == perm.range_end:
        line += f" (prefix {key})"
    return line


@role.command("get")
@click.argument("name")
@auth_options
def role_get(name: str, **opts: Any) -> None:
    resp = call(opts, "RoleGet", pb.AuthRoleGetRequest(role=name))
    show(opts, resp, *_role_lines(name, resp))


def _role_lines(name: str, resp: pb.AuthRoleGetResponse) -> list[str]:
    reads = [permission_line(p) for p in resp.perm
             if p.permType in (Permission.READ, Permission.READWRITE)]
    writes = [permission_line(p) for p in resp.perm
              if p.permType in (Permission.WRITE, Permission.READWRITE)]
    return [f"Role {name}", "KV Read:", *reads, "KV Write:", *writes]


def _range_end(key: str, range_end: str | None, prefix: bool, from_key: bool) -> bytes:
    if prefix and from_key:
        raise click.UsageError("--from-key and --prefix cannot be set at the same time")
    if (prefix or from_key) and range_end is not None:
        raise click.UsageError("too many arguments (RANGE_END with --prefix or --from-key)")
    if prefix:
        return prefix_range_end(key.encode()) or b"\0"
    if from_key:
        return b"\0"
    return (range_end or "").encode()


@role.command("grant-permission")
@click.argument("name")
@click.argument("perm_type", metavar="PERM_TYPE", type=click.Choice(list(_PERM_TYPES),
                                                                     case_sensitive=False))
@click.argument("key")
@click.argument("range_end", required=False)
@click.option("--prefix", is_flag=True, help="Every key starting with KEY.")
@click.option("--from-key", is_flag=True, help="Every key from KEY on.")
@auth_options
def role_grant_permission(name: str, perm_type: str, key: str, range_end: str | None,
                          prefix: bool, from_key: bool, **opts: Any) -> None:
    req = pb.AuthRoleGrantPermissionRequest(name=name)
    req.perm.permType = _PERM_TYPES[perm_type.lower()]
    req.perm.key = key.encode()
    req.perm.range_end = _range_end(key, range_end, prefix, from_key)
    show(opts, call(opts, "RoleGrantPermission", req), f"Role {name} updated")


@role.command("revoke-permission")
@click.argument("name")
@click.argument("key")
@click.argument("range_end", required=False)
@click.option("--prefix", is_flag=True, help="Every key starting with KEY.")
@click.option("--from-key", is_flag=True, help="Every key from KEY on.")
@auth_options
def role_revoke_permission(name: str, key: str, range_end: str | None, prefix: bool,
                           from_key: bool, **opts: Any) -> None:
    end = _range_end(key, range_end, prefix, from_key)
    resp = call(opts, "RoleRevokePermission",
                pb.AuthRoleRevokePermissionRequest(role=name, key=key.encode(), range_end=end))
    if end:
        shown = "<open ended>" if end == b"\0" else end.decode(errors="replace")
        show(opts, resp, f"Permission of range [{key}, {shown}) is revoked from role {name}")
    else:
        show(opts, resp, f"Permission of key {key} is revoked from role {name}")


# ---------------------------------------------------------------- auth

@click.group()
def auth() -> None:
    """Enable or disable authentication (etcdctl's)."""


@auth.command("enable")
@auth_options
def auth_enable(**opts: Any) -> None:
    call(opts, "AuthEnable", pb.AuthEnableRequest())
    click.echo("Authentication Enabled")  # with -w json too, as etcdctl 3.4


@auth.command("disable")
@auth_options
def auth_disable(**opts: Any) -> None:
    call(opts, "AuthDisable", pb.AuthDisableRequest())
    click.echo("Authentication Disabled")  # with -w json too, as etcdctl 3.4

"""`dengine endpoint health|status|hashkv`: etcdctl's commands over etcd's API of every
endpoint, with its columns, its JSON and its exit codes (1 when an endpoint is unhealthy
or does not answer).

health: a linearizable Range of the key "health" (permission denied counts as healthy: the
request went through the cluster), then the member's alarms (`Maintenance/Alarm`); status:
`Maintenance/Status`; hashkv: `Maintenance/HashKV` (the members of a healthy cluster
answer the same hash for the same revision). Every endpoint is asked at once;
`--cluster` asks every member's client URL (`Cluster/MemberList` of the first endpoint
that answers).
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import click
import grpc

from dengine.cli.client_cmds import DEFAULT_ENDPOINTS, SECONDS, _tls_option, tls_settings
from dengine.proto.etcd import rpc_pb2

FORMATS = ("table", "json", "simple")
HEALTH_COLUMNS = ("ENDPOINT", "HEALTH", "TOOK", "ERROR")
HASHKV_COLUMNS = ("ENDPOINT", "HASH")
STATUS_COLUMNS = ("ENDPOINT", "ID", "VERSION", "DB SIZE", "IS LEADER", "IS LEARNER",
                  "RAFT TERM", "RAFT INDEX", "RAFT APPLIED INDEX", "ERRORS")


def go_duration(seconds: float) -> str:
    """`seconds` as Go prints a time.Duration below a minute ("6.438468ms", "5.0007s")."""
    ns = round(seconds * 1e9)
    for unit, scale in (("s", 10**9), ("ms", 10**6), ("µs", 10**3)):
        if ns >= scale:
            whole, frac = divmod(ns, scale)
            digits = f"{frac:0{len(str(scale)) - 1}d}".rstrip("0")
            return f"{whole}.{digits}{unit}" if digits else f"{whole}{unit}"
    return f"{ns}ns"


def human_bytes(n: int) -> str:
    """go-humanize's Bytes, as etcdctl prints a DB size ("20 kB", "2.1 MB")."""
    if n < 10:
        return f"{n} B"
    e = math.floor(math.log(n, 1000))
    suffix = ("B", "kB", "MB", "GB", "TB", "PB", "EB")[e]
    value = math.floor(n / 1000**e * 10 + 0.5) / 10
    return f"{value:.1f} {suffix}" if value < 10 else f"{value:.0f} {suffix}"


def table(header: tuple[str, ...], rows: list[list[str]]) -> str:
    """etcdctl's tables: centred headers, right-aligned cells."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    border = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    def centre(text: str, width: int) -> str:  # tablewriter's: the odd space on the right
        left = (width - len(text)) // 2
        return " " * left + text + " " * (width - len(text) - left)

    lines = [border, "|" + "|".join(f" {centre(h, w)} " for h, w in zip(header, widths,
                                                                       strict=True)) + "|",
             border]
    lines += ["|" + "|".join(f" {c.rjust(w)} " for c, w in zip(row, widths, strict=True))
              + "|" for row in rows]
    return "\n".join([*lines, border])


def as_dict(message: Any) -> dict[str, Any]:
    """A message as etcdctl's JSON prints it: its proto field names, the fields set only,
    64-bit integers as numbers."""
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        if field.type == field.TYPE_MESSAGE:
            out[field.name] = ([as_dict(v) for v in value]
                               if field.is_repeated else as_dict(value))
        else:
            out[field.name] = list(value) if field.is_repeated else value
    return out


def _error_text(e: grpc.aio.AioRpcError) -> str:
    """etcd's message, etcdctl's words for a deadline, the reason a connection failed."""
    details = e.details() or e.code().name
    if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "context deadline exceeded"
    if details.startswith("failed to connect to all addresses"):
        return details.rpartition(": ")[2]  # "Connection refused", a DNS failure, ...
    return details


class _Endpoints:
    """Channels to the endpoints (TLS per the command's flags) and etcd's calls on them."""

    def __init__(self, timeout: float) -> None:
        tls = tls_settings()
        self._credentials = tls.grpc_credentials() if tls is not None else None
        self._timeout = timeout
        self._channels: dict[str, grpc.aio.Channel] = {}

    def channel(self, endpoint: str) -> grpc.aio.Channel:
        if endpoint not in self._channels:
            target = endpoint.split("://", 1)[-1]
            self._channels[endpoint] = (
                grpc.aio.secure_channel(target, self._credentials)
                if self._credentials is not None else grpc.aio.insecure_channel(target))
        return self._channels[endpoint]

    async def call(self, endpoint: str, path: str, request: Any, response: Any) -> Any:
        stub = self.channel(endpoint).unary_unary(
            path, request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response.FromString)
        return await stub(request, timeout=self._timeout)

    async def members(self, endpoints: list[str]) -> list[str]:
        """Every member's client URLs, from the first endpoint that answers."""
        why = ""
        for ep in endpoints:
            try:
                resp = await self.call(ep, "/etcdserverpb.Cluster/MemberList",
                                       rpc_pb2.MemberListRequest(),
                                       rpc_pb2.MemberListResponse)
                return [u for m in resp.members for u in m.clientURLs]
            except grpc.aio.AioRpcError as e:
                why = f"{ep}: {_error_text(e)}"
        raise click.ClickException(f"cannot list the members ({why})")

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


async def _health(eps: _Endpoints, endpoint: str) -> dict[str, Any]:
    started = time.perf_counter()
    out: dict[str, Any] = {"endpoint": endpoint, "health": False}
    try:
        await eps.call(endpoint, "/etcdserverpb.KV/Range", rpc_pb2.RangeRequest(key=b"health"),
                       rpc_pb2.RangeResponse)
        out["health"] = True
    except grpc.aio.AioRpcError as e:
        if e.code() == grpc.StatusCode.PERMISSION_DENIED:
            out["health"] = True
        else:
            out["error"] = _error_text(e)
    out["took"] = go_duration(time.perf_counter() - started)
    if out["health"]:
        try:
            alarms = await eps.call(endpoint, "/etcdserverpb.Maintenance/Alarm",
                                    rpc_pb2.AlarmRequest(), rpc_pb2.AlarmResponse)
            if alarms.alarms:
                out["health"] = False
                out["error"] = "Active Alarm(s): " + "".join(
                    f"{rpc_pb2.AlarmType.Name(a.alarm)} " for a in alarms.alarms)
        except grpc.aio.AioRpcError:
            out["health"] = False
            out["error"] = "Unable to fetch the alarm list"
    return out


def _ask(path: str, request: Any, response: Any) -> Callable[[_Endpoints, str], Any]:
    """One etcd call per endpoint: (endpoint, its answer or the error's text)."""
    async def ask(eps: _Endpoints, endpoint: str) -> tuple[str, Any]:
        try:
            return endpoint, await eps.call(endpoint, path, request, response)
        except grpc.aio.AioRpcError as e:
            return endpoint, _error_text(e)
    return ask


_status = _ask("/etcdserverpb.Maintenance/Status", rpc_pb2.StatusRequest(),
               rpc_pb2.StatusResponse)


def _answered(results: list[tuple[str, Any]], what: str) -> list[tuple[str, Any]]:
    """The endpoints that answered; etcdctl's line on stderr for each of the others."""
    for ep, answer in results:
        if isinstance(answer, str):
            click.echo(f"Failed to get the {what} of endpoint {ep} ({answer})", err=True)
    return [(ep, answer) for ep, answer in results if not isinstance(answer, str)]


def _gather(endpoints: str, cluster: bool, timeout: float,
            each: Callable[[_Endpoints, str], Any]) -> list[Any]:
    listed = [e.strip() for e in endpoints.split(",") if e.strip()]
    if not listed:
        raise click.UsageError("--endpoints is empty")

    async def main() -> list[Any]:
        eps = _Endpoints(timeout)
        try:
            targets = await eps.members(listed) if cluster else listed
            return list(await asyncio.gather(*(each(eps, ep) for ep in targets)))
        finally:
            await eps.close()

    return asyncio.run(main())


def endpoint_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--json", "as_json", is_flag=True, help="Same as -w json.")(fn)
    fn = click.option("-w", "--write-out", type=click.Choice(FORMATS), default="table",
                      show_default=True, help="Output format (etcdctl's).")(fn)
    return connection_options(fn)


def connection_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = _tls_option("key", "TLS: the client certificate's key (env DENGINE_KEY).")(fn)
    fn = _tls_option("cert", "TLS: a client certificate (env DENGINE_CERT).")(fn)
    fn = _tls_option("cacert", "TLS: the CA that signed the nodes' certificates; turns TLS "
                               "on (env DENGINE_CACERT).")(fn)
    fn = click.option("--cluster", is_flag=True,
                      help="Ask every member (their client URLs from MemberList).")(fn)
    fn = click.option("--timeout", type=SECONDS, default=5.0, show_default=True,
                      help="Deadline of each endpoint's answer, in seconds.")(fn)
    fn = click.option("--endpoints", envvar="DENGINE_ENDPOINTS", default=DEFAULT_ENDPOINTS,
                      show_default=True, metavar="HOST:PORT,...",
                      help="Client addresses (gRPC) of the nodes (env DENGINE_ENDPOINTS).")(fn)
    return fn


@click.group()
def endpoint() -> None:
    """etcdctl's `endpoint health|status|hashkv` over etcd's API of every endpoint."""


@endpoint.command()
@endpoint_options
def health(endpoints: str, timeout: float, cluster: bool, write_out: str,
           as_json: bool) -> None:
    """Whether each endpoint commits a linearizable read and has no alarm."""
    results = _gather(endpoints, cluster, timeout, _health)
    fmt = "json" if as_json else write_out
    if fmt == "json":
        click.echo(json.dumps(results, separators=(",", ":")))
    elif fmt == "table":
        click.echo(table(HEALTH_COLUMNS, [[r["endpoint"], str(r["health"]).lower(), r["took"],
                                           r.get("error", "")] for r in results]))
    else:  # on stderr, healthy or not, as etcdctl prints them
        for r in results:
            if r["health"]:
                click.echo(f"{r['endpoint']} is healthy: successfully committed proposal: "
                           f"took = {r['took']}", err=True)
            else:
                click.echo(f"{r['endpoint']} is unhealthy: failed to commit proposal: "
                           f"{r.get('error', '')}", err=True)
    if not all(r["health"] for r in results):
        click.echo("Error: unhealthy cluster", err=True)
        sys.exit(1)


@endpoint.command()
@endpoint_options
def status(endpoints: str, timeout: float, cluster: bool, write_out: str,
           as_json: bool) -> None:
    """Each endpoint's member: id, version, data size, leader, learner, Raft term and
    indexes, errors (alarms, no leader)."""
    results = _gather(endpoints, cluster, timeout, _status)
    answered = _answered(results, "status")
    fmt = "json" if as_json else write_out
    if fmt == "json":
        click.echo(json.dumps([{"Endpoint": ep, "Status": as_dict(st)} for ep, st in answered],
                              separators=(",", ":")))
    else:
        rows = [[ep, f"{st.header.member_id:x}", st.version, human_bytes(st.dbSize),
                 str(st.header.member_id == st.leader).lower(), str(st.isLearner).lower(),
                 str(st.raftTerm), str(st.raftIndex), str(st.raftAppliedIndex),
                 ", ".join(st.errors)] for ep, st in answered]
        if fmt == "table":
            click.echo(table(STATUS_COLUMNS, rows))
        else:
            for row in rows:
                click.echo(", ".join(row))
    if len(answered) < len(results):
        sys.exit(1)


@endpoint.command()
@endpoint_options
@click.option("--rev", "revision", type=click.IntRange(0), default=0,
              help="The revision to hash at (0: each member's current one).")
def hashkv(endpoints: str, timeout: float, cluster: bool, write_out: str, as_json: bool,
           revision: int) -> None:
    """Each endpoint's hash of its key-value history at a revision (etcd's HashKV):
    members that answer different hashes for the same revision have diverged."""
    results = _gather(endpoints, cluster, timeout, _ask(
        "/etcdserverpb.Maintenance/HashKV", rpc_pb2.HashKVRequest(revision=revision),
        rpc_pb2.HashKVResponse))
    answered = _answered(results, "hash")
    fmt = "json" if as_json else write_out
    if fmt == "json":
        click.echo(json.dumps([{"Endpoint": ep, "HashKV": as_dict(h)} for ep, h in answered],
                              separators=(",", ":")))
    elif fmt == "table":
        click.echo(table(HASHKV_COLUMNS, [[ep, str(h.hash)] for ep, h in answered]))
    else:
        for ep, h in answered:
            click.echo(f"{ep}, {h.hash}")
    failed = [h for _, h in results if isinstance(h, str)]
    if failed:
        click.echo(f"Error: {failed[-1]}", err=True)
        sys.exit(1)


@click.command("move-leader")
@click.argument("transferee")
@connection_options
def move_leader(transferee: str, endpoints: str, timeout: float, cluster: bool) -> None:
    """etcdctl's `move-leader TRANSFEREE` (a hex member id): the leader, found among the
    endpoints by their status, hands leadership to that voter."""
    try:
        target = int(transferee, 16)
    except ValueError:
        raise click.UsageError(f"TRANSFEREE must be a hex member id, got {transferee!r}"
                               ) from None
    results = _gather(endpoints, cluster, timeout, _status)
    leader = next(((ep, st) for ep, st in results
                   if not isinstance(st, str) and st.leader == st.header.member_id), None)
    if leader is None:
        listed = [ep for ep, _ in results]
        raise click.ClickException(f"no leader endpoint given at [{' '.join(listed)}]")

    async def move() -> None:
        eps = _Endpoints(timeout)
        try:
            await eps.call(leader[0], "/etcdserverpb.Maintenance/MoveLeader",
                           rpc_pb2.MoveLeaderRequest(targetID=target),
                           rpc_pb2.MoveLeaderResponse)
        except grpc.aio.AioRpcError as e:
            raise click.ClickException(_error_text(e)) from None
        finally:
            await eps.close()

    asyncio.run(move())
    click.echo(f"Leadership transferred from {leader[1].leader:x} to {target:x}")


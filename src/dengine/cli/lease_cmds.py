"""`dengine lease grant | revoke | keep-alive | timetolive | list`: etcdctl 3.4's lease
commands and their output, thin over `dengine.Client` (lease ids in hexadecimal)."""

from __future__ import annotations

import asyncio
import json

import click

from dengine.cli.client_cmds import client_options, client_settings, run
from dengine.client import Client
from dengine.errors import DengineError, InvalidRequest, LeaseNotFound


def lease_id_arg(text: str) -> int:
    try:
        value = int(text, 16)
    except ValueError:
        raise InvalidRequest(f"bad lease ID {text!r} (hexadecimal expected)") from None
    if value >= 1 << 64:
        raise InvalidRequest(f"bad lease ID {text!r} (more than 64 bits)")
    return value - (1 << 64) if value >= 1 << 63 else value  # etcd's int64, printed unsigned


def hex_id(lease_id: int) -> str:
    return format(lease_id & 0xFFFFFFFFFFFFFFFF, "016x")  # etcdctl's %016x


@click.group()
def lease() -> None:
    """Leases: keys attached to a lease are deleted when it expires or is revoked."""


@lease.command()
@click.argument("ttl", type=int)
@client_options
def grant(ttl: int, endpoints: str, timeout: float, transport: str, as_json: bool) -> None:
    """Grant a lease of TTL seconds (raised to the cluster's minimum)."""
    result = run(endpoints, timeout, transport, lambda c: c.lease_grant(ttl))
    if as_json:
        click.echo(json.dumps({"ID": result.id, "TTL": result.ttl}))
    else:
        click.echo(f"lease {hex_id(result.id)} granted with TTL({result.ttl}s)")


@lease.command()
@click.argument("lease_id", metavar="LEASE_ID")
@client_options
def revoke(lease_id: str, endpoints: str, timeout: float, transport: str,
           as_json: bool) -> None:
    """Revoke a lease: every key attached to it is deleted."""
    ident = lease_id_arg(lease_id)
    run(endpoints, timeout, transport, lambda c: c.lease_revoke(ident))
    click.echo(f"lease {hex_id(ident)} revoked")


@lease.command()
@click.argument("lease_id", metavar="LEASE_ID")
@click.option("--keys", is_flag=True, help="Also the keys attached to the lease.")
@client_options
def timetolive(lease_id: str, keys: bool, endpoints: str, timeout: float, transport: str,
               as_json: bool) -> None:
    """The seconds left of a lease, its granted TTL (and its keys)."""
    ident = lease_id_arg(lease_id)
    info = run(endpoints, timeout, transport,
               lambda c: c.lease_time_to_live(ident, keys=keys))
    if as_json:
        click.echo(json.dumps({"ID": info.id, "TTL": info.ttl, "granted-ttl": info.granted_ttl,
                               "keys": [k.decode("utf-8", "replace") for k in info.keys]}))
    elif info.ttl == -1:
        click.echo(f"lease {hex_id(ident)} already expired")
    else:
        line = f"lease {hex_id(ident)} granted with TTL({info.granted_ttl}s), " \
               f"remaining({info.ttl}s)"
        if keys:
            names = " ".join(k.decode("utf-8", "surrogateescape") for k in info.keys)
            line += f", attached keys([{names}])"
        click.echo(line)


@lease.command("list")
@client_options
def list_leases(endpoints: str, timeout: float, transport: str, as_json: bool) -> None:
    """Every lease id."""
    ids = run(endpoints, timeout, transport, lambda c: c.leases())
    if as_json:
        click.echo(json.dumps({"leases": [{"ID": i} for i in ids]}))
        return
    click.echo(f"found {len(ids)} leases")
    for i in ids:
        click.echo(hex_id(i))


@lease.command("keep-alive")
@click.argument("lease_id", metavar="LEASE_ID")
@click.option("--once", is_flag=True, help="Renew once, then exit.")
@client_options
def keep_alive(lease_id: str, once: bool, endpoints: str, timeout: float, transport: str,
               as_json: bool) -> None:
    """Keep a lease alive (every TTL/3) until interrupted, or until it is gone."""
    ident = lease_id_arg(lease_id)

    settings = client_settings()

    async def main() -> None:
        async with Client(endpoints, timeout=timeout, transport=transport,
                          **settings) as client:
            failing_since = None
            while True:
                loop = asyncio.get_running_loop()
                try:
                    ttl = await client.lease_keepalive_once(ident)
                except LeaseNotFound:
                    click.echo(f"lease {hex_id(ident)} expired or revoked.")
                    return
                except DengineError:
                    if once:
                        raise
                    failing_since = failing_since or loop.time()
                    await asyncio.sleep(0.5)  # the client finds the new leader
                    continue
                failing_since = None
                click.echo(f"lease {hex_id(ident)} keepalived with TTL({ttl})")
                if once:
                    return
                await asyncio.sleep(max(0.5, ttl / 3))

    asyncio.run(main())

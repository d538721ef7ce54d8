"""`dengine lock` and `dengine elect`: etcdctl's commands and output, over the recipes of
`dengine.recipes` (the same keys as etcdctl's, so the two interoperate).

* `dengine lock NAME`: waits for the lock, prints its key, holds it until interrupted
  (SIGINT/SIGTERM), then releases it. `dengine lock NAME -- COMMAND [ARG...]` runs the
  command while holding the lock (environment: ETCD_LOCK_KEY, ETCD_LOCK_REV and
  DENGINE_FENCING_TOKEN = the fencing token), releases it, and exits with the command's
  status.
* `dengine elect NAME VALUE`: campaigns, prints the leader key and value once elected,
  leads until interrupted, then resigns. `dengine elect -l NAME`: prints the leader's key
  and value now and at each change, until interrupted.

A lease that ends while the lock or the leadership is held (the cluster did not hear
from this process for its TTL) is an error: "session expired", exit status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

import click

from dengine.api import KeyValue
from dengine.cli.client_cmds import client_options, client_settings, decode_arg, hex_option
from dengine.client import Client
from dengine.errors import DengineError, InvalidRequest
from dengine.recipes import SessionExpired


def _line(data: bytes, use_hex: bool) -> None:
    sys.stdout.buffer.write((data.hex().encode() if use_hex else data) + b"\n")
    sys.stdout.buffer.flush()


def _kv(kv: KeyValue, use_hex: bool) -> None:
    _line(kv.key, use_hex)
    _line(kv.value, use_hex)


def _interrupted() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (the handlers of this loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


async def _until(stop: asyncio.Event, lost: asyncio.Event) -> None:
    """Wait until interrupted; SessionExpired if `lost` comes first."""
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(lost.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
    if lost.is_set() and not stop.is_set():
        raise SessionExpired("session expired")


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--ttl", type=click.IntRange(min=1), default=60, show_default=True,
              help="Seconds the lock outlives this process if it dies (its lease's TTL).")
@click.option("--wait", "wait_s", type=float, default=None, metavar="SECONDS",
              help="Give up (exit 1) if the lock is not acquired within SECONDS.")
@hex_option
@client_options
def lock(name: str, command: tuple[str, ...], ttl: int, wait_s: float | None, use_hex: bool,
         endpoints: str, timeout: float, transport: str, as_json: bool) -> None:
    """Acquire the distributed lock NAME; hold it until interrupted, or run COMMAND
    (after `--`) while holding it and exit with its status."""
    lock_name = decode_arg(name, use_hex, "lock name")
    if wait_s is not None and wait_s <= 0:
        raise InvalidRequest(f"--wait must be above 0, got {wait_s!r}")

    settings = client_settings()

    async def main() -> int:
        stop = _interrupted()
        async with Client(endpoints, timeout=timeout, transport=transport,
                          **settings) as client:
            acquiring = asyncio.ensure_future(
                client.lock(lock_name, ttl, timeout=wait_s).acquire())
            interrupted = asyncio.ensure_future(stop.wait())
            await asyncio.wait([acquiring, interrupted], return_when=asyncio.FIRST_COMPLETED)
            interrupted.cancel()
            if not acquiring.done():
                acquiring.cancel()  # leaves the queue
                with contextlib.suppress(asyncio.CancelledError, DengineError):
                    await acquiring
                return 130
            held = acquiring.result()
            try:
                if not command:
                    _line(held.key, use_hex)
                    await _until(stop, held.lost)
                    return 0
                env = {**os.environ, "ETCD_LOCK_KEY": held.key.decode("utf-8", "replace"),
                       "ETCD_LOCK_REV": str(held.fencing_token),
                       "DENGINE_FENCING_TOKEN": str(held.fencing_token)}
                try:
                    proc = await asyncio.create_subprocess_exec(*command, env=env)
                except OSError as e:
                    raise InvalidRequest(f"cannot run {command[0]!r}: {e.strerror or e}"
                                         ) from None
                status = await proc.wait()
                if held.lost.is_set():
                    click.echo("warning: the lock's lease ended while the command ran "
                               "(session expired)", err=True)
                return status if status >= 0 else 128 - status
            finally:
                await held.release()

    sys.exit(asyncio.run(main()))


@click.command()
@click.argument("name")
@click.argument("value", required=False)
@click.option("-l", "--listen", is_flag=True,
              help="Observe the election: print the leader at each change.")
@click.option("--ttl", type=click.IntRange(min=1), default=60, show_default=True,
              help="Seconds the leadership outlives this process if it dies.")
@hex_option
@client_options
def elect(name: str, value: str | None, listen: bool, ttl: int, use_hex: bool,
          endpoints: str, timeout: float, transport: str, as_json: bool) -> None:
    """Campaign in election NAME with VALUE and lead until interrupted; with -l, print
    the leader (key, value) at each change."""
    election_name = decode_arg(name, use_hex, "election name")
    if not listen and value is None:
        raise click.UsageError("no proposal argument but -l not set")
    proposal = decode_arg(value, use_hex, "value") if value is not None else b""

    async def observe(client: Client, stop: asyncio.Event) -> int:
        async def follow() -> None:
            async for kv in client.election(election_name).observe():
                _kv(kv, use_hex)

        task = asyncio.ensure_future(follow())
        interrupted = asyncio.ensure_future(stop.wait())
        await asyncio.wait([task, interrupted], return_when=asyncio.FIRST_COMPLETED)
        interrupted.cancel()
        if task.done():
            task.result()
            return 0
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return 0

    async def campaign(client: Client, stop: asyncio.Event) -> int:
        election = client.election(election_name)
        starting = asyncio.ensure_future(election.campaign(proposal, ttl).start())
        interrupted = asyncio.ensure_future(stop.wait())
        await asyncio.wait([starting, interrupted], return_when=asyncio.FIRST_COMPLETED)
        interrupted.cancel()
        if not starting.done():
            starting.cancel()  # withdraws
            with contextlib.suppress(asyncio.CancelledError, DengineError):
                await starting
            return 130
        leadership = starting.result()
        try:
            kv = await client.get_kv(leadership.key)
            if kv is not None:
                _kv(kv, use_hex)
            await _until(stop, leadership.lost)
        finally:
            await leadership.resign()
        return 0

    settings = client_settings()

    async def main() -> int:
        stop = _interrupted()
        async with Client(endpoints, timeout=timeout, transport=transport,
                          **settings) as client:
            if listen:
                return await observe(client, stop)
            return await campaign(client, stop)

    sys.exit(asyncio.run(main()))


__all__ = ["elect", "lock"]

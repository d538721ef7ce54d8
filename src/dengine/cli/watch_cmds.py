"""`dengine watch KEY [RANGE_END] [--prefix] [--rev N] [--prev-kv] [-w json]`: etcdctl's
watch, thin over `Client.watch`.

It stays open and prints each event as it comes, in etcdctl 3.4's shapes: simple (the
event type, then the previous key and value with --prev-kv, then the key and value, one
per line) or JSON (one line per revision: `Header`, `Events` in etcd's JSON, then
`CompactRevision`, `Canceled`, `Created`). It resumes by itself across connection loss,
node failure and leader change (no event lost or repeated); a start below the history
exits with etcd's "required revision has been compacted". Ctrl-C ends it (status 130).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import click

from dengine.api import EventType, WatchEvent
from dengine.cli.client_cmds import client_options, client_settings, decode_arg, hex_option
from dengine.cli.kv_cmds import _kv_json, range_options, write_out_option
from dengine.client import Client
from dengine.errors import Compacted, InvalidRequest, KvError

_EXIT_WATCH_CANCELED = 5  # etcdctl's exit status (ExitBadFeature) for a cancelled watch


@click.command()
@click.argument("key")
@click.argument("range_end", required=False)
@range_options
@click.option("--rev", type=click.IntRange(min=0), default=0,
              help="Start at this revision (0: from now; in the past: the history).")
@click.option("--prev-kv", is_flag=True, help="Print each key as it was before the event.")
@write_out_option
@hex_option
@client_options
def watch(key: str, range_end: str | None, prefix: bool, from_key: bool, rev: int,
          prev_kv: bool, write_out: str, use_hex: bool, endpoints: str, timeout: float,
          transport: str, as_json: bool) -> None:
    """Print the changes of KEY, or of [KEY, RANGE_END), as they happen (etcdctl's watch)."""
    k = decode_arg(key, use_hex, "key")
    end = None if range_end is None else decode_arg(range_end, use_hex, "range_end")
    if sum((end is not None, prefix, from_key)) > 1:
        raise InvalidRequest("give at most one of RANGE_END, --prefix and --from-key")
    if from_key:
        end = b"\x00"
        k = k or b"\x00"
    printer = _Printer(as_json or write_out == "json", use_hex)
    settings = client_settings()

    async def main() -> None:
        async with Client(endpoints, timeout=timeout, transport=transport,
                          **settings) as client:
            stream = client.watch(k, end, prefix=prefix, start_revision=rev, prev_kv=prev_kv)
            async for event in stream:
                printer.event(event)
                if not stream_has_more(stream, event):
                    printer.flush()

    try:
        asyncio.run(main())
    except KvError as e:
        if isinstance(e, Compacted):
            raise
        # etcd cancels a watch its auth refuses (permission denied, no user): etcdctl's words
        code = "".join(word.capitalize() for word in e.grpc_code.split("_"))
        click.echo(f"watch was canceled (rpc error: code = {code} desc = {e.message})",
                   err=True)
        click.echo("Error: watch is canceled by the server", err=True)
        sys.exit(_EXIT_WATCH_CANCELED)


def stream_has_more(stream: Any, event: WatchEvent) -> bool:
    """Whether more events of `event`'s revision are already buffered (one JSON line per
    revision)."""
    return bool(stream.revision < event.revision)


class _Printer:
    def __init__(self, as_json: bool, use_hex: bool) -> None:
        self.json = as_json
        self.hex = use_hex
        self._events: list[WatchEvent] = []

    def _line(self, data: bytes) -> None:
        sys.stdout.buffer.write((data.hex().encode() if self.hex else data) + b"\n")

    def event(self, e: WatchEvent) -> None:
        if self.json:
            self._events.append(e)
            return
        self._line(e.type.name.encode())
        if e.prev_kv is not None:
            self._line(e.prev_kv.key)
            self._line(e.prev_kv.value)
        self._line(e.kv.key)
        self._line(e.kv.value)

    def flush(self) -> None:
        if self.json and self._events:
            events = []
            for e in self._events:
                one: dict[str, Any] = {}
                if e.type is EventType.DELETE:
                    one["type"] = 1
                one["kv"] = _kv_json(e.kv)
                if e.prev_kv is not None:
                    one["prev_kv"] = _kv_json(e.prev_kv)
                events.append(one)
            doc = {"Header": {"revision": self._events[-1].revision}, "Events": events,
                   "CompactRevision": 0, "Canceled": False, "Created": False}
            click.echo(json.dumps(doc, separators=(",", ":")))
            self._events = []
        sys.stdout.flush()


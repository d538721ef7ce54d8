"""`dengine get | put | del | delete | txn | compaction`: etcdctl's commands and output,
thin over `dengine.Client`.

Output is etcdctl 3.4's: `-w simple` (the default: keys and values on their own lines,
`OK` for a put, the deleted count, `SUCCESS`/`FAILURE` then each response of a txn) or
`-w json` (etcd's JSON: the response header, keys and values in base64, zero fields left
out; `--json` is the same). Keys and values are UTF-8 strings, or hexadecimal with
`--hex`. Errors print `error [CODE]: message` (etcd's message for etcd's errors; etcd's
auth errors as etcdctl's `Error: message`) and exit with 1; bad usage exits with 2.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

import click

from dengine.api import DeleteResult, KeyValue, PutResult, RangeResult, ResponseHeader, TxnResult
from dengine.cli.client_cmds import client_options, decode_arg, hex_option, run
from dengine.cli.lease_cmds import lease_id_arg
from dengine.cli.txn_grammar import order_name, parse_txn, sort_target_name
from dengine.kv import EVENTUAL, LEASE, LINEARIZABLE

_CONSISTENCY = {"l": LINEARIZABLE, "s": EVENTUAL, LINEARIZABLE: LINEARIZABLE, LEASE: LEASE,
                EVENTUAL: EVENTUAL}


def write_out_option(fn: Any) -> Any:
    return click.option("-w", "--write-out", type=click.Choice(["simple", "json"]),
                        default="simple", show_default=True,
                        help="Output format (etcdctl's).")(fn)


def range_options(fn: Any) -> Any:
    fn = click.option("--from-key", is_flag=True,
                      help="Every key >= KEY (byte order).")(fn)
    fn = click.option("--prefix", is_flag=True, help="Every key starting with KEY.")(fn)
    return fn


class Output:
    """Prints results as etcdctl does (simple or json)."""

    def __init__(self, write_out: str, as_json: bool, use_hex: bool,
                 value_only: bool = False) -> None:
        self.json = as_json or write_out == "json"
        self.hex = use_hex
        self.value_only = value_only

    def _line(self, data: bytes) -> None:
        sys.stdout.buffer.write((data.hex().encode() if self.hex else data) + b"\n")

    def kv(self, kv: KeyValue) -> None:
        if not self.value_only:
            self._line(kv.key)
        self._line(kv.value)

    def range(self, r: RangeResult, count_only: bool = False) -> None:
        if count_only:
            click.echo(str(r.count))
        for kv in r.kvs:
            self.kv(kv)

    def put(self, r: PutResult) -> None:
        click.echo("OK")
        if r.prev_kv is not None:
            self.kv(r.prev_kv)

    def delete(self, r: DeleteResult) -> None:
        click.echo(str(r.deleted))
        for kv in r.prev_kvs:
            self.kv(kv)

    def txn(self, r: TxnResult) -> None:
        click.echo("SUCCESS" if r.succeeded else "FAILURE")
        for resp in r.responses:
            click.echo("")
            self.any(resp)

    def any(self, r: Any) -> None:
        if self.json:
            click.echo(json.dumps(to_json(r), separators=(",", ":")))
        elif isinstance(r, RangeResult):
            self.range(r)
        elif isinstance(r, PutResult):
            self.put(r)
        elif isinstance(r, DeleteResult):
            self.delete(r)
        else:
            self.txn(r)
        sys.stdout.flush()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _header_json(h: ResponseHeader, revision: int) -> dict[str, int]:
    out = {"cluster_id": h.cluster_id, "member_id": h.member_id,
           "revision": h.revision or revision, "raft_term": h.raft_term}
    return {k: v for k, v in out.items() if v}


def _kv_json(kv: KeyValue) -> dict[str, Any]:
    out: dict[str, Any] = {"key": _b64(kv.key), "create_revision": kv.create_revision,
                           "mod_revision": kv.mod_revision, "version": kv.version,
                           "value": _b64(kv.value), "lease": kv.lease}
    return {k: v for k, v in out.items() if v}


def to_json(r: Any) -> dict[str, Any]:
    """etcdctl's JSON of a response (Go's encoding: zero fields left out)."""
    out: dict[str, Any] = {"header": _header_json(r.header, r.revision)}
    if isinstance(r, RangeResult):
        out.update(kvs=[_kv_json(kv) for kv in r.kvs], more=r.more, count=r.count)
    elif isinstance(r, PutResult):
        out.update(prev_kv=_kv_json(r.prev_kv) if r.prev_kv else None)
    elif isinstance(r, DeleteResult):
        out.update(deleted=r.deleted, prev_kvs=[_kv_json(kv) for kv in r.prev_kvs])
    elif isinstance(r, TxnResult):
        names = {RangeResult: "ResponseRange", PutResult: "ResponsePut",
                 DeleteResult: "ResponseDeleteRange", TxnResult: "ResponseTxn"}
        out.update(succeeded=r.succeeded, responses=[
            {"Response": {names[type(x)]: to_json(x)}} for x in r.responses])
    return {k: v for k, v in out.items() if v or k == "header"}


@click.command()
@click.argument("key")
@click.argument("range_end", required=False)
@range_options
@click.option("--limit", type=click.IntRange(min=0), default=0, help="At most N keys.")
@click.option("--rev", type=click.IntRange(min=0), default=0,
              help="Read at this revision (0: the current one).")
@click.option("--sort-by", metavar="TARGET",
              help="CREATE, KEY, MODIFY, VALUE or VERSION.")
@click.option("--order", metavar="ORDER", help="ASCEND or DESCEND (ASCEND by default).")
@click.option("--keys-only", is_flag=True, help="Only the keys.")
@click.option("--count-only", is_flag=True, help="Only the number of keys.")
@click.option("--print-value-only", is_flag=True, help="Only the values (simple output).")
@click.option("--consistency", type=click.Choice(list(_CONSISTENCY)), default=LINEARIZABLE,
              show_default=True,
              help="Read level: linearizable (l), lease, eventual (s: serializable).")
@write_out_option
@hex_option
@client_options
def get(key: str, range_end: str | None, prefix: bool, from_key: bool, limit: int, rev: int,
        sort_by: str | None, order: str | None, keys_only: bool, count_only: bool,
        print_value_only: bool, consistency: str, write_out: str, use_hex: bool,
        endpoints: str, timeout: float, transport: str, as_json: bool) -> None:
    """Print KEY and its value, or the keys of [KEY, RANGE_END) (etcdctl's get)."""
    k = decode_arg(key, use_hex, "key")
    end = None if range_end is None else decode_arg(range_end, use_hex, "range_end")
    _exclusive(end, prefix, from_key)
    target, sort_order = sort_target_name(sort_by), order_name(order, sort_by)
    result = run(endpoints, timeout, transport, lambda c: c.range(
        k, end, prefix=prefix, from_key=from_key, limit=limit, revision=rev,
        sort_target=target, sort_order=sort_order, keys_only=keys_only,
        count_only=count_only, consistency=_CONSISTENCY[consistency]))
    out = Output(write_out, as_json, use_hex, print_value_only)
    if out.json:
        out.any(result)
    else:
        out.range(result, count_only)


@click.command()
@click.argument("key")
@click.argument("value", required=False)
@click.option("--prev-kv", is_flag=True, help="Print the key as it was before.")
@click.option("--lease", default="0", metavar="ID", help="Lease ID (hexadecimal).")
@click.option("--value-file", type=click.File("rb"), metavar="FILE",
              help="Read the value from FILE ('-': stdin), byte for byte.")
@write_out_option
@hex_option
@client_options
def put(key: str, value: str | None, prev_kv: bool, lease: str, value_file: Any,
        write_out: str, use_hex: bool, endpoints: str, timeout: float, transport: str,
        as_json: bool) -> None:
    """Set KEY to VALUE.

    As etcdctl's put: without VALUE, the value is read from stdin (`cat file | dengine
    put KEY`); a VALUE starting with '-' is taken for a flag unless it follows '--'
    (`dengine put KEY -- -1`), and a lone '-' is stored as is. --value-file FILE reads it
    from a file (no size limit of the command line)."""
    k = decode_arg(key, use_hex, "key")
    if value is not None and value_file is not None:
        raise click.UsageError("give VALUE or --value-file, not both")
    if value is None:
        source = value_file or sys.stdin.buffer
        if value_file is None and sys.stdin.isatty():
            click.echo("reading the value from stdin (end it with Ctrl-D) ...", err=True)
        raw = source.read()
        v = decode_arg(raw.decode("utf-8", "surrogateescape").strip(), True, "value") \
            if use_hex else raw
    else:
        v = decode_arg(value, use_hex, "value")
        if value == "-":
            click.echo("note: stored the value '-' (as etcdctl does); to read the value from "
                       "stdin leave VALUE out, from a file use --value-file FILE", err=True)
    lease_id = lease_id_arg(lease)
    result = run(endpoints, timeout, transport,
                 lambda c: c.put(k, v, prev_kv=prev_kv, lease=lease_id))
    Output(write_out, as_json, use_hex).any(result)


def _delete_command(name: str, hidden: bool = False) -> click.Command:
    @click.command(name, hidden=hidden)
    @click.argument("key")
    @click.argument("range_end", required=False)
    @range_options
    @click.option("--prev-kv", is_flag=True, help="Print the deleted keys and values.")
    @write_out_option
    @hex_option
    @client_options
    def delete(key: str, range_end: str | None, prefix: bool, from_key: bool, prev_kv: bool,
               write_out: str, use_hex: bool, endpoints: str, timeout: float,
               transport: str, as_json: bool) -> None:
        """Delete KEY, or the keys of [KEY, RANGE_END); prints how many were deleted."""
        k = decode_arg(key, use_hex, "key")
        end = None if range_end is None else decode_arg(range_end, use_hex, "range_end")
        _exclusive(end, prefix, from_key)
        result = run(endpoints, timeout, transport, lambda c: c.delete_range(
            k, end, prefix=prefix, from_key=from_key, prev_kv=prev_kv))
        Output(write_out, as_json, use_hex).any(result)

    return delete


delete_cmd = _delete_command("del")
delete = _delete_command("delete")


@click.command()
@click.option("-i", "--interactive", is_flag=True, help="Prompt for each section.")
@write_out_option
@hex_option
@client_options
def txn(interactive: bool, write_out: str, use_hex: bool, endpoints: str, timeout: float,
        transport: str, as_json: bool) -> None:
    """Run a transaction read from stdin, in etcdctl's grammar:

    \b
    compares (mod("k") > "0", value("k") = "v", version, create, lease), a blank line,
    success ops (put k v, get k, del k, with their flags), a blank line,
    failure ops, a blank line.
    """
    prompt = (lambda title: click.echo(title)) if interactive else None
    parsed = parse_txn(iter(sys.stdin.readline, ""), prompt)
    result = run(endpoints, timeout, transport,
                 lambda c: c.txn(parsed.compare, parsed.success, parsed.failure))
    Output(write_out, as_json, use_hex).any(result)


@click.command()
@click.argument("revision", type=click.IntRange(min=0))
@click.option("--physical", is_flag=True, help="(accepted for etcdctl's sake; no effect)")
@client_options
def compaction(revision: int, physical: bool, endpoints: str, timeout: float, transport: str,
               as_json: bool) -> None:
    """Drop the history below REVISION: reads at older revisions then fail."""
    run(endpoints, timeout, transport, lambda c: c.compact(revision, physical=physical))
    if as_json:
        click.echo(json.dumps({"compacted": revision}))
    else:
        click.echo(f"compacted revision {revision}")


def _exclusive(range_end: bytes | None, prefix: bool, from_key: bool) -> None:
    if prefix and from_key:
        raise click.UsageError("--prefix and --from-key cannot both be set")
    if range_end is not None and (prefix or from_key):
        raise click.UsageError(
            f"RANGE_END cannot be given with {'--prefix' if prefix else '--from-key'}")

"""`dengine bench ...`: benchmark commands. Each subcommand prints a table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from dengine.cli.client_cmds import SECONDS
from dengine.errors import InvalidRequest
from dengine.kv import LEVELS, LINEARIZABLE


@click.group()
def bench() -> None:
    """Measure throughput and latency: storage, the engine (put, get, mixed), failover."""


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidRequest(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise InvalidRequest(f"{what} must be positive integers, got {text!r}")
    return values


@bench.command("storage")
@click.option("--sizes", default="10000,1000000", show_default=True,
              help="Store sizes (keys) for the apply benchmark, comma-separated.")
@click.option("--chunks", default="1,10,100,1000", show_default=True,
              help="Chunk (and log batch) sizes, comma-separated.")
@click.option("--seconds", default=1.0, show_default=True, type=float,
              help="Minimum measured time per case.")
@click.option("--naive-seconds", default=3.0, show_default=True, type=float,
              help="Time budget per case of the naive (rewrite-everything) baseline.")
@click.option("--dir", "directory", default=None, type=click.Path(file_okay=False),
              help="Scratch directory (default: the system temp dir).")
@click.option("--cases", default="fdatasync,log,apply,checkpoint,memory", show_default=True,
              help="Which benchmarks to run, comma-separated.")
@click.option("--checkpoint-chunk", default=1000, show_default=True,
              type=click.IntRange(min=1), help="Chunk size of the checkpoint case.")
@click.option("--checkpoints", default=2, show_default=True, type=click.IntRange(min=1),
              help="Checkpoints the checkpoint case waits for, per store size.")
def storage(sizes: str, chunks: str, seconds: float, naive_seconds: float,
            directory: str | None, cases: str, checkpoint_chunk: int,
            checkpoints: int) -> None:
    """apply_chunk and Raft log append throughput (one fsync per chunk/batch).

    Compares FileStateMachine with a naive baseline that rewrites the whole map (and
    fsyncs) per chunk. 16-byte keys, 256-byte values.
    """
    from rich.console import Console
    from rich.table import Table

    from dengine.bench.storage import CASES, KEY_BYTES, VALUE_BYTES, MemoryResult, run_storage_bench

    selected = [c.strip() for c in cases.split(",") if c.strip()]
    unknown = sorted(set(selected) - set(CASES))
    if unknown or not selected:
        raise InvalidRequest(
            f"--cases takes some of {', '.join(CASES)}, got {cases!r}"
        )
    memory: list[MemoryResult] = []
    results = run_storage_bench(
        sizes=_int_list(sizes, "--sizes"), chunks=_int_list(chunks, "--chunks"),
        min_seconds=seconds, naive_max_seconds=naive_seconds, directory=directory,
        cases=selected, checkpoint_chunk=checkpoint_chunk, checkpoint_windows=checkpoints,
        memory=memory,
    )
    table = Table(title="dengine storage benchmark (one fsync per chunk)",
                  caption="user us, sys us: CPU per entry in Python and in the kernel. "
                          "fdatasync rows: a bare pwrite + fdatasync of one chunk's WAL bytes "
                          "(an entry is one sync), the disk's share of a chunk.")
    for column in ("benchmark", "store keys", "chunk", "entries", "entries/s", "us/entry",
                   "user us", "sys us", "p50 ms/chunk", "p99 ms/chunk"):
        table.add_column(column, justify="left" if column == "benchmark" else "right")
    for r in results:
        table.add_row(
            r.name, f"{r.store_keys:,}" if r.store_keys else "-", str(r.chunk), f"{r.entries:,}",
            f"{r.entries_per_s:,.0f}", f"{r.us_per_entry:.2f}",
            f"{r.cpu_us_per_entry:.2f}", f"{r.sys_us_per_entry:.2f}",
            f"{r.percentile(0.5) * 1e3:.2f}", f"{r.percentile(0.99) * 1e3:.2f}",
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=132)  # a pipe or file: do not squeeze the table to 80 columns
    console.print(table)
    for m in memory:
        console.print(f"memory of {m.keys:,} keys ({KEY_BYTES} + {VALUE_BYTES} bytes), state "
                      f"machine reopened: {m.rss_bytes / 1e6:,.0f} MB = "
                      f"{m.rss_bytes / max(m.raw_bytes, 1):.2f}x the raw bytes")
    apply = {(r.store_keys, r.chunk): r for r in results if r.name == "apply_chunk"}
    size_list = sorted({k for k, _ in apply})
    if len(size_list) >= 2:
        small, large = size_list[0], size_list[-1]
        for chunk in sorted({c for _, c in apply}):
            ratio = apply[(large, chunk)].us_per_entry / apply[(small, chunk)].us_per_entry
            console.print(f"apply cost per entry, {large:,} vs {small:,} keys, chunk {chunk}: "
                          f"{ratio:.2f}x")


def _load_options(workload: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options shared by `bench put|get|mixed` (reads add --consistency)."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        options = [
            click.option("--embedded", is_flag=True,
                         help="Start a local cluster and drive its leader's embedded Engine "
                              "in this process."),
            click.option("--local", is_flag=True,
                         help="Start a local cluster of `dengine serve` processes and load "
                              "it through dengine.Client (what a remote client pays)."),
            click.option("--nodes", type=click.IntRange(1, 5), default=1, show_default=True,
                         help="Nodes of the --embedded cluster (the others run as "
                              "`dengine serve` subprocesses) or of the --local one."),
            click.option("--tls", type=click.Choice(["off", "on", "compare"]), default="off",
                         show_default=True,
                         help="With --embedded or --local: TLS everywhere (certificates "
                              "made for the run; embedded: the peer links), or compare: "
                              "plaintext, then TLS, in this run."),
            click.option("--endpoints", default=None, metavar="HOST:PORT,...",
                         help="Load a running cluster through dengine.Client instead."),
            click.option("--transport", type=click.Choice(["auto", "native", "grpc"]),
                         default=None, help="Client protocol with --endpoints or --local: "
                                            "the native "
                                            "one where offered (auto), or one of the two "
                                            "[default: auto]."),
            click.option("--total", type=click.IntRange(min=1), default=None,
                         help="Requests to make [default: 10000 unless --duration is given]."),
            click.option("--duration", type=click.FloatRange(min=0, min_open=True),
                         default=None, help="Seconds to run (with --total: whichever "
                                            "comes first)."),
            click.option("--concurrency", type=click.IntRange(min=1), default=64,
                         show_default=True, help="Requests in flight."),
            click.option("--key-size", type=click.IntRange(min=1), default=8,
                         show_default=True, help="Key size in bytes."),
            click.option("--value-size", type=click.IntRange(min=0), default=256,
                         show_default=True, help="Value size in bytes."),
            click.option("--key-space", type=click.IntRange(min=1), default=10_000,
                         show_default=True, help="Distinct keys (fewer = hotter keys)."),
            click.option("--sequential-keys", is_flag=True,
                         help="Walk the key space in order instead of picking keys at random."),
            click.option("--warmup", type=click.FloatRange(min=0), default=0.0,
                         show_default=True, help="Seconds of unmeasured load first."),
            click.option("--timeout", type=SECONDS,
                         default=5.0, show_default=True, help="Deadline of each request (s)."),
            click.option("--seed", type=int, default=1, show_default=True,
                         help="Seed of the key choice."),
            click.option("--uvloop/--no-uvloop", "use_uvloop", default=True,
                         show_default=True, help="Run this process on uvloop."),
            click.option("--json", "as_json", is_flag=True,
                         help="Print the result as JSON (no table)."),
            click.option("--progress/--no-progress", "show_progress", default=True,
                         show_default=True, help="Show a progress bar on stderr."),
        ]
        if workload != "put":
            options.append(click.option(
                "--consistency", type=click.Choice(LEVELS), default=LINEARIZABLE,
                show_default=True, help="Read consistency."))
        if workload == "mixed":
            options.append(click.option(
                "--read-ratio", type=click.FloatRange(0.0, 1.0), default=0.5,
                show_default=True, help="Share of reads among the requests."))
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _run_workload(workload: str, embedded: bool, local: bool, nodes: int,
                  endpoints: str | None, transport: str | None, tls: str,
                  total: int | None, duration: float | None, warmup: float, timeout: float,
                  use_uvloop: bool, as_json: bool, show_progress: bool,
                  **spec_fields: Any) -> None:
    import json

    from dengine.bench.load import LoadSpec
    from dengine.bench.report import RichProgress, console, results_table
    from dengine.bench.runner import BenchRun, bench_embedded, bench_local, bench_remote, run_async

    if embedded + local + (endpoints is not None) != 1:
        raise InvalidRequest("give exactly one target: --embedded [--nodes N], --local "
                             "[--nodes N] or --endpoints HOST:PORT,...")
    if embedded and transport is not None:
        raise InvalidRequest("--transport applies to --endpoints and --local (the embedded "
                             "engine is called in-process)")
    if endpoints is not None and tls != "off":
        raise InvalidRequest("--tls applies to the clusters of --embedded and --local")
    if total is None and duration is None:
        total = 10_000
    spec = LoadSpec(workload=workload, total=total, duration=duration, **spec_fields).validate()
    modes = {"off": [False], "on": [True], "compare": [False, True]}[tls]
    runs: list[BenchRun] = []
    with RichProgress(enabled=show_progress and not as_json) as progress:
        for with_tls in modes:
            if endpoints is not None:
                runs.append(run_async(bench_remote(
                    spec, endpoints, timeout=timeout, warmup=warmup, progress=progress,
                    transport=transport or "auto"), use_uvloop))
            elif local:
                runs.append(run_async(bench_local(
                    spec, nodes, timeout=timeout, warmup=warmup, progress=progress,
                    transport=transport or "auto", tls=with_tls), use_uvloop))
            else:
                runs.append(run_async(bench_embedded(
                    spec, nodes, warmup=warmup, progress=progress, tls=with_tls), use_uvloop))
    rows = [run.to_dict() for run in runs]
    cost = _tls_cost(rows) if len(rows) == 2 else None
    if as_json:
        click.echo(json.dumps(rows[0] if len(rows) == 1 else {"runs": rows, "tls_cost": cost},
                              indent=2))
        return
    out = console()
    out.print(results_table(rows, f"dengine bench {workload} ({runs[0].loop})"))
    out.print(spec.describe())
    if cost is not None:
        out.print(f"TLS: {cost['throughput_change_pct']:+.1f}% throughput, "
                  f"p50 latency {cost['p50_change_ms']:+.2f} ms (same run, fresh clusters)")
    for run in runs:
        for note in run.notes:
            out.print(f"[yellow]note:[/] {note}")


def _tls_cost(rows: list[dict[str, Any]]) -> dict[str, float]:
    """What TLS changed between a plaintext row and a TLS row."""
    plain, tls = rows
    base = max(float(plain["throughput_ops_s"]), 1e-9)
    return {
        "throughput_change_pct": round(
            100.0 * (float(tls["throughput_ops_s"]) - base) / base, 1),
        "p50_change_ms": round(float(tls["latency_ms"]["p50"])
                               - float(plain["latency_ms"]["p50"]), 3),
    }


@bench.command("put")
@_load_options("put")
def bench_put(**options: Any) -> None:
    """Writes: each request puts one key (fsynced on a quorum before it returns)."""
    _run_workload("put", **options)


@bench.command("get")
@_load_options("get")
def bench_get(**options: Any) -> None:
    """Reads of preloaded keys at the chosen consistency level."""
    _run_workload("get", **options)


@bench.command("mixed")
@_load_options("mixed")
def bench_mixed(**options: Any) -> None:
    """Reads and writes of the same keys, --read-ratio of them reads."""
    _run_workload("mixed", **options)


@bench.command("failover")
@click.option("--trials", type=click.IntRange(min=1), default=20, show_default=True,
              help="Leader kills.")
@click.option("--election-timeout-ms", type=click.IntRange(min=20), default=150,
              show_default=True, help="Minimum election timeout (each node picks in "
                                      "[min, 2*min)).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--progress/--no-progress", "show_progress", default=True, show_default=True,
              help="Show a progress bar on stderr.")
def bench_failover(trials: int, election_timeout_ms: int, as_json: bool,
                   show_progress: bool) -> None:
    """Leader kill -9 to the first successful client write, on a 3-node subprocess cluster."""
    import json

    from dengine.bench.failover import run_failover
    from dengine.bench.report import RichProgress, console
    from dengine.bench.runner import run_async

    settings = {"election_timeout_ms": election_timeout_ms,
                "heartbeat_interval_ms": max(1, election_timeout_ms // 3)}
    with RichProgress(enabled=show_progress and not as_json) as progress:
        result = run_async(run_failover(trials, settings=settings, progress=progress))
    summary = result.to_dict()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    low, high = summary["election_timeout_ms"]
    console().print(
        f"leader kill -9 -> first successful write, {summary['trials']} trials, "
        f"election timeout {low}-{high} ms: median {summary['median_ms']:.0f} ms, "
        f"max {summary['max_ms']:.0f} ms (writes that failed before the first success: "
        f"{summary['failed_writes']} {summary['error_kinds'] or ''})\n"
        f"each trial (ms): {', '.join(f'{t:.0f}' for t in summary['times_ms'])}"
    )


@bench.command("restart")
@click.option("--keys", type=click.IntRange(min=1), default=1_000_000, show_default=True,
              help="Distinct keys written before the restart.")
@click.option("--key-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--value-size", type=click.IntRange(min=0), default=256, show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Keep the loaded node here and reuse it: a later run with the same keys "
                   "and sizes skips the load and restarts a copy of it.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--progress/--no-progress", "show_progress", default=True, show_default=True,
              help="Show a progress bar on stderr.")
def bench_restart(keys: int, key_size: int, value_size: int, data_dir: str | None,
                  as_json: bool, show_progress: bool) -> None:
    """Restart of a one-node engine holding --keys keys: time to serving, resident memory."""
    import json

    from dengine.bench.report import RichProgress, console
    from dengine.bench.restart import run_restart
    from dengine.bench.runner import run_async

    with RichProgress(enabled=show_progress and not as_json) as progress:
        result = run_async(run_restart(keys, key_size=key_size, value_size=value_size,
                                       progress=progress, data_dir=data_dir))
    summary = result.to_dict()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    console().print(
        f"{keys:,} keys of {key_size}+{value_size} bytes (raw {summary['raw_bytes'] / 1e6:,.1f}"
        f" MB), written in {summary['load_s']:.1f}s: restart to first read "
        f"{summary['restart_to_serving_s']:.2f}s, resident memory "
        f"{summary['rss_bytes'] / 1e6:,.1f} MB ({summary['rss_over_raw']:.2f}x raw)"
    )

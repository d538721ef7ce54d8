"""Run one workload against an embedded cluster it starts, or a remote cluster.

Used by `dengine bench put|get|mixed` and by bench/compare.py. Reads first preload the
whole key space; an optional warm-up runs the same workload unmeasured.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from dengine.bench.cluster import LocalCluster
from dengine.bench.load import LoadResult, LoadSpec, Target, preload, run_load

T = TypeVar("T")


class Progress(Protocol):
    """What a runner reports while it works (the CLI shows it as a progress bar)."""

    def phase(self, name: str, total: float | None, unit: str = "ops") -> None: ...
    def update(self, done: int, elapsed: float) -> None: ...


class NoProgress:
    def phase(self, name: str, total: float | None, unit: str = "ops") -> None:
        pass

    def update(self, done: int, elapsed: float) -> None:
        pass


@dataclass
class BenchRun:
    """One measured workload and where it ran."""

    target: str
    nodes: int | None
    loop: str
    result: LoadResult
    notes: list[str] = field(default_factory=list)  # what makes the numbers suspect

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "nodes": self.nodes, "loop": self.loop,
                **self.result.to_dict(), "notes": self.notes}


def loop_name() -> str:
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


async def drive(
    target: Target, spec: LoadSpec, *, warmup: float = 0.0, progress: Progress | None = None
) -> LoadResult:
    """Preload (reads only), warm up, then measure `spec` against `target`."""
    progress = progress or NoProgress()
    if spec.workload != "put":
        progress.phase(f"preloading {spec.key_space:,} keys", spec.key_space)
        await preload(target, spec, progress.update)
    if warmup > 0:
        progress.phase(f"warm-up {warmup:g}s", warmup, unit="s")
        await run_load(target, dataclasses.replace(spec, total=None, duration=warmup),
                       progress.update)
    if spec.total is not None:
        progress.phase(spec.workload, spec.total)
    else:
        progress.phase(spec.workload, spec.duration, unit="s")
    return await run_load(target, spec, progress.update)


async def bench_embedded(
    spec: LoadSpec, nodes: int, *, warmup: float = 0.0, settings: dict[str, Any] | None = None,
    progress: Progress | None = None, tls: bool = False,
) -> BenchRun:
    """Start a `nodes`-node cluster whose leader runs in this process; load its Engine.
    `tls`: the peer links run mutual TLS (what replication pays for it)."""
    spec.validate()
    progress = progress or NoProgress()
    progress.phase(f"starting a {nodes}-node cluster", None)
    async with LocalCluster(nodes, embedded=True, settings=settings, tls=tls) as cluster:
        engine = cluster.engine
        assert engine is not None
        term = engine.status().term
        result = await drive(engine, spec, warmup=warmup, progress=progress)
        notes = []
        if engine.status().term != term or not engine.is_leader:
            notes.append(
                f"leadership changed during the run (term {term} -> {engine.status().term}, "
                f"in-process node {'still' if engine.is_leader else 'no longer'} leader): "
                "its event loop stalled past the election timeout"
            )
    return BenchRun(f"embedded, {nodes} node{'s' if nodes > 1 else ''}"
                    f"{', peer TLS' if tls else ''}", nodes, loop_name(), result, notes)


async def bench_local(
    spec: LoadSpec, nodes: int, *, warmup: float = 0.0, timeout: float = 5.0,
    progress: Progress | None = None, transport: str = "auto", tls: bool = False,
) -> BenchRun:
    """Start `nodes` `dengine serve` processes and load them through one `dengine.Client`
    (what a remote client pays); `tls`: TLS everywhere (client ports with client
    certificates, mutual TLS between peers)."""
    spec.validate()
    progress = progress or NoProgress()
    progress.phase(f"starting a {nodes}-node cluster", None)
    async with LocalCluster(nodes, tls=tls) as cluster, cluster.client(
            timeout=timeout, transport=transport) as client:
        progress.phase("finding the leader", None)
        await client.leader()
        result = await drive(client, spec, warmup=warmup, progress=progress)
    return BenchRun(f"local, {nodes} node{'s' if nodes > 1 else ''} ({transport}"
                    f"{', TLS' if tls else ''})", nodes, loop_name(), result)


async def bench_remote(
    spec: LoadSpec, endpoints: Sequence[str] | str, *, timeout: float = 5.0,
    warmup: float = 0.0, progress: Progress | None = None, transport: str = "auto",
) -> BenchRun:
    """Load a running cluster through one `dengine.Client` (it batches concurrent calls);
    `transport` is the Client's ("auto", "native" or "grpc")."""
    from dengine.client import Client, parse_endpoints

    spec.validate()
    addresses = parse_endpoints(endpoints)
    async with Client(addresses, timeout=timeout, transport=transport) as client:
        progress = progress or NoProgress()
        progress.phase("finding the leader", None)
        await client.leader()
        result = await drive(client, spec, warmup=warmup, progress=progress)
    return BenchRun(f"remote {','.join(addresses)} ({transport})", None, loop_name(), result)


def run_async(coro: Coroutine[Any, Any, T], use_uvloop: bool = True) -> T:
    """Run `coro` on uvloop when asked and installed, else on the default asyncio loop.

    SIGTERM, like Ctrl-C, cancels it (so that clusters it started are stopped and their
    files removed) and then raises KeyboardInterrupt.
    """
    factory = None
    if use_uvloop:
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            factory = None
    terminated = False

    async def main() -> T:
        task = asyncio.current_task()
        assert task is not None

        def terminate() -> None:
            nonlocal terminated
            terminated = True
            task.cancel()

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, terminate)
        try:
            return await coro
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    with asyncio.Runner(loop_factory=factory) as runner:
        try:
            return runner.run(main())
        except asyncio.CancelledError:
            if terminated:
                raise KeyboardInterrupt from None
            raise

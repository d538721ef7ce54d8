"""`python -m dengine.sim --nodes 3 --seeds 1000:2000 [--steps N] [--faults ...] [--workload W]`.

Runs every seed, prints each failing seed with the command that replays it, then one
summary line. Exits 0 only if every seed held every invariant and stayed linearizable.
`--whole-node` runs real `Node`s instead of bare cores (`dengine.sim.nodesim`);
`--soak` keeps going from the first seed until `--hours` have passed or a seed fails.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import logging
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import click

from dengine.kv.mvcc import MvccStore
from dengine.sim.config import FAULT_KINDS, CoreFactory, SimConfig, SimResult
from dengine.sim.nodesim import NODE_FAULT_KINDS, NodeSimConfig, NodeSimResult
from dengine.sim.nodesim import run as run_nodes
from dengine.sim.simulator import Simulator
from dengine.sim.workloads import WORKLOADS


def _parse_seeds(spec: str) -> range:
    lo, sep, hi = spec.partition(":")
    try:
        start = int(lo)
        stop = int(hi) if sep else start + 1
    except ValueError:
        raise click.BadParameter(f"expected START:STOP or SEED, got {spec!r}") from None
    if stop <= start or start < 0:
        raise click.BadParameter(f"empty seed range {spec!r} (STOP is exclusive)")
    return range(start, stop)


def _parse_faults(spec: str, known: tuple[str, ...] = FAULT_KINDS) -> frozenset[str]:
    if spec == "all":
        return frozenset(known)
    if spec == "none":
        return frozenset()
    kinds = frozenset(k.strip() for k in spec.split(",") if k.strip())
    unknown = kinds - set(known)
    if unknown:
        raise click.BadParameter(
            f"unknown fault kinds {sorted(unknown)}; choose from {', '.join(known)}, "
            "or all / none"
        )
    return kinds


def load_core(spec: str) -> CoreFactory:
    """Import `module:Class` (a RaftCore subclass or factory)."""
    module, sep, name = spec.partition(":")
    if not sep:
        raise click.BadParameter(f"expected MODULE:CLASS, got {spec!r}")
    try:
        factory: CoreFactory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise click.BadParameter(f"cannot load core {spec!r}: {e}") from None
    if not callable(factory):
        raise click.BadParameter(f"{spec!r} is not callable")
    return factory


def load_store(spec: str) -> type[MvccStore]:
    """Import `module:Class` (an MvccStore subclass)."""
    module, sep, name = spec.partition(":")
    if not sep:
        raise click.BadParameter(f"expected MODULE:CLASS, got {spec!r}")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise click.BadParameter(f"cannot load store {spec!r}: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, MvccStore)):
        raise click.BadParameter(f"{spec!r} is not an MvccStore subclass")
    return cls


def _run(config: SimConfig) -> SimResult:
    factory = load_core(config.core) if config.core else None
    store = load_store(config.store) if config.store else None
    return Simulator(config, factory, store).run()


def _run_nodes(config: NodeSimConfig) -> NodeSimResult:
    logging.getLogger("dengine").setLevel(logging.CRITICAL + 1)  # crashes are the point
    logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)
    return run_nodes(config)


def _whole_node(base: NodeSimConfig, seed_range: range, jobs: int, soak: bool,
                hours: float) -> None:
    """Run real nodes for each seed (or, with `soak`, from the first seed on for `hours`)."""
    try:
        base.node_class()
        base.core_factory()
        base.disk_class()
        base.lessor_class()
    except (ImportError, AttributeError, ValueError) as e:
        raise click.BadParameter(str(e)) from None
    seeds = itertools.count(seed_range.start) if soak else iter(seed_range)
    deadline = time.monotonic() + hours * 3600
    started = time.perf_counter()
    failures = runs = 0
    totals: dict[str, int] = {}
    last_report = started
    pool = ProcessPoolExecutor(jobs) if jobs > 1 else None
    try:
        while True:
            batch = [dataclasses.replace(base, seed=s)
                     for s in itertools.islice(seeds, max(1, jobs * 4))]
            if not batch or (soak and time.monotonic() > deadline):
                break
            results = pool.map(_run_nodes, batch) if pool else map(_run_nodes, batch)
            for result in results:
                runs += 1
                for k, v in result.stats.items():
                    totals[k] = totals.get(k, 0) + v
                if not result.ok:
                    failures += 1
                    click.echo(result.describe())
            now = time.perf_counter()
            if soak and (failures or now - last_report > 60):
                last_report = now
                click.echo(f"dengine.sim --soak: {runs} seeds from {seed_range.start}, "
                           f"{runs / (now - started):.2f} seeds/s, {failures} failing")
            if soak and failures:
                break
    finally:
        if pool is not None:
            pool.shutdown()
    elapsed = time.perf_counter() - started
    faults = ", ".join(f"{k} {v}" for k, v in sorted(totals.items())
                       if k.startswith(("fault_", "strike_", "power_cuts", "kills",
                                         "snapshot_cuts", "snapshot_bitrot")))
    click.echo(
        f"dengine.sim --whole-node: nodes={base.nodes} learners={base.learners} "
        f"seeds={seed_range.start}:{seed_range.start + runs} runs={runs} "
        f"seconds={base.seconds:g} violations={failures} elapsed={elapsed:.1f}s "
        f"({runs / elapsed if elapsed else 0:.2f} seeds/s)\n  faults: {faults}\n"
        f"  clients: writes acknowledged {totals.get('writes_ok', 0)}, unknown "
        f"{totals.get('writes_unknown', 0)}, reads {totals.get('reads_ok', 0)} (lease "
        f"{totals.get('lease_reads', 0)}), eventual {totals.get('eventual_reads', 0)}, cas "
        f"swapped {totals.get('cas_swapped', 0)} / not {totals.get('cas_failed', 0)}, "
        f"compactions done {totals.get('compactions_ok', 0)} / refused "
        f"{totals.get('compactions_refused', 0)}, reads at a past revision "
        f"{totals.get('past_reads_ok', 0)} (compacted {totals.get('past_reads_compacted', 0)})"
        f"\n  leases: granted {totals.get('leases_granted', 0)}, kept alive "
        f"{totals.get('lease_keepalives', 0)}, keys bound {totals.get('lease_puts', 0)}, "
        f"revoked {totals.get('lease_revokes', 0)}, walked away from "
        f"{totals.get('leases_abandoned', 0)}, expired (revoke committed) "
        f"{totals.get('lease_expiry_revokes', 0)}\n"
        f"  snapshots: taken {totals.get('snapshots_taken', 0)}, installed from a leader "
        f"{totals.get('snapshots_installed', 0)}, chunks sent "
        f"{totals.get('net_snapshot_chunks', 0)}"
        + (f"\n  membership: voters removed {totals.get('member_removals', 0)}, leaders "
           f"removed {totals.get('leader_removals', 0)}, learners added "
           f"{totals.get('learners_added', 0)}, promoted {totals.get('promotions', 0)}, "
           f"one-step swaps refused {totals.get('swaps_refused', 0)}"
           if base.membership else "")
    )
    sys.exit(1 if failures else 0)


@click.command()
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True)
@click.option("--seeds", default="0:100", show_default=True, help="START:STOP (exclusive) or SEED")
@click.option("--steps", type=click.IntRange(1), default=3000, show_default=True,
              help="steps under faults, before healing")
@click.option("--faults", default="all", show_default=True,
              help=f"comma list of {', '.join(FAULT_KINDS)}; or all / none")
@click.option("--lease-reads/--no-lease-reads", default=True, show_default=True)
@click.option("--max-entries-per-msg", type=click.IntRange(0), default=0,
              help="replication batch size (0: drawn from each seed)")
@click.option("--max-inflight", type=click.IntRange(0), default=0,
              help="appends in flight per follower (0: drawn from each seed)")
@click.option("--snapshot-every", type=click.IntRange(0), default=None,
              help="snapshot + compact the log every N applied entries (0: never; default "
              f"0, with --whole-node {NodeSimConfig.snapshot_entries})")
@click.option("--membership/--no-membership", default=False, show_default=True,
              help="add membership changes (remove / demote / re-add a voter) to the faults; "
              "--whole-node: remove a voter or the leader, wipe it, add it back as a learner, "
              "promote it")
@click.option("--workload", type=click.Choice(WORKLOADS), default="kv", show_default=True,
              help="kv: get/put/delete; cas: + compare-and-swap txns; bank: transfers as "
              "txns guarded by mod_revision (the total is checked on every read); lease: "
              "expiry by the leader's clock; lock: etcd's lock recipe on those leases")
@click.option("--accounts", type=click.IntRange(2, 100), default=5, show_default=True,
              help="accounts of the bank workload")
@click.option("--core", default="", help="MODULE:CLASS of a RaftCore variant to test")
@click.option("--store", default="", help="MODULE:CLASS of an MvccStore variant to test")
@click.option("--jobs", type=click.IntRange(1), default=1, show_default=True,
              help="worker processes")
@click.option("--whole-node", is_flag=True,
              help="run real Nodes (file log, file state machine, asyncio driver) on a "
              "simulated clock, disk and network; faults: " + ", ".join(NODE_FAULT_KINDS))
@click.option("--seconds", type=click.FloatRange(0.1), default=3.0, show_default=True,
              help="--whole-node: virtual seconds under faults per seed")
@click.option("--learners", type=click.IntRange(0, 4), default=0, show_default=True,
              help="--whole-node: learners added to the voters once a leader exists")
@click.option("--node", "node_class", default="",
              help="--whole-node: MODULE:CLASS of a Node variant (dengine.sim.nodesim.broken)")
@click.option("--disk", "disk_class", default="",
              help="--whole-node: MODULE:CLASS of a FencedDisk variant (nodesim.broken)")
@click.option("--lessor", "lessor_class", default="",
              help="--whole-node: MODULE:CLASS of a Lessor variant (nodesim.broken)")
@click.option("--batches", is_flag=True,
              help="--whole-node: a third of the clients' writes carry a second command "
              "(a put of the client's filler key): batch entries under every fault")
@click.option("--upgrade", is_flag=True,
              help="--whole-node: a rolling upgrade under load (implies --batches): every "
              "voter but node 1 starts on the older release and is restarted on this one")
@click.option("--soak", is_flag=True,
              help="--whole-node: run seeds from START on until --hours pass or one fails")
@click.option("--hours", type=click.FloatRange(0), default=1.0, show_default=True,
              help="--soak: how long")
def main(nodes: int, seeds: str, steps: int, faults: str, lease_reads: bool,
         max_entries_per_msg: int, max_inflight: int, snapshot_every: int | None, membership: bool,
         workload: str, accounts: int, core: str, store: str, jobs: int, whole_node: bool,
         seconds: float, learners: int, node_class: str, disk_class: str, lessor_class: str,
         batches: bool, upgrade: bool, soak: bool, hours: float) -> None:
    """Simulate a Raft cluster under faults for each seed and check every invariant."""
    seed_range = _parse_seeds(seeds)
    if whole_node or soak:
        _whole_node(NodeSimConfig(
            nodes=nodes, learners=learners, seconds=seconds,
            faults=_parse_faults(faults, NODE_FAULT_KINDS), node=node_class, core=core,
            disk=disk_class, lessor=lessor_class, membership=membership,
            batches=batches or upgrade, upgrade=upgrade,
            snapshot_entries=(NodeSimConfig.snapshot_entries if snapshot_every is None
                              else snapshot_every),
        ), seed_range, jobs, soak, hours)
        return
    base = SimConfig(nodes=nodes, steps=steps, faults=_parse_faults(faults),
                     lease_reads=lease_reads, max_entries_per_msg=max_entries_per_msg,
                     max_inflight=max_inflight, snapshot_every=snapshot_every or 0,
                     membership=membership, workload=workload, accounts=accounts,
                     core=core, store=store)
    if core:
        load_core(core)  # fail fast on a bad spec
    if store:
        load_store(store)
    configs = [dataclasses.replace(base, seed=s) for s in seed_range]
    started = time.perf_counter()
    failures = 0
    total_steps = 0
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            results = pool.map(_run, configs, chunksize=4)
            for result in results:
                total_steps += result.steps_run
                if not result.ok:
                    failures += 1
                    click.echo(result.describe())
    else:
        for config in configs:
            result = _run(config)
            total_steps += result.steps_run
            if not result.ok:
                failures += 1
                click.echo(result.describe())
    elapsed = time.perf_counter() - started
    click.echo(
        f"dengine.sim: nodes={nodes} workload={workload} "
        f"seeds={seed_range.start}:{seed_range.stop} "
        f"runs={len(configs)} steps={steps} total_steps={total_steps} violations={failures} "
        f"elapsed={elapsed:.1f}s"
    )
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

"""Watch fault run: prefix watchers on 3 real `dengine serve` nodes (behind the fault
proxies of fault_run.py) while clients put and delete under the prefix and the leader
(and followers) are killed, paused and partitioned.

Load: `writers` Clients, each doing puts (a fresh value every time) and single-key
delete_ranges on `keys` keys under the prefix, paced to `rate` ops/s in total; every
acknowledged write is recorded with its revision (a delete that deleted nothing made no
change). Watchers: one `Client.watch(prefix, start_revision=S)` per node (each client
lists the endpoints from a different node first, so the watches start on different
nodes), S the store revision + 1 before the load (the prefix is empty then).

Checks, per watcher, once the cluster is healed, the writers stopped and a final
linearizable range of the prefix read (revision R): the watcher reaches R; its events'
revisions never decrease and no (revision, key) comes twice; every acknowledged write is
an event at its revision with its value (a put) or as a delete; the state rebuilt from
the events (from the empty prefix) equals the final range, mod revisions included.

    python tests/e2e/watch_run.py --seed 3 --seconds 40
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fault_run import FaultRun, RunConfig

from dengine.api import EventType, WatchEvent
from dengine.client import Client
from dengine.errors import DengineError

PREFIX = b"/watched/"


@dataclass
class WatchConfig:
    seed: int = 1
    seconds: float = 30.0
    kinds: tuple[str, ...] = ("kill_leader", "pause_leader", "isolate_leader_blackhole",
                              "isolate_leader_drop", "isolate_follower_drop",
                              "pause_follower")
    writers: int = 4
    rate: float = 200.0
    keys: int = 20
    delete_share: float = 0.3
    write_timeout: float = 3.0
    catch_up_s: float = 30.0  # after the final read, for every watcher to reach it
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class Ack:
    revision: int
    key: bytes
    kind: str  # put | delete
    value: bytes


class WatchRun(FaultRun):
    def __init__(self, workdir: Path, cfg: WatchConfig) -> None:
        super().__init__(workdir, RunConfig(seed=cfg.seed, seconds=cfg.seconds,
                                            kinds=cfg.kinds, settings=cfg.settings))
        self.wcfg = cfg
        self.acks: list[Ack] = []
        self.outcomes: dict[str, int] = {}
        self.events: dict[int, list[WatchEvent]] = {}
        self.resumed: dict[int, int] = {}
        self.watch_errors: dict[int, str] = {}
        self.watch_revision: dict[int, int] = {}
        self.watches: dict[int, Any] = {}

    def count(self, what: str) -> None:
        self.outcomes[what] = self.outcomes.get(what, 0) + 1

    async def writer(self, wid: int) -> None:
        cfg = self.wcfg
        rng = random.Random(cfg.seed * 100 + wid)
        interval = cfg.writers / cfg.rate
        seq = 0
        async with Client(self.endpoints, timeout=cfg.write_timeout) as client:
            next_t = time.monotonic()
            while not self.stop_load.is_set():
                next_t = max(next_t + interval, time.monotonic())
                await asyncio.sleep(next_t - time.monotonic())
                key = PREFIX + b"k%d" % rng.randrange(cfg.keys)
                seq += 1
                try:
                    if rng.random() < cfg.delete_share:
                        deleted = await asyncio.wait_for(client.delete_range(key),
                                                         cfg.write_timeout + 2)
                        if deleted.deleted:
                            self.acks.append(Ack(deleted.revision, key, "delete", b""))
                        self.count("delete:ok")
                    else:
                        value = b"w%d-%d" % (wid, seq)
                        put = await asyncio.wait_for(client.put(key, value),
                                                     cfg.write_timeout + 2)
                        self.acks.append(Ack(put.revision, key, "put", value))
                        self.count("put:ok")
                except (DengineError, TimeoutError) as e:
                    self.count(f"error:{type(e).__name__}")

    async def watcher(self, n: int, start: int, done: asyncio.Event) -> None:
        endpoints = self.endpoints[n:] + self.endpoints[:n]
        events = self.events.setdefault(n, [])
        async with Client(endpoints) as client:
            watch = self.watches[n] = client.watch(PREFIX, prefix=True, start_revision=start)
            try:
                reader = asyncio.ensure_future(self._read(watch, events))
                await done.wait()
                await watch.close()
                await reader
            except Exception as e:  # a finding: the watch must not fail
                self.watch_errors[n] = f"{type(e).__name__}: {e}"
            self.watch_revision[n] = watch.revision
            self.resumed[n] = getattr(watch, "resumed", -1)

    @staticmethod
    async def _read(watch: Any, events: list[WatchEvent]) -> None:
        async for event in watch:
            events.append(event)

    async def run_watch(self) -> dict[str, Any]:
        cfg = self.wcfg
        print(f"watch fault run: seed {cfg.seed}, {cfg.seconds:g}s of faults, "
              f"{cfg.writers} writers at {cfg.rate:g} ops/s; work dir {self.workdir}",
              flush=True)
        done = asyncio.Event()
        try:
            await self.setup()
            async with Client(self.endpoints, timeout=10) as c:
                start = (await c.range(PREFIX, prefix=True)).revision + 1
            self.t0 = time.monotonic()
            watchers = [asyncio.create_task(self.watcher(n, start, done))
                        for n in range(len(self.endpoints))]
            await asyncio.sleep(0.5)
            load = [asyncio.create_task(self.writer(i)) for i in range(cfg.writers)]
            await asyncio.sleep(1.0)
            await self.schedule()
            self.log("healed")
            await asyncio.sleep(2.0)
            self.stop_load.set()
            await asyncio.gather(*load)
            async with Client(self.endpoints, timeout=10) as c:
                final = await c.range(PREFIX, prefix=True)
            deadline = time.monotonic() + cfg.catch_up_s
            while time.monotonic() < deadline and not all(
                    self._caught_up(n, final.revision) for n in self.events):
                await asyncio.sleep(0.1)
            done.set()
            await asyncio.gather(*watchers)
        finally:
            done.set()
            await self.teardown()
        return self.analyse(start, final)

    def _caught_up(self, n: int, revision: int) -> bool:
        watch = self.watches.get(n)
        return watch is not None and watch.revision >= revision

    def analyse(self, start: int, final: Any) -> dict[str, Any]:
        want = {(a.revision, a.key): a for a in self.acks}
        final_state = {kv.key: (kv.value, kv.mod_revision) for kv in final.kvs}
        report: dict[str, Any] = {
            "seed": self.wcfg.seed, "start_revision": start,
            "final_revision": final.revision, "final_keys": len(final_state),
            "acknowledged": len(self.acks), "outcomes": self.outcomes,
            "faults": [(f.kind, f.node, round(f.start, 2), round(f.end, 2))
                       for f in self.faults],
            "watchers": {},
        }
        for n, events in sorted(self.events.items()):
            revisions = [e.revision for e in events]
            pairs = [(e.revision, e.kv.key) for e in events]
            seen = {(e.revision, e.kv.key): e for e in events}
            missing, wrong = [], []
            for (rev, key), ack in want.items():
                e = seen.get((rev, key))
                if e is None:
                    missing.append((rev, key.decode()))
                elif (ack.kind == "put") != (e.type is EventType.PUT) or (
                        ack.kind == "put" and e.kv.value != ack.value):
                    wrong.append((rev, key.decode()))
            state: dict[bytes, tuple[bytes, int]] = {}
            for e in events:
                if e.revision > final.revision:
                    break
                if e.type is EventType.PUT:
                    state[e.kv.key] = (e.kv.value, e.kv.mod_revision)
                else:
                    state.pop(e.kv.key, None)
            report["watchers"][n] = {
                "events": len(events),
                "error": self.watch_errors.get(n, ""),
                "resumed": self.resumed.get(n, 0),
                "ordered": revisions == sorted(revisions),
                "duplicates": len(pairs) - len(set(pairs)),
                "missing_acknowledged": missing[:20], "missing_count": len(missing),
                "wrong_acknowledged": wrong[:20],
                "below_start": sum(r < start for r in revisions),
                "state_equals_final_range": state == final_state,
                "state_diff": sorted(
                    k.decode() for k in set(state) | set(final_state)
                    if state.get(k) != final_state.get(k))[:20],
            }
        return report


def problems(report: dict[str, Any]) -> list[str]:
    """What is wrong in a report ([] if nothing)."""
    out = []
    if report["acknowledged"] < 50:
        out.append(f"too few acknowledged writes: {report['acknowledged']}")
    if len(report["watchers"]) != 3:
        out.append(f"watchers: {sorted(report['watchers'])}")
    for n, w in report["watchers"].items():
        for what, bad in (("error", w["error"]), ("unordered", not w["ordered"]),
                          ("duplicates", w["duplicates"]),
                          ("missing acknowledged writes", w["missing_count"]),
                          ("wrong events", w["wrong_acknowledged"]),
                          ("events below the start", w["below_start"]),
                          ("rebuilt state differs from the final range",
                           not w["state_equals_final_range"])):
            if bad:
                out.append(f"watcher {n}: {what}: {bad}")
    return out


async def run_watch_faults(workdir: Path, cfg: WatchConfig) -> dict[str, Any]:
    return await WatchRun(workdir, cfg).run_watch()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--all-kinds", action="store_true")
    args = parser.parse_args()
    cfg = WatchConfig(seed=args.seed, seconds=args.seconds)
    if args.all_kinds:
        from fault_run import FAULT_KINDS
        cfg.kinds = tuple(FAULT_KINDS)
    workdir = Path(tempfile.mkdtemp(prefix="dengine-watch-run-"))
    report = asyncio.run(run_watch_faults(workdir, cfg))
    print(json.dumps(report, indent=2, default=str))
    bad = problems(report)
    print("PROBLEMS:" if bad else "OK", *bad, sep="\n")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

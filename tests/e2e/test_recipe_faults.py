"""Locks and elections on real processes under faults (issue 17's acceptance): 3 dengine
nodes behind the per-link fault proxy (fault_run.py), 5 contender processes
(recipe_contender.py) looping acquire -> guarded "enter" record -> hold -> guarded "exit"
record -> release, while the test kills (-9) and pauses (SIGSTOP past the TTL) holders,
and kills, pauses and isolates the cluster's leader, one fault at a time.

Checks, from the records written through the cluster and the contenders' event lines:
- critical sections never overlap: in revision order, every section's exit record comes
  before the next section's enter record (a record is written only while its writer's key
  exists with its create revision: the fencing token guard);
- fencing tokens strictly increase in acquisition order (the enter records' revisions
  are in token order; each contender's tokens increase);
- a killed holder's lock is taken over within TTL + a few seconds (no leader change in
  between: a new leader gives every lease its full TTL again, as etcd does);
- elections: the same, and an observer in the test sees one leader at a time, leaders'
  create revisions increasing.

CI runs ~12 s of faults per recipe; `-m slow` runs 120 s (DENGINE_RECIPE_SEEDS=1,2,...).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fault_run import FaultRun, RunConfig

import dengine
from dengine.client import Client
from dengine.errors import DengineError

# Locks and elections need leases and watches (issue 17 items 1-2): these tests switch on
# once both have landed.
RECIPES_READY = all(hasattr(cls, name) for cls, name in (
    (dengine.Engine, "lease"), (dengine.Engine, "watch"), (dengine.Client, "lease"),
    (dengine.Client, "watch")))
needs_leases_and_watch = pytest.mark.skipif(
    not RECIPES_READY, reason="leases and watch not landed yet (issue 17 items 1-2)")
pytestmark = needs_leases_and_watch


CONTENDER = Path(__file__).resolve().parent / "recipe_contender.py"
TTL = 3
TAKEOVER_SLACK_S = 5.0  # beyond the TTL: a lease expiry is noticed on the leader's tick,
# then the waiter's watch event and its checks (two shared cores, 8+ processes)
CLUSTER_FAULTS = ("kill_leader", "pause_leader", "isolate_leader_drop")
HOLDER_FAULTS = ("kill_holder", "pause_holder")


class Contender:
    def __init__(self, workdir: Path, mode: str, name: str, endpoints: list[str],
                 index: int) -> None:
        self.args = [sys.executable, str(CONTENDER), mode, name, ",".join(endpoints),
                     str(TTL), f"c{index}"]
        self.out = workdir / f"contender{index}.jsonl"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.out, "ab") as out:
            out.write(json.dumps({"event": "started", "t": time.time()}).encode() + b"\n")
            out.flush()
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.out.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    out.append(event)
        return out

    def holding(self) -> dict[str, Any] | None:
        """Its last acquisition, if not released since."""
        current = None
        for e in self.events():
            if e.get("event") == "acquired":
                current = e
            elif e.get("event") in ("released", "started"):
                current = None
        return current

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def run_recipe_faults(workdir: Path, mode: str, seconds: float, seed: int,
                            contenders: int = 5) -> dict[str, Any]:
    rng = random.Random(seed)
    name = f"{mode}-{seed}"
    run = FaultRun(workdir, RunConfig(seed=seed, seconds=seconds))
    procs: list[Contender] = []
    kills: list[dict[str, Any]] = []
    observed: list[tuple[float, int, bytes]] = []
    observer: asyncio.Task[None] | None = None
    try:
        await run.setup()
        procs = [Contender(workdir, mode, name, run.endpoints, i) for i in range(contenders)]
        for c in procs:
            c.start()
        if mode == "elect":
            async def observe() -> None:
                async with Client(run.endpoints, timeout=5) as client:
                    while True:
                        with contextlib.suppress(DengineError):
                            async for kv in client.election(name.encode()).observe():
                                observed.append((time.time(), kv.create_revision, kv.key))
                        await asyncio.sleep(0.1)
            observer = asyncio.ensure_future(observe())
        for _ in range(600):  # the contenders are up (imports take seconds under load)
            if any(e.get("event") == "acquired" for c in procs for e in c.events()):
                break
            await asyncio.sleep(0.1)
        end = time.monotonic() + seconds
        kinds = [*HOLDER_FAULTS, *CLUSTER_FAULTS]
        turn = 0
        while time.monotonic() < end:
            kind = kinds[turn % len(kinds)] if turn < len(kinds) else rng.choice(kinds)
            turn += 1
            if kind in CLUSTER_FAULTS:
                await run.inject(kind, rng.uniform(1.0, 2.5))
            else:
                holders: list[tuple[Contender, dict[str, Any]]] = []
                for _ in range(50):  # wait for someone to hold it (up to 5 s)
                    holders = [(c, h) for c in procs if (h := c.holding()) is not None]
                    if holders:
                        break
                    await asyncio.sleep(0.1)
                if not holders:
                    run.log(f"{kind}: nobody held the {mode} for 5 s")
                    continue
                victim, held = rng.choice(holders)
                assert victim.proc is not None
                if kind == "kill_holder":
                    victim.proc.kill()
                    victim.proc.wait()
                    kills.append({"t": time.time(), "token": held["token"]})
                    run.log(f"killed holder of token {held['token']}")
                    victim.start()
                    # No cluster fault until another contender took over: a leader
                    # change gives every lease its full TTL again (etcd's rule: a
                    # failover never expires a lease early), which would delay it.
                    for _ in range(10 * (TTL + 15)):
                        if any(e.get("event") == "acquired" and e["token"] > held["token"]
                               for c in procs for e in c.events()):
                            break
                        await asyncio.sleep(0.1)
                else:  # paused past its TTL: its lease expires, another takes over
                    victim.proc.send_signal(signal.SIGSTOP)
                    run.log(f"paused holder of token {held['token']}")
                    await asyncio.sleep(TTL + 2.0)
                    victim.proc.send_signal(signal.SIGCONT)
            await asyncio.sleep(rng.uniform(1.0, 2.0))
        await run.heal()
        await asyncio.sleep(2.0)
    finally:
        if observer is not None:
            observer.cancel()
            with contextlib.suppress(BaseException):
                await observer
        for c in procs:
            c.stop()
    try:
        async with Client(run.endpoints, timeout=20) as client:
            records = await client.range(f"cs/{name}/".encode(), prefix=True)
    finally:
        await run.teardown()
    events = [e for c in procs for e in c.events()]
    return {"records": records.kvs, "events": events, "kills": kills, "observed": observed,
            "procs": procs}


def check(result: dict[str, Any]) -> dict[str, Any]:
    sections: dict[int, dict[str, int]] = {}
    for kv in result["records"]:
        _, _, token, step = kv.key.decode().rsplit("/", 3)
        sections.setdefault(int(token), {})[step] = kv.mod_revision
    tokens = sorted(sections)
    assert len(tokens) >= 5, f"too few critical sections ran: {tokens}"
    previous: tuple[int, dict[str, int]] | None = None
    for token in tokens:
        s = sections[token]
        if "exit" in s:
            assert "enter" in s and s["enter"] < s["exit"], (token, s)
        if previous is not None and "enter" in s:
            ptoken, p = previous
            last = p.get("exit", p.get("enter", 0))
            assert last < s["enter"], f"section {token} {s} overlaps section {ptoken} {p}"
        if "enter" in s:
            previous = (token, s)
    # each contender's tokens increase; acquisitions in time order have increasing tokens
    acquired = sorted((e["t"], e["token"]) for e in result["events"]
                      if e.get("event") == "acquired")
    takeovers = []
    for kill in result["kills"]:
        after = [t for t, token in acquired if token > kill["token"] and t > kill["t"]]
        assert after, f"nobody took over after the kill of token {kill['token']}"
        takeovers.append(after[0] - kill["t"])
    assert all(t <= TTL + TAKEOVER_SLACK_S for t in takeovers), takeovers
    observed = result["observed"]
    revisions = [rev for _, rev, _ in observed]
    assert revisions == sorted(revisions), f"observed leaders out of order: {observed}"
    return {"sections": len(tokens), "takeovers_s": [round(t, 2) for t in takeovers],
            "acquisitions": len(acquired), "observed_leaders": len(observed)}


def _seeds() -> list[int]:
    return [int(s) for s in os.environ.get("DENGINE_RECIPE_SEEDS", "1").split(",") if s]


@pytest.mark.parametrize("mode", ["lock", "elect"])
def test_recipes_under_faults(tmp_path: Path, mode: str) -> None:
    result = asyncio.run(run_recipe_faults(tmp_path, mode, 12.0, seed=7))
    print(mode, check(result))


@pytest.mark.slow
@pytest.mark.parametrize("seed", _seeds())
@pytest.mark.parametrize("mode", ["lock", "elect"])
def test_recipes_under_faults_long(tmp_path: Path, mode: str, seed: int) -> None:
    result = asyncio.run(run_recipe_faults(tmp_path, mode, 120.0, seed=seed))
    print(mode, seed, check(result))

"""Fault run: 3 real `dengine serve` nodes behind per-link proxies, under faults and load.

Faults, one at a time from a seeded RNG (the seed is printed; the same seed gives the
same sequence of kinds and durations): kill -9 of the leader or a follower and restart,
isolation of the leader or a follower (every link to and from it dropped: connections
reset, or black-holed: held open, nothing forwarded), the leader's outbound links
black-holed (it still hears the others), SIGSTOP/SIGCONT of the leader or a follower,
50 ms added to every link. Between faults the cluster runs healed for a quiet period.

Load: `clients` dengine.Client instances doing linearizable gets and puts on shared keys
(the key set changes every `epoch_s` so each key's history stays small for the checker),
paced to `rate` ops/s in total, each call bounded with asyncio.wait_for; plus one
long-lived Client with every endpoint keeping up to `long_inflight` puts in flight on its
own key, each bounded with asyncio.wait_for(client.put(...), long_timeout).

Checks: the whole history (plus a final linearizable read of every key once healed) with
dengine.sim.lincheck; acknowledged puts that must be the final value of their key; and per
client the longest window without a successful write, attributed to the fault kinds whose
period (start of the fault to the start of the next one) it overlaps.

    python tests/e2e/fault_run.py --seed 7 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e_support import TEST_SETTINGS, Node

from dengine.bench.cluster import free_ports
from dengine.client import Client
from dengine.errors import DengineError, InvalidRequest, NotLeader, Unavailable
from dengine.server.supervisor import die_with_parent
from dengine.sim.lincheck import Op, check

PROXY = Path(__file__).resolve().parent / "fault_proxy.py"

# kind -> (min, max) duration in seconds
FAULT_KINDS: dict[str, tuple[float, float]] = {
    "kill_leader": (1.0, 3.0),
    "kill_follower": (1.0, 3.0),
    "isolate_leader_drop": (2.0, 4.0),
    "isolate_leader_blackhole": (2.0, 4.0),
    "isolate_follower_drop": (2.0, 4.0),
    "isolate_follower_blackhole": (2.0, 4.0),
    "leader_out_blackhole": (2.0, 4.0),
    "pause_leader": (1.0, 3.0),
    "pause_follower": (1.0, 3.0),
    "delay_50ms": (3.0, 5.0),
}
# The issue's 1 s bound: "a follower's pause or isolation interrupts writes for no more
# than 1 s" (a killed follower gets the general bound).
FOLLOWER_KINDS = ("isolate_follower_drop", "isolate_follower_blackhole", "pause_follower")
LONG = "long"  # the long-lived client's name in the tables


@dataclass
class RunConfig:
    seed: int = 1
    seconds: float = 150.0  # of faults, at least one of each kind (then a healed tail)
    clients: int = 8
    rate: float = 1000.0  # ops/s of the regular clients together
    write_share: float = 0.5
    keys_per_epoch: int = 50
    epoch_s: float = 5.0
    client_timeout: float = 3.0  # the Client's own deadline for the regular clients
    long_inflight: int = 30
    long_rate: float = 100.0  # puts/s the long-lived client starts (fewer when 30 wait)
    long_timeout: float = 3.0
    quiet_s: tuple[float, float] = (1.0, 2.0)
    duration_scale: float = 1.0
    kinds: tuple[str, ...] = tuple(FAULT_KINDS)
    tail_s: float = 3.0  # healed load after the last fault
    proxy: bool = True  # False: peers connect directly (a control run; no link faults)
    dump_stalls: str = ""  # path of py-spy: dump a node's stacks when Status times out
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class Fault:
    kind: str
    node: int
    start: float
    end: float = 0.0
    until: float = 0.0  # the next fault's start (or the end of the load): its period
    note: str = ""
    answering: float = 0.0  # a killed node: when its restart first answered Status


@dataclass
class Call:
    client: str
    kind: str  # put | get
    key: str
    value: str | None
    output: str | None
    call: float
    ret: float
    outcome: str  # ok | unknown | failed
    error: str = ""


class ProxyProcess:
    """fault_proxy.py in its own process, controlled over its stdin/stdout."""

    def __init__(self, public: dict[int, str], private: dict[int, str], log: Path) -> None:
        self.spec = json.dumps({"public": public, "private": private})
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.lock = asyncio.Lock()

    async def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *die_with_parent([sys.executable, str(PROXY), self.spec]),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=log)
        ready = await self._read()
        assert ready.get("ready"), ready

    async def _read(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 10)
        if not line:
            raise RuntimeError(f"fault proxy exited; see {self.log}")
        return dict(json.loads(line))

    async def command(self, **cmd: Any) -> dict[str, Any]:
        async with self.lock:
            assert self.proc is not None and self.proc.stdin is not None
            self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
            await self.proc.stdin.drain()
            reply = await self._read()
        if not reply.get("ok"):
            raise RuntimeError(f"fault proxy: {reply}")
        return reply

    async def set(self, links: list[tuple[int, int]], mode: str, delay: float = 0.0) -> None:
        await self.command(op="set", links=links, mode=mode, delay=delay)

    async def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(Exception):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def client_state(client: Client) -> dict[str, Any]:
    """What a Client is waiting on (private attributes, for diagnostics only; "?" when
    the client's internals moved): the leader it talks to, its write batcher's RPCs in
    flight and the writes queued behind them."""
    router = getattr(client, "_router", client)
    writes = getattr(client, "_writes", None)
    return {"client_leader": getattr(router, "_leader", "?"),
            "write_rpcs_in_flight": getattr(writes, "_inflight", "?"),
            "writes_queued": len(getattr(writes, "_pending", ())) if writes else "?"}


class FaultRun:
    def __init__(self, workdir: Path, cfg: RunConfig) -> None:
        self.workdir = workdir
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        n = 3
        ports = free_ports(3 * n)
        self.public = {i + 1: f"127.0.0.1:{ports[i]}" for i in range(n)}
        self.private = {i + 1: f"127.0.0.1:{ports[n + i]}" for i in range(n)}
        clients = {i + 1: f"127.0.0.1:{ports[2 * n + i]}" for i in range(n)}
        settings = {**cfg.settings}
        self.nodes = {
            i: Node(i, clients[i], self.public[i], workdir,
                    {j: a for j, a in self.public.items() if j != i}, settings)
            for i in self.public
        }
        self.endpoints = [clients[i] for i in sorted(clients)]
        self.proxy = ProxyProcess(self.public, self.private, workdir / "proxy.log")
        self.paused: set[int] = set()
        self.faults: list[Fault] = []
        self.calls: list[Call] = []
        self.keys: set[str] = set()
        self.t0 = 0.0
        self.t0_wall = 0.0  # for matching the nodes' log lines
        self.stop_load = asyncio.Event()
        self.long_waits: list[dict[str, Any]] = []  # long-lived puts cut by wait_for
        self.statuses: list[tuple[float, int, int, str, int, int]] = []
        self.stalls: list[tuple[float, float]] = []
        self.slow_status: list[tuple[float, int, float]] = []  # > 0.1 s, -1: no answer
        self.dumps: list[asyncio.Task[None]] = []
        self.proxy_stats: dict[str, Any] = {}
        self.election_timeout_s = (
            {**TEST_SETTINGS, **settings}["election_timeout_ms"] / 1000.0)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def log(self, msg: str) -> None:
        print(f"[{self.now():7.2f}] {msg}", flush=True)

    # ---- cluster ---------------------------------------------------------------------

    async def setup(self) -> None:
        """Bootstrap on the public addresses (so the membership every node reads names
        them), then restart each node on its private address behind the proxy."""
        for node in self.nodes.values():
            node.start()
        async with Client(self.endpoints, timeout=30) as c:
            await c.put("fault-run-bootstrap", "1")
            st = await c.status(timeout=5)
            index = st.commit_index
            for node in self.nodes.values():
                while True:
                    with contextlib.suppress(DengineError):
                        s = await c.status(node.client, timeout=2)
                        if s.applied_index >= index:
                            break
                    await asyncio.sleep(0.05)
        if not self.cfg.proxy:
            return
        for node in self.nodes.values():
            node.stop()
            node.peer = self.private[node.node_id]
        await self.proxy.start()
        for node in self.nodes.values():
            node.start()
        async with Client(self.endpoints, timeout=30) as c:
            await c.put("fault-run-bootstrap", "2")
            members = await c.members(timeout=10)
        got = {m.id: m.address for m in members}
        if got != self.public:
            raise RuntimeError(f"membership addresses {got} are not the proxies' "
                               f"{self.public}: peer traffic would bypass them")

    async def teardown(self) -> None:
        for node in self.nodes.values():
            node.stop()
        await self.proxy.stop()

    async def leader(self, timeout: float = 3.0) -> int:
        """The node that says it leads at the highest term (0: none within `timeout`)."""
        deadline = time.monotonic() + timeout
        async with Client(self.endpoints, timeout=1) as c:
            while time.monotonic() < deadline:
                best = (0, 0)
                for i, node in self.nodes.items():
                    if not node.alive or i in self.paused:
                        continue
                    with contextlib.suppress(DengineError):
                        st = await c.status(node.client, timeout=0.5)
                        if st.role == "leader" and st.term > best[0]:
                            best = (st.term, i)
                if best[1]:
                    return best[1]
                await asyncio.sleep(0.05)
        return 0

    def links_of(self, node: int) -> list[tuple[int, int]]:
        return [(a, b) for a in self.nodes for b in self.nodes
                if a != b and node in (a, b)]

    # ---- faults ----------------------------------------------------------------------

    async def inject(self, kind: str, duration: float) -> Fault:
        on_leader = "leader" in kind
        leader = await self.leader()
        others = sorted(i for i in self.nodes if i != leader)
        note = ""
        if on_leader:
            target = leader
            if not target:
                target = self.rng.choice(sorted(self.nodes))
                note = "no leader known: random node"
        elif kind == "delay_50ms":
            target = 0
        else:
            target = self.rng.choice(others)
        fault = Fault(kind, target, self.now(), note=note)
        self.log(f"fault {kind} node {target} for {duration:.2f}s {note}")
        self.faults.append(fault)
        node = self.nodes.get(target)
        if kind.startswith("kill"):
            assert node is not None
            node.kill()
            await asyncio.sleep(duration)
            node.start()
            fault.answering = await self.answering(node.client)
        elif kind.startswith("pause"):
            assert node is not None
            node.signal(signal.SIGSTOP)
            self.paused.add(target)
            await asyncio.sleep(duration)
            node.signal(signal.SIGCONT)
            self.paused.discard(target)
        elif kind.startswith("isolate"):
            mode = "drop" if kind.endswith("drop") else "blackhole"
            await self.proxy.set(self.links_of(target), mode)
            await asyncio.sleep(duration)
            await self.proxy.set(self.links_of(target), "pass")
        elif kind == "leader_out_blackhole":
            links = [(target, b) for b in self.nodes if b != target]
            await self.proxy.set(links, "blackhole")
            await asyncio.sleep(duration)
            await self.proxy.set(links, "pass")
        elif kind == "delay_50ms":
            links = [(a, b) for a in self.nodes for b in self.nodes if a != b]
            await self.proxy.set(links, "pass", 0.05)
            await asyncio.sleep(duration)
            await self.proxy.set(links, "pass", 0.0)
        else:
            raise ValueError(kind)
        fault.end = self.now()
        return fault

    async def heal(self) -> None:
        links = [(a, b) for a in self.nodes for b in self.nodes if a != b]
        if self.cfg.proxy:
            await self.proxy.set(links, "pass", 0.0)
        for i in sorted(self.paused):
            self.nodes[i].signal(signal.SIGCONT)
        self.paused.clear()
        for node in self.nodes.values():
            if not node.alive:
                node.start()

    async def answering(self, address: str, limit: float = 20.0) -> float:
        """When a restarted node first answers Status: the next fault waits for it, so
        that a fault on another node never finds only one member up (its window would
        be the restart's, not its own)."""
        async with Client([address], timeout=1) as c:
            deadline = self.now() + limit
            while self.now() < deadline:
                with contextlib.suppress(DengineError):
                    await c.status(address, timeout=0.3)
                    return self.now()
                await asyncio.sleep(0.05)
        return 0.0

    async def schedule(self) -> None:
        cfg = self.cfg
        end = self.now() + cfg.seconds
        order: list[str] = []
        rounds = 0
        while True:
            if not order:
                order = list(cfg.kinds)
                self.rng.shuffle(order)
                rounds += 1
            kind = order.pop()
            lo, hi = FAULT_KINDS[kind]
            duration = self.rng.uniform(lo, hi) * cfg.duration_scale
            quiet = self.rng.uniform(*cfg.quiet_s)
            # Every kind runs at least once, even past `seconds`.
            if self.now() + duration + quiet > end and rounds > 1:
                break
            await self.inject(kind, duration)
            await asyncio.sleep(quiet)
        await self.heal()

    async def watch_lag(self) -> None:
        """Record when this process's loop ran late (> 0.1 s): the clients' measurements
        (and the fault schedule) stalled with it."""
        while not self.stop_load.is_set():
            before = self.now()
            await asyncio.sleep(0.05)
            late = self.now() - before - 0.05
            if late > 0.1:
                self.stalls.append((round(before, 3), round(late, 3)))

    async def dump_stack(self, node_id: int, pid: int, at: float) -> None:
        """py-spy dump of a node that did not answer Status in time (--dump-stalls)."""
        proc = await asyncio.create_subprocess_exec(
            self.cfg.dump_stalls, "dump", "--pid", str(pid), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        with open(self.workdir / "stalls.txt", "a") as f:
            f.write(f"==== node {node_id} (pid {pid}) no Status answer at {at:.2f}s; "
                    f"dumped at {self.now():.2f}s\n{out.decode(errors='replace')}\n")

    async def monitor(self) -> None:
        """Every node's term, role and commit index every 100 ms (for attribution)."""
        async with Client(self.endpoints, timeout=1) as c:
            while not self.stop_load.is_set():
                t = self.now()
                for i, node in self.nodes.items():
                    if not node.alive or i in self.paused:
                        continue
                    asked = self.now()
                    try:
                        st = await c.status(node.client, timeout=0.3)
                    except DengineError:
                        self.slow_status.append((round(asked, 2), i, -1.0))
                        if self.cfg.dump_stalls and node.process is not None:
                            self.dumps.append(asyncio.create_task(
                                self.dump_stack(i, node.process.pid, asked)))
                        continue
                    took = self.now() - asked
                    if took > 0.1:
                        self.slow_status.append((round(asked, 2), i, round(took, 3)))
                    self.statuses.append((round(t, 2), i, st.term, st.role,
                                          st.leader_id, st.commit_index))
                await asyncio.sleep(0.1)

    # ---- load ------------------------------------------------------------------------

    def record(self, c: Call) -> None:
        self.calls.append(c)

    def key_now(self, rng: random.Random) -> str:
        key = f"e{int(self.now() / self.cfg.epoch_s)}k{rng.randrange(self.cfg.keys_per_epoch)}"
        self.keys.add(key)
        return key

    async def regular(self, cid: int) -> None:
        cfg = self.cfg
        rng = random.Random(cfg.seed * 1000 + cid)
        interval = cfg.clients / cfg.rate
        name = f"c{cid}"
        seq = 0
        async with Client(self.endpoints, timeout=cfg.client_timeout) as client:
            next_t = time.monotonic()
            while not self.stop_load.is_set():
                next_t = max(next_t + interval, time.monotonic())
                await asyncio.sleep(next_t - time.monotonic())
                key = self.key_now(rng)
                call = self.now()
                if rng.random() < cfg.write_share:
                    seq += 1
                    value = f"{name}-{seq}"
                    outcome, err, _ = await self.attempt(
                        client.put(key, value), cfg.client_timeout + 2)
                    self.record(Call(name, "put", key, value, None, call, self.now(),
                                     outcome, err))
                else:
                    outcome, err, out = await self.attempt(
                        client.get(key), cfg.client_timeout + 2)
                    output = None if out is None else bytes(out).decode()
                    self.record(Call(name, "get", key, None, output, call, self.now(),
                                     outcome, err))

    @staticmethod
    async def attempt(coro: Any, bound: float) -> tuple[str, str, Any]:
        """(outcome, error name, result): ok, failed (definitely not applied), unknown."""
        try:
            return "ok", "", await asyncio.wait_for(coro, bound)
        except TimeoutError:
            return "unknown", "wait_for", None
        except (NotLeader, Unavailable, InvalidRequest) as e:
            return "failed", type(e).__name__, None
        except DengineError as e:
            return "unknown", type(e).__name__, None
        except Exception as e:  # the client let something else through: a finding
            return "unknown", f"unexpected {type(e).__name__}: {e}", None

    async def long_lived(self) -> None:
        cfg = self.cfg
        slots = asyncio.Semaphore(cfg.long_inflight)
        tasks: set[asyncio.Task[None]] = set()
        interval = 1.0 / cfg.long_rate
        self.keys.add(LONG)

        async def one(client: Client, seq: int) -> None:
            value = f"L-{seq}"
            call = self.now()
            try:
                outcome, err, _ = await self.attempt(client.put(LONG, value),
                                                     cfg.long_timeout)
                if err == "wait_for":
                    self.long_waits.append({
                        "call": round(call, 3), "seq": seq,
                        **client_state(client),
                        "inflight": cfg.long_inflight - slots._value,
                    })
                self.record(Call(LONG, "put", LONG, value, None, call, self.now(),
                                 outcome, err))
            finally:
                slots.release()

        async with Client(self.endpoints) as client:
            seq = 0
            next_t = time.monotonic()
            while not self.stop_load.is_set():
                next_t = max(next_t + interval, time.monotonic())
                await asyncio.sleep(next_t - time.monotonic())
                await slots.acquire()
                seq += 1
                t = asyncio.create_task(one(client, seq))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks, return_exceptions=True)

    async def final_reads(self) -> list[Call]:
        """Every key read linearizably once the cluster is healed (retried until read)."""
        keys = sorted(self.keys)
        out: list[Call] = []
        async with Client(self.endpoints, timeout=10) as client:
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                for _ in range(10):
                    call = self.now()
                    try:
                        values = await client.get_many(chunk)
                    except DengineError:
                        await asyncio.sleep(0.5)
                        continue
                    ret = self.now()
                    out += [Call("final", "get", k, None,
                                 None if v is None else bytes(v).decode(), call, ret, "ok")
                            for k, v in zip(chunk, values, strict=True)]
                    break
                else:
                    raise RuntimeError("final reads failed 10 times")
        return out

    # ---- the run ---------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        cfg = self.cfg
        print(f"fault run: seed {cfg.seed}, {cfg.seconds:g}s of faults, {cfg.clients} "
              f"clients at {cfg.rate:g} ops/s + long-lived client; work dir {self.workdir}",
              flush=True)
        try:
            await self.setup()
            self.t0 = time.monotonic()
            self.t0_wall = time.time()
            load = [asyncio.create_task(self.regular(i)) for i in range(cfg.clients)]
            load.append(asyncio.create_task(self.long_lived()))
            load.append(asyncio.create_task(self.monitor()))
            load.append(asyncio.create_task(self.watch_lag()))
            await asyncio.sleep(1.0)
            await self.schedule()
            heal_at = self.now()
            self.log("healed")
            await asyncio.sleep(cfg.tail_s)
            self.stop_load.set()
            await asyncio.gather(*load)
            await asyncio.gather(*self.dumps, return_exceptions=True)
            load_end = self.now()
            if cfg.proxy:
                self.proxy_stats = (await self.proxy.command(op="stats"))["stats"]
            finals = await self.final_reads()
        finally:
            await self.teardown()
        return analyse(self, heal_at, load_end, finals)


# ---- analysis --------------------------------------------------------------------------

def history_ops(calls: list[Call]) -> list[Op]:
    """The calls as lincheck ops: failed ones left out (not applied), unknown ones open."""
    return [Op(hash(c.client), c.kind, c.key, c.value, c.output,  # type: ignore[arg-type]
               c.call, c.ret if c.outcome == "ok" else None)
            for c in calls if c.outcome != "failed"]


def lost_writes(calls: list[Call], finals: list[Call]) -> list[dict[str, Any]]:
    """Acknowledged puts that every other (possibly applied) put on their key preceded,
    yet are not the key's final value."""
    final = {c.key: c.output for c in finals}
    puts_by_key: dict[str, list[Call]] = defaultdict(list)
    for c in calls:
        if c.kind == "put" and c.outcome != "failed":
            puts_by_key[c.key].append(c)
    lost = []
    for key, puts in puts_by_key.items():
        acked = [p for p in puts if p.outcome == "ok"]
        if not acked:
            continue
        last = max(acked, key=lambda p: p.call)
        if all(p is last or (p.outcome == "ok" and p.ret < last.call) for p in puts) and (
                final.get(key) != last.value):
            lost.append({"key": key, "acknowledged": last.value, "final": final.get(key)})
    return lost


def analyse(run: FaultRun, heal_at: float, load_end: float, finals: list[Call]
            ) -> dict[str, Any]:
    calls = run.calls
    for i, f in enumerate(run.faults):
        f.until = run.faults[i + 1].start if i + 1 < len(run.faults) else heal_at
    periods = [("none", 0.0, run.faults[0].start if run.faults else heal_at)]
    periods += [(f.kind, f.start, f.until) for f in run.faults]
    periods.append(("healed", heal_at, load_end))

    # Linearizability of everything, final reads included.
    history = history_ops([*calls, *finals])
    started = time.monotonic()
    result = check(history)
    check_s = time.monotonic() - started

    lost = lost_writes(calls, finals)

    # Longest window without a successful write, per client, per period kind.
    clients = sorted({c.client for c in calls}, key=lambda n: (n == LONG, n))
    ok_writes: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, list[Call]] = defaultdict(list)
    for c in calls:
        if c.kind == "put" and c.outcome == "ok":
            ok_writes[c.client].append(c.ret)
        elif c.outcome != "ok":
            errors[c.client].append(c)
    windows: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for name in clients:
        times = [0.0, *sorted(ok_writes[name]), load_end]
        for a, b in itertools.pairwise(times):
            # The period the window overlaps most (a window that starts just before a
            # fault is that fault's).
            kind = max(periods, key=lambda p: min(b, p[2]) - max(a, p[1]))[0]
            best = windows[kind].get(name)
            if best is None or b - a > best["s"]:
                errs = Counter(f"{e.kind}:{e.error}" for e in errors[name] if a <= e.ret <= b)
                windows[kind][name] = {"s": round(b - a, 3), "from": round(a, 3),
                                       "to": round(b, 3), "errors": dict(errs)}
    # Terms seen during each fault's period: elections it caused.
    for f in run.faults:
        seen = [st for st in run.statuses if f.start <= st[0] < f.until]
        before = [st[2] for st in run.statuses if st[0] < f.start]
        f.note += (f" terms {max(before, default=0)}->{max((st[2] for st in seen), default=0)}"
                   f" leaders {sorted({st[4] for st in seen if st[3] == 'leader'})}")
    # Stretches when a running, not paused node answered no Status within 0.3 s: its loop
    # was blocked (a restarted node is down until it first answered, or 3 s).
    down = [(f.node, f.start, (f.answering or f.end + 3.0) if f.kind.startswith("kill")
             else f.end)
            for f in run.faults if f.kind.startswith(("kill", "pause"))]
    unresponsive: list[dict[str, Any]] = []
    open_: dict[int, list[float]] = {}
    for t, node, took in sorted(run.slow_status, key=lambda x: (x[1], x[0])):
        if took >= 0 or any(n == node and a <= t <= b for n, a, b in down):
            continue
        cur = open_.get(node)
        if cur is not None and t - cur[1] < 0.7:
            cur[1] = t
        else:
            if cur is not None:
                unresponsive.append({"node": node, "from": cur[0], "to": cur[1]})
            open_[node] = [t, t]
    unresponsive += [{"node": n, "from": a, "to": b} for n, (a, b) in open_.items()]
    unresponsive = [u for u in unresponsive if u["to"] > u["from"]]
    for u in unresponsive:
        u["s"] = round(u["to"] - u["from"] + 0.3, 2)
        u["period"] = max(periods, key=lambda p: min(u["to"], p[2]) - max(u["from"], p[1]))[0]
    table = {kind: {name: w["s"] for name, w in sorted(per.items())}
             for kind, per in windows.items()}
    unexpected = Counter(c.error for c in calls if c.error.startswith("unexpected"))
    outcomes = Counter(f"{'long' if c.client == LONG else 'regular'}:{c.kind}:{c.outcome}"
                       for c in calls)
    return {
        "seed": run.cfg.seed,
        "config": {k: v for k, v in asdict(run.cfg).items()},
        "election_timeout_s": run.election_timeout_s,
        "nodes": {i: {"client": n.client, "peer_public": run.public[i],
                      "peer_private": run.private[i]} for i, n in run.nodes.items()},
        "faults": [asdict(f) for f in run.faults],
        "statuses": run.statuses,
        "runner_stalls": run.stalls,
        "t0_wall": run.t0_wall,
        "unresponsive_nodes": sorted(unresponsive, key=lambda u: u["from"]),
        "slow_status": run.slow_status,
        "proxy_stalls": [(round(t - run.t0, 3), s)
                         for t, s in run.proxy_stats.get("stalls", [])],
        "proxy_links": run.proxy_stats.get("links", {}),
        "ops": len(calls),
        "ops_per_s": round(len(calls) / load_end, 1) if load_end else 0.0,
        "outcomes": dict(sorted(outcomes.items())),
        "unexpected_errors": dict(unexpected),
        "linearizable": result.ok,
        "lincheck": result.explanation,
        "lincheck_ops": result.ops_checked,
        "lincheck_s": round(check_s, 2),
        "final_keys": len(finals),
        "lost_acknowledged_writes": lost,
        "clients": clients,
        "windows": {k: dict(v) for k, v in windows.items()},
        "table": table,
        "long_wait_for_timeouts": run.long_waits[:2000],
        "long_wait_for_timeout_count": len(run.long_waits),
    }


def kind_order(report: dict[str, Any]) -> list[str]:
    return [k for k in ("none", *FAULT_KINDS, "healed") if k in report["table"]]


def format_table(report: dict[str, Any]) -> str:
    """fault kind -> longest window without a successful write (s), per client."""
    clients: list[str] = report["clients"]
    counts = Counter(f["kind"] for f in report["faults"])
    head = f"{'period kind':28} {'n':>2} " + " ".join(f"{c:>6}" for c in clients)
    head += f" {'max reg':>7}"
    lines = [head, "-" * len(head)]
    for kind in kind_order(report):
        row = report["table"][kind]
        regular = [row[c] for c in clients if c != LONG and c in row]
        cells = " ".join(f"{row[c]:6.2f}" if c in row else f"{'-':>6}" for c in clients)
        lines.append(f"{kind:28} {counts.get(kind, 1):>2} {cells} "
                     f"{max(regular, default=0.0):7.2f}")
    return "\n".join(lines)


def summary(report: dict[str, Any]) -> str:
    start = time.strftime("%H:%M:%S", time.gmtime(report["t0_wall"]))
    lines = [
        f"seed {report['seed']}: {report['ops']} ops ({report['ops_per_s']} ops/s), "
        f"linearizable={report['linearizable']} ({report['lincheck_ops']} ops checked in "
        f"{report['lincheck_s']}s), lost acknowledged writes: "
        f"{len(report['lost_acknowledged_writes'])}, long-lived puts cut by wait_for: "
        f"{report['long_wait_for_timeout_count']}",
        f"outcomes: {report['outcomes']}",
        f"harness loop stalls > 0.1 s (at, s): runner {report['runner_stalls'][:10]}, "
        f"proxy {report['proxy_stalls'][:10]}",
        "running nodes that answered no Status for >= 0.5 s (node, period, s from the start): "
        + ", ".join(f"{u['node']} {u['period']} {u['from']:.1f}+{u['s']:.1f}s"
                    for u in report["unresponsive_nodes"] if u["s"] >= 0.5),
        f"faults (s from the start of the load, at {start} UTC in the nodes' logs):",
        *(f"  {f['start']:7.2f}-{f['end']:7.2f} {f['kind']:27} node {f['node']} {f['note']}"
          for f in report["faults"]),
        "longest window without a successful write (s), by the fault period it overlaps:",
        format_table(report),
    ]
    if report["unexpected_errors"]:
        lines.append(f"UNEXPECTED ERRORS from the client: {report['unexpected_errors']}")
    if not report["linearizable"]:
        lines.append(f"NOT LINEARIZABLE: {report['lincheck']}")
    return "\n".join(lines)


def window_violations(report: dict[str, Any], bound_s: float, follower_bound_s: float
                      ) -> list[str]:
    """Windows over the targets: `bound_s` anywhere a majority is up and connected (every
    period here: one fault at a time on 3 nodes), `follower_bound_s` in follower faults."""
    out = []
    for kind, per in report["windows"].items():
        limit = follower_bound_s if kind in FOLLOWER_KINDS else bound_s
        for name, w in per.items():
            if w["s"] - own_stalls(report, w["from"], w["to"]) > limit:
                out.append(f"{kind}: {name} {w['s']:.2f}s > {limit:.2f}s "
                           f"[{w['from']}, {w['to']}] errors {w['errors']} "
                           f"(this process stalled {own_stalls(report, w['from'], w['to'])}s)")
    return out


def own_stalls(report: dict[str, Any], start: float, end: float) -> float:
    """Seconds of [start, end] during which this process's own loop ran late: its clients
    could neither send nor hear, so that part of a window is the runner's, not the
    cluster's (a loaded CI machine)."""
    return round(sum(max(0.0, min(end, at + late) - max(start, at))
                     for at, late in report["runner_stalls"]), 3)


def combined_table(reports: list[dict[str, Any]]) -> str:
    """fault kind -> longest window of any regular client and of the long-lived one,
    per report (seed) and over all of them."""
    seeds = [f"seed {r['seed']}" for r in reports]
    head = f"{'period kind':28} " + " ".join(f"{s:>13}" for s in seeds) + f" {'all':>13}"
    lines = [head, f"{'':28} " + " ".join(f"{'reg/long':>13}" for _ in [*seeds, 0]),
             "-" * len(head)]
    kinds = [k for k in ("none", *FAULT_KINDS, "healed")
             if any(k in r["table"] for r in reports)]
    for kind in kinds:
        cells, reg_all, long_all = [], 0.0, 0.0
        for r in reports:
            row = r["table"].get(kind, {})
            reg = max((v for c, v in row.items() if c != LONG), default=0.0)
            lng = row.get(LONG, 0.0)
            reg_all, long_all = max(reg_all, reg), max(long_all, lng)
            cells.append(f"{reg:6.2f}/{lng:6.2f}")
        cells.append(f"{reg_all:6.2f}/{long_all:6.2f}")
        lines.append(f"{kind:28} " + " ".join(cells))
    return "\n".join(lines)


async def run_faults(workdir: Path, cfg: RunConfig) -> dict[str, Any]:
    return await FaultRun(workdir, cfg).run()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    p.add_argument("--seconds", type=float, default=150.0)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--long-rate", type=float, default=100.0)
    p.add_argument("--kinds", default=",".join(FAULT_KINDS))
    p.add_argument("--no-proxy", action="store_true",
                   help="peers connect directly (control run: kill and pause faults only)")
    p.add_argument("--dump-stalls", default="", metavar="PY_SPY",
                   help="py-spy executable: dump a node's stacks (to WORKDIR/stalls.txt) "
                   "whenever it does not answer Status within 0.3 s")
    p.add_argument("--combine", nargs="+", metavar="REPORT_JSON",
                   help="print the per-kind table of these reports (no run)")
    p.add_argument("--workdir", default=None, help="default: a new temporary directory")
    p.add_argument("--json", default=None, help="also write the report here")
    a = p.parse_args()
    if a.combine:
        print(combined_table([json.loads(Path(f).read_text()) for f in a.combine]))
        return
    seed = a.seed if a.seed is not None else random.randrange(1, 1 << 31)
    kinds = tuple(k for k in a.kinds.split(",") if k)
    for k in kinds:
        if k not in FAULT_KINDS:
            p.error(f"unknown fault kind {k!r} (one of: {', '.join(FAULT_KINDS)})")
        if a.no_proxy and not k.startswith(("kill", "pause")):
            p.error(f"{k} needs the proxy")
    cfg = RunConfig(seed=seed, seconds=a.seconds, clients=a.clients, rate=a.rate,
                    long_rate=a.long_rate, kinds=kinds, proxy=not a.no_proxy,
                    dump_stalls=a.dump_stalls)
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix=f"fault-run-{seed}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report = asyncio.run(run_faults(workdir, cfg))
    print(summary(report))
    path = Path(a.json) if a.json else workdir / "report.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"report: {path}")
    sys.exit(0 if report["linearizable"] and not report["lost_acknowledged_writes"] else 1)


if __name__ == "__main__":
    main()

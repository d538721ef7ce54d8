"""Bank and compare-and-swap workloads on 3 real processes under faults, through etcd's gRPC API.

The clients speak etcd v3's gRPC API with `aetcd` (its stubs, so that every request field is
ours to set), so the same run works against a real 3-node etcd 3.4 (`--target etcd`: proves
the workload and its checks) and against 3 `dengine serve` nodes (`--target dengine`).

Faults: fault_run.py's machinery (FaultRun: a seeded schedule of kill -9 + restart, SIGSTOP /
SIGCONT, isolation and black holes through its per-link proxy, of the leader or a follower).
etcd gets the process faults only (the proxy speaks dengine's peer protocol).

Load, while the faults run:

* bank (dengine.sim.bank): N accounts created by one txn before the faults; `bank_clients`
  clients read every account (one range; linearizable or, one time in five, serializable),
  then move an amount between two accounts with a txn guarded by both accounts'
  mod_revision as read, retrying with a new read when the compare fails.
* cas: `cas_clients` clients do linearizable gets, puts and compare-and-swaps (a txn
  "value(k) == expected (version(k) == 0 for absent) then put k") on a few keys (the key
  set changes every `epoch_s` so that each key's history stays small for the checker).

Checks: every range of the accounts (and a final one once healed) with
dengine.sim.bank.check_bank: the total never changes, replicas agree per revision, no
linearizable read is staler than what completed before it; the cas history (with a final
read of every key) with dengine.sim.lincheck.

    python tests/e2e/bank_run.py --target etcd --seed 3 --seconds 40
    python tests/e2e/bank_run.py --target dengine --seed 3 --seconds 40
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aetcd
import aetcd.rpc as rpc
from e2e_support import ServerControl
from fault_run import FAULT_KINDS, FaultRun, RunConfig

from dengine.bench.cluster import free_ports
from dengine.server.supervisor import die_with_parent
from dengine.sim.bank import (
    BankRead,
    BankSpec,
    BankWrite,
    balances_of,
    check_bank,
    plan_transfer,
)
from dengine.sim.lincheck import Op, check

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
PROCESS_KINDS = tuple(k for k in FAULT_KINDS if k.startswith(("kill", "pause")))


@dataclass
class BankConfig:
    target: str = "dengine"  # dengine | etcd
    seed: int = 1
    seconds: float = 40.0
    bank_clients: int = 4
    cas_clients: int = 3
    accounts: int = 5
    cas_keys: int = 3
    epoch_s: float = 5.0
    rpc_timeout: float = 2.0
    kinds: tuple[str, ...] = ()  # default: every kind the target supports
    quiet_s: tuple[float, float] = (1.0, 2.0)
    tail_s: float = 2.0
    # Teeth: transfers and cas without their compares (lost updates): the checks must fail.
    unguarded: bool = False
    settings: dict[str, Any] = field(default_factory=dict)


# ---- clusters: fault_run's FaultRun for dengine, and the same faults on etcd processes ----

class EtcdNode(ServerControl):
    """One etcd 3.4 member, with e2e_support.Node's interface (start, and ServerControl)."""

    def __init__(self, node_id: int, client: str, peer: str, initial: str, workdir: Path
                 ) -> None:
        self.node_id = node_id
        self.client = client
        self.peer = peer
        self.initial = initial
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        cmd = [ETCD, "--name", f"n{self.node_id}",
               "--data-dir", str(self.workdir / f"etcd{self.node_id}"),
               "--listen-client-urls", f"http://{self.client}",
               "--advertise-client-urls", f"http://{self.client}",
               "--listen-peer-urls", f"http://{self.peer}",
               "--initial-advertise-peer-urls", f"http://{self.peer}",
               "--initial-cluster", self.initial, "--initial-cluster-state", "new",
               "--initial-cluster-token", "bank-run",
               "--heartbeat-interval", "50", "--election-timeout", "500"]
        with open(self.workdir / f"etcd{self.node_id}.log", "ab") as log:
            log.write(f"---- start {self.starts} ----\n".encode())
            log.flush()
            self.process = subprocess.Popen(die_with_parent(cmd), stdout=log,
                                            stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)


def _client(endpoint: str, timeout: float) -> aetcd.Client:
    host, _, port = endpoint.rpartition(":")
    return aetcd.Client(host=host, port=int(port), timeout=timeout)  # type: ignore[arg-type]


class EtcdCluster(FaultRun):
    """FaultRun's schedule and faults (kill, pause) on a 3-member etcd cluster."""

    def __init__(self, workdir: Path, cfg: RunConfig) -> None:
        super().__init__(workdir, cfg)
        ports = free_ports(6)
        clients = {i: f"127.0.0.1:{ports[i - 1]}" for i in (1, 2, 3)}
        peers = {i: f"127.0.0.1:{ports[2 + i]}" for i in (1, 2, 3)}
        initial = ",".join(f"n{i}=http://{peers[i]}" for i in (1, 2, 3))
        self.nodes = {i: EtcdNode(i, clients[i], peers[i], initial, workdir)  # type: ignore
                      for i in (1, 2, 3)}
        self.endpoints = [clients[i] for i in (1, 2, 3)]
        self.election_timeout_s = 0.5

    async def setup(self) -> None:
        for node in self.nodes.values():
            node.start()
        deadline = time.monotonic() + 30
        while not await self.leader(1.0):
            if time.monotonic() > deadline:
                raise RuntimeError("etcd elected no leader in 30 s")

    async def leader(self, timeout: float = 3.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            best = (0, 0)
            for i, node in self.nodes.items():
                if not node.alive or i in self.paused:
                    continue
                with contextlib.suppress(Exception):
                    c = _client(node.client, 1)
                    try:
                        await c.connect()
                        st = await c.maintenancestub.Status(rpc.StatusRequest(), timeout=0.5)
                    finally:
                        await c.close()
                    if st.leader == st.header.member_id and st.raftTerm > best[0]:
                        best = (st.raftTerm, i)
            if best[1]:
                return best[1]
            await asyncio.sleep(0.05)
        return 0

    async def monitor(self) -> None:
        return


# ---- the workloads ------------------------------------------------------------------------

class Endpoints:
    """One aetcd client per endpoint; a caller moves on to the next endpoint on errors."""

    def __init__(self, endpoints: list[str], timeout: float) -> None:
        self.clients = [_client(e, timeout) for e in endpoints]

    async def connect(self) -> None:
        """Make the stubs (aetcd's connect only builds a channel: nothing is called)."""
        for c in self.clients:
            await c.connect()

    async def close(self) -> None:
        for c in self.clients:
            with contextlib.suppress(Exception):
                await c.close()


def _put(key: bytes, value: bytes) -> rpc.RequestOp:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))


class BankRun:
    def __init__(self, workdir: Path, cfg: BankConfig) -> None:
        self.cfg = cfg
        kinds = cfg.kinds or (PROCESS_KINDS if cfg.target == "etcd" else tuple(FAULT_KINDS))
        run_cfg = RunConfig(seed=cfg.seed, seconds=cfg.seconds, kinds=kinds,
                            quiet_s=cfg.quiet_s,
                            proxy=any(k not in PROCESS_KINDS for k in kinds),
                            settings=cfg.settings)
        self.cluster = (EtcdCluster if cfg.target == "etcd" else FaultRun)(workdir, run_cfg)
        self.spec = BankSpec(accounts=cfg.accounts)
        self.stop = asyncio.Event()
        self.reads: list[BankRead] = []
        self.writes: list[BankWrite] = []
        self.cas_ops: list[Op] = []
        self.cas_keys: set[bytes] = set()
        self.outcomes: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()

    def now(self) -> float:
        return self.cluster.now()

    async def call(self, name: str, coro: Any) -> Any:
        """The RPC's answer, or None if it failed or timed out (outcome unknown)."""
        try:
            out = await asyncio.wait_for(coro, self.cfg.rpc_timeout + 1)
        except Exception as e:  # every error leaves a write's outcome unknown
            self.errors[f"{name}:{type(e).__name__}:{getattr(e, 'details', lambda: '')()}"] += 1
            self.outcomes[f"{name}:error"] += 1
            return None
        self.outcomes[f"{name}:ok"] += 1
        return out

    # -- bank --

    async def bank_read(self, c: aetcd.Client, who: int | str, linearizable: bool
                        ) -> tuple[BankRead, dict[bytes, Any]] | None:
        """The read (recorded) and its key-values, None if it failed."""
        call = self.now()
        req = rpc.RangeRequest(key=self.spec.prefix, range_end=self.spec.range_end,
                               serializable=not linearizable)
        resp = await self.call("bank:range", c.kvstub.Range(req, timeout=self.cfg.rpc_timeout))
        if resp is None:
            return None
        kvs = {kv.key: kv for kv in resp.kvs}
        read = BankRead(who, call, self.now(), resp.header.revision,
                        balances_of(self.spec, {k: kv.value for k, kv in kvs.items()}),
                        linearizable)
        self.reads.append(read)
        return read, kvs

    async def bank_init(self, c: aetcd.Client) -> None:
        compare = [rpc.Compare(key=k, target=rpc.Compare.CREATE,
                               result=rpc.Compare.EQUAL, create_revision=0)
                   for k in self.spec.keys]
        success = [_put(k, b"%d" % self.spec.initial) for k in self.spec.keys]
        req = rpc.TxnRequest(compare=compare, success=success)
        for _ in range(20):
            call = self.now()
            resp = await self.call("bank:init", c.kvstub.Txn(req, timeout=self.cfg.rpc_timeout))
            if resp is not None:
                if resp.succeeded:
                    self.writes.append(BankWrite("init", call, self.now(),
                                                 resp.header.revision))
                return
            await asyncio.sleep(0.2)
        raise RuntimeError("could not create the accounts")

    async def bank_client(self, cid: int, eps: Endpoints) -> None:
        rng = random.Random(self.cfg.seed * 1000 + cid)
        i = cid % len(eps.clients)
        while not self.stop.is_set():
            c = eps.clients[i]
            got = await self.bank_read(c, cid, rng.random() < 0.8)
            plan = None if got is None else plan_transfer(rng, got[0].balances)
            if got is None or plan is None:
                i = (i + 1) % len(eps.clients)
                await asyncio.sleep(0.05)
                continue
            read, kvs = got
            src, dst, amount = plan
            a, b = self.spec.keys[src], self.spec.keys[dst]
            compare = [rpc.Compare(key=k, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL,
                                   mod_revision=kvs[k].mod_revision) for k in (a, b)]
            va, vb = read.balances[src], read.balances[dst]
            assert va is not None and vb is not None
            req = rpc.TxnRequest(compare=[] if self.cfg.unguarded else compare,
                                 success=[_put(a, b"%d" % (va - amount)),
                                          _put(b, b"%d" % (vb + amount))])
            call = self.now()
            resp = await self.call("bank:txn", c.kvstub.Txn(req, timeout=self.cfg.rpc_timeout))
            if resp is None:
                i = (i + 1) % len(eps.clients)
                await asyncio.sleep(0.05)
            else:
                self.outcomes[f"bank:txn:{'succeeded' if resp.succeeded else 'failed'}"] += 1
                if resp.succeeded:
                    self.writes.append(BankWrite(cid, call, self.now(), resp.header.revision))

    # -- cas --

    def cas_key(self, rng: random.Random) -> bytes:
        key = b"cas/e%dk%d" % (int(self.now() / self.cfg.epoch_s), rng.randrange(self.cfg.cas_keys))
        self.cas_keys.add(key)
        return key

    async def get(self, c: aetcd.Client, key: bytes, who: int | str) -> bytes | None:
        call = self.now()
        resp = await self.call("cas:get", c.kvstub.Range(rpc.RangeRequest(key=key),
                                                        timeout=self.cfg.rpc_timeout))
        if resp is None:
            raise LookupError
        value = resp.kvs[0].value if resp.kvs else None
        self.cas_ops.append(Op(hash(who), "get", key, None, value, call, self.now()))
        return value

    async def cas_client(self, cid: int, eps: Endpoints) -> None:
        rng = random.Random(self.cfg.seed * 1000 + 500 + cid)
        i = cid % len(eps.clients)
        seq = 0
        seen: dict[bytes, bytes | None] = {}
        name = f"cas{cid}"
        while not self.stop.is_set():
            c = eps.clients[i]
            key = self.cas_key(rng)
            r = rng.random()
            seq += 1
            value = f"{name}-{seq}".encode()
            call = self.now()
            if r < 0.4 or key not in seen:
                try:
                    seen[key] = await self.get(c, key, name)
                except LookupError:
                    i = (i + 1) % len(eps.clients)
                    await asyncio.sleep(0.05)
                continue
            if r < 0.6:
                resp = await self.call("cas:put", c.kvstub.Put(
                    rpc.PutRequest(key=key, value=value), timeout=self.cfg.rpc_timeout))
                self.cas_ops.append(Op(hash(name), "put", key, value, None, call,
                                       None if resp is None else self.now()))
            else:
                expected = seen[key]
                if expected is None:
                    cmp = rpc.Compare(key=key, target=rpc.Compare.VERSION,
                                      result=rpc.Compare.EQUAL, version=0)
                else:
                    cmp = rpc.Compare(key=key, target=rpc.Compare.VALUE,
                                      result=rpc.Compare.EQUAL, value=expected)
                req = rpc.TxnRequest(compare=[] if self.cfg.unguarded else [cmp],
                                     success=[_put(key, value)])
                resp = await self.call("cas:cas", c.kvstub.Txn(req,
                                                              timeout=self.cfg.rpc_timeout))
                self.cas_ops.append(Op(
                    hash(name), "cas", key, value, None if resp is None else resp.succeeded,
                    call, None if resp is None else self.now(), expected=expected))
                if resp is not None and resp.succeeded:
                    seen[key] = value
            if resp is None:
                i = (i + 1) % len(eps.clients)
                seen.pop(key, None)
                await asyncio.sleep(0.05)

    async def finals(self, eps: Endpoints) -> BankRead:
        """Once healed: a linearizable read of the accounts and of every cas key."""
        for attempt in range(40):
            c = eps.clients[attempt % len(eps.clients)]
            try:
                got = await self.bank_read(c, "final", True)
                if got is None:
                    raise LookupError
                for key in sorted(self.cas_keys):
                    await self.get(c, key, "final")
                return got[0]
            except LookupError:
                await asyncio.sleep(0.5)
        raise RuntimeError("final reads failed 40 times")

    # -- the run --

    async def run(self) -> dict[str, Any]:
        cfg = self.cfg
        cl = self.cluster
        print(f"bank run on {cfg.target}: seed {cfg.seed}, {cfg.seconds:g}s of faults "
              f"({', '.join(cl.cfg.kinds)}), {cfg.bank_clients} bank + {cfg.cas_clients} cas "
              f"clients; work dir {cl.workdir}", flush=True)
        eps: Endpoints | None = None
        try:
            await cl.setup()
            cl.t0 = time.monotonic()
            cl.t0_wall = time.time()
            eps = Endpoints(cl.endpoints, cfg.rpc_timeout)
            await eps.connect()
            await self.bank_init(eps.clients[0])
            load = [asyncio.create_task(self.bank_client(i, eps))
                    for i in range(cfg.bank_clients)]
            load += [asyncio.create_task(self.cas_client(i, eps))
                     for i in range(cfg.cas_clients)]
            monitor = asyncio.create_task(cl.monitor())
            await asyncio.sleep(1.0)
            await cl.schedule()
            cl.log("healed")
            await asyncio.sleep(cfg.tail_s)
            self.stop.set()
            cl.stop_load.set()
            await asyncio.gather(*load, monitor)
            final = await self.finals(eps)
        finally:
            if eps is not None:
                await eps.close()
            await cl.teardown()
        return self.analyse(final)

    def analyse(self, final: BankRead) -> dict[str, Any]:
        started = time.monotonic()
        bank = check_bank(self.spec, self.reads, self.writes, final.balances)
        lin = check(self.cas_ops)
        return {
            "target": self.cfg.target,
            "seed": self.cfg.seed,
            "config": asdict(self.cfg),
            "faults": [asdict(f) for f in self.cluster.faults],
            "bank_ok": bank is None,
            "bank_problem": bank or "",
            "bank_reads": len(self.reads),
            "bank_linearizable_reads": sum(r.linearizable for r in self.reads),
            "transfers": len(self.writes) - 1,
            "final_balances": list(final.balances),
            "cas_linearizable": lin.ok,
            "lincheck": lin.explanation,
            "cas_ops": len(self.cas_ops),
            "check_s": round(time.monotonic() - started, 2),
            "outcomes": dict(sorted(self.outcomes.items())),
            "errors": dict(self.errors.most_common(20)),
        }


def summary(report: dict[str, Any]) -> str:
    lines = [
        f"{report['target']} seed {report['seed']}: bank ok={report['bank_ok']} "
        f"({report['bank_reads']} reads, {report['bank_linearizable_reads']} linearizable, "
        f"{report['transfers']} transfers, final {report['final_balances']}); "
        f"cas linearizable={report['cas_linearizable']} ({report['cas_ops']} ops); "
        f"checked in {report['check_s']}s",
        f"outcomes: {report['outcomes']}",
        "faults: " + ", ".join(f"{f['kind']}@{f['start']:.1f}" for f in report["faults"]),
    ]
    if report["errors"]:
        lines.append(f"errors: {report['errors']}")
    if not report["bank_ok"]:
        lines.append(f"BANK VIOLATION: {report['bank_problem']}")
    if not report["cas_linearizable"]:
        lines.append(f"NOT LINEARIZABLE: {report['lincheck']}")
    return "\n".join(lines)


async def run_bank(workdir: Path, cfg: BankConfig) -> dict[str, Any]:
    return await BankRun(workdir, cfg).run()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", choices=("dengine", "etcd"), default="dengine")
    p.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    p.add_argument("--seconds", type=float, default=40.0)
    p.add_argument("--bank-clients", type=int, default=4)
    p.add_argument("--cas-clients", type=int, default=3)
    p.add_argument("--kinds", default="", help="comma list of fault_run kinds (default: all "
                   "the target supports)")
    p.add_argument("--unguarded", action="store_true",
                   help="teeth: transfers and cas without compares (the checks must fail)")
    p.add_argument("--workdir", default=None)
    a = p.parse_args()
    seed = a.seed if a.seed is not None else random.randrange(1, 1 << 31)
    kinds = tuple(k for k in a.kinds.split(",") if k)
    for k in kinds:
        if k not in FAULT_KINDS or (a.target == "etcd" and k not in PROCESS_KINDS):
            p.error(f"fault kind {k!r} not available for {a.target}")
    cfg = BankConfig(target=a.target, seed=seed, seconds=a.seconds,
                     bank_clients=a.bank_clients, cas_clients=a.cas_clients, kinds=kinds,
                     unguarded=a.unguarded)
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix=f"bank-run-{seed}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report = asyncio.run(run_bank(workdir, cfg))
    print(summary(report))
    path = workdir / "bank_report.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"report: {path}")
    sys.exit(0 if report["bank_ok"] and report["cas_linearizable"] else 1)


if __name__ == "__main__":
    main()

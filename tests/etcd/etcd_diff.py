"""The differential harness: the same etcdctl script against two clusters, outputs compared.

A script is a list of steps; a step is an etcdctl command line (shlex syntax) and, for
`txn`, its stdin. Templates in both: `{p}` is the script's key prefix (fresh for every
script run, so scripts share a cluster), `{r}`, `{r+N}`, `{r-N}` are revisions relative to
the store revision when the script started (`--rev {r+2}`, `compaction {r+3}`), `{l0}`,
`{l1}`, ... the leases the script's `lease grant` steps granted, in order (hexadecimal).
A step `&CMD` runs CMD in the background from there on (a live watch, a lock holder, a
candidate of an election); `!stop N` stops the script's N-th background step (0-based)
at that point (a holder releases, a leader resigns); the others stop after the last step.
The harness waits for what the next steps need (`!wait`, `!exit`, `!keys`, `!expired`, a
foreground `watch(...)`'s lines), not a fixed time but in one case (see WATCH_S): a loaded
machine is slow.

Normalization sets aside only what legitimately differs between two clusters:

* `cluster_id`, `member_id`, `raft_term` of response headers (`-w json`; `ClusterID`,
  `MemberID`, `RaftTerm` of `-w fields`);
* the member addresses (each becomes EP0, EP1, ... by its position in `--endpoints`),
  `took = ...` timings of `endpoint health`, and the order of its lines (it asks the
  members concurrently and prints them as they answer);
* in etcdctl's client-side log lines on stderr (JSON, "retrying of unary invoker
  failed"): the timestamp `ts` and the `target` (a random client id and the member the
  balancer picked); level, caller, message, attempt and the gRPC error stay;
* lease ids (each cluster picks its own): the ids the script's grants got become L0, L1,
  ... (in hexadecimal lines, and as `ID`/`id`/`lease` numbers in JSON); the session
  leases of `lock` and `elect` (etcdctl grants them itself and names its key NAME/<lease
  in hex>) become S0, S1, ... in the order the steps print their keys (keys in simple
  output and in JSON, `lease` numbers; a lock's command may echo `$ETCD_LOCK_KEY`); the
  `remaining(Ns)` and `"ttl"` of `lease timetolive` (seconds left depend on timing),
  and the order of the ids `lease list` prints (etcd lists them by expiry on its
  leader, unordered elsewhere) and of the keys `lease timetolive --keys` prints (etcd
  lists them from a Go map: in random order);
* for scripts run on a shared cluster, revisions (header `revision`, `create_revision`,
  `mod_revision`, `compact_revision`, `compacted revision N`) are shown relative to the
  revision at the script's start (`r+3`); fresh-cluster scripts compare them as they are.

Everything else (exit status, every other byte of stdout and stderr) must be equal.
"""

from __future__ import annotations

import base64
import difflib
import importlib.util
import json
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from etcd_cluster import BackgroundEtcdctl, Run, _Cluster

# The dengine side of the comparisons is expected to fail only while dengine does not
# serve etcd's API (issue 16: dengine.server.etcd); once that has landed they must pass.
ETCD_API_LANDED = importlib.util.find_spec("dengine.server.etcd") is not None
DENGINE_PENDING = pytest.mark.xfail(not ETCD_API_LANDED,
                                    reason="issue 16: etcd API not landed yet", strict=False)

REV_KEYS = frozenset({"revision", "create_revision", "mod_revision", "compact_revision",
                      "CompactRevision"})
# `etcdctl watch` runs until stopped. A foreground watch step says what it waits for
# (`watch(...)`): a watch the server cancels ends by itself (`ends=True`); any other one is
# stopped once it has printed its `lines` and then WATCH_S passed without more (a late
# extra event still shows; `lines=0`: nothing may arrive within WATCH_S). A step written
# "&watch ..." runs in the background beside the next steps, from the revision after the
# store's at that step (so it misses no write however late it sets up), until WATCH_S after
# the script's last step. Its simple output is then the same however late it set up; a
# watch printing response headers (-w json, fields) is not (set up late, it gets the
# writes meanwhile in one response, under a later header revision; so is an exec'd
# command given ETCD_WATCH_REVISION), and etcdctl shows
# nothing when its watch is set up: the script waits WATCH_START_S after starting one,
# the one wait for a time, since there is nothing to wait for. Background steps are
# waited for by the steps `!wait N K` (until background step N printed K lines), `!exit N`
# (until it ended), `!keys PREFIX N` (until N keys have PREFIX: a lock or election
# contender queued) and `!expired LEASE` (until `lease timetolive` says it expired by its
# TTL); each waits up to WAIT_S, a loaded machine's worst case.
WATCH_S = 2.0
WATCH_START_S = 1.0
WAIT_S = 30.0
HEADER_IDS = frozenset({"cluster_id", "member_id", "raft_term"})
FIELDS_IDS = frozenset({"ClusterID", "MemberID", "RaftTerm"})
FIELDS_REVS = frozenset({"Revision", "CreateRevision", "ModRevision", "CompactRevision"})
_TEMPLATE = re.compile(r"\{r([+-]\d+)?\}")
_FIELDS_LINE = re.compile(r'^"(\w+)" : (\d+)$')
_COMPACTED = re.compile(r"^compacted revision (\d+)$")
_TOOK = re.compile(r"took = \S+")
_GRANTED = re.compile(r"^lease ([0-9a-f]{16}) granted with TTL")
_LEASE_TEMPLATE = re.compile(r"\{l(\d+)\}")
_REMAINING = re.compile(r"remaining\(-?\d+s\)")
_ATTACHED = re.compile(r"attached keys\(\[([^]]*)\]\)")
_SESSION_KEY = re.compile(r"/([0-9a-f]+)$")  # etcdctl's lock/elect key: NAME/<lease hex>
_STOP = re.compile(r"^!stop (\d+)$")
_WAIT = re.compile(r"^!(wait|exit) (\d+)(?: (\d+))?$")
_KEYS = re.compile(r"^!keys (\S+) (\d+)$")
_EXPIRED = re.compile(r"^!expired (\S+)$")
# A watch whose output shows its responses' header revision: printed as JSON or fields, or
# handed to an exec'd command as ETCD_WATCH_REVISION (late, both show the batching).
_HEADERS = re.compile(r"(^| )(-w|--write-out)[ =](json|fields)( |$)|ETCD_WATCH_REVISION")
LEASE_KEYS = frozenset({"ID", "id", "lease"})


@dataclass(frozen=True)
class Step:
    cmd: str
    stdin: str | None = None
    # a foreground watch: stopped after these lines (and WATCH_S of quiet), or it ends
    lines: int | None = None
    ends: bool = False

    def render(self, prefix: str, base: int, leases: list[str] | None = None
               ) -> tuple[list[str], str | None]:
        granted = leases or []

        def fill(text: str) -> str:
            text = _TEMPLATE.sub(lambda m: str(base + int(m.group(1) or 0)), text)
            text = _LEASE_TEMPLATE.sub(
                lambda m: granted[int(m.group(1))] if int(m.group(1)) < len(granted)
                else "ffffffffffffff", text)
            return text.replace("{p}", prefix)

        return shlex.split(fill(self.cmd)), (fill(self.stdin) if self.stdin is not None
                                             else None)


@dataclass(frozen=True)
class Script:
    name: str
    steps: tuple[Step, ...]
    # Compares absolute revisions: run it only on clusters that nothing else touched.
    fresh: bool = False


def script(name: str, *steps: str | tuple[str, str] | Step, fresh: bool = False) -> Script:
    """A Script from command lines, (command line, stdin) pairs and `watch` steps."""
    return Script(name, tuple(s if isinstance(s, Step) else Step(s) if isinstance(s, str)
                              else Step(*s) for s in steps), fresh)


def watch(cmd: str, lines: int = 0, ends: bool = False) -> Step:
    """A foreground `etcdctl watch` step that prints `lines` lines, or ends by itself."""
    return Step(cmd, lines=lines, ends=ends)


def command(args: list[str]) -> str:
    """The etcdctl command of a command line (after global flags such as `--user U`)."""
    it = iter(args)
    for a in it:
        if a in ("--user", "--password"):
            next(it, None)
        elif not a.startswith("-"):
            return a
    return ""


def both(cmd: str) -> list[str]:
    """A read in etcdctl's default (simple) output and in JSON."""
    return [cmd, cmd + " -w json"]


@dataclass
class ScriptRun:
    """What a script did on one cluster: the base revision and each step's raw Run."""

    cluster: str
    endpoints: list[str]
    prefix: str
    base: int
    runs: list[tuple[Step, Run]] = field(default_factory=list)
    rebase: bool = True
    leases: list[str] = field(default_factory=list)  # granted ids, hexadecimal, in order
    sessions: list[str] = field(default_factory=list)  # lock/elect leases, hex as in keys

    def lease_name(self, lease_id: int) -> str | None:
        text = format(lease_id & 0xFFFFFFFFFFFFFFFF, "016x")
        if text in self.leases:
            return f"L{self.leases.index(text)}"
        short = format(lease_id & 0xFFFFFFFFFFFFFFFF, "x")
        return f"S{self.sessions.index(short)}" if short in self.sessions else None

    def session_key(self, key: str) -> str:
        """`key` with a lock/elect session's lease id (its last part) as S0, S1, ..."""
        m = _SESSION_KEY.search(key)
        if m is None or m.group(1) not in self.sessions or not key.startswith(self.prefix):
            return key
        return f"{key[:m.start(1)]}S{self.sessions.index(m.group(1))}"

    def normalized(self) -> list[dict[str, Any]]:
        return [normalize_step(step, run, self) for step, run in self.runs]


def base_revision(cluster: _Cluster, prefix: str) -> int:
    """The store revision now (0 if the cluster does not answer a Range)."""
    run = cluster.etcdctl(["get", prefix, "-w", "json"])
    try:
        return int(json.loads(run.stdout)["header"]["revision"])
    except (ValueError, KeyError, TypeError):
        return 0


SETTLE_S = 5.0  # how long a local read waits for every member to apply what is committed


def _local_read(args: list[str], stdin: str | None) -> bool:
    """A read served from the member's own applied state (serializable): a range with
    `--consistency=s`, or a txn with no op (etcd serves it so too)."""
    line = " ".join(args)
    if "--consistency=s" in line or "--consistency s" in line:
        return True
    if command(args) != "txn" or stdin is None:
        return False
    sections: list[list[str]] = [[]]  # etcdctl's grammar: compares, success, failure,
    for line in stdin.split("\n"):   # each ended by an empty line; the rest unread
        if not line:
            if len(sections) == 3:
                break
            sections.append([])
        else:
            sections[-1].append(line)
    return not any(sections[1:])


def settle(cluster: _Cluster) -> None:
    """Until every member applied what the cluster had committed when asked: a script
    compares answers of a quiescent cluster, and a member may apply a few ms after the
    write was answered (more so on a loaded machine), in etcd as in dengine."""
    deadline = time.monotonic() + SETTLE_S
    target = None
    while time.monotonic() < deadline:
        run = cluster.etcdctl(["endpoint", "status", "-w", "json"])
        try:
            status = [s["Status"] for s in json.loads(run.stdout)]
        except (ValueError, KeyError, TypeError):
            return  # a member down: nothing to wait for
        if target is None:
            target = max(s.get("raftIndex", 0) for s in status)
        if len(status) == len(cluster.endpoints) and all(
                s.get("raftAppliedIndex", 0) >= target for s in status):
            return
        time.sleep(0.01)


def run_script(cluster: _Cluster, s: Script, prefix: str) -> ScriptRun:
    base = base_revision(cluster, prefix)
    out = ScriptRun(cluster.kind, list(cluster.endpoints), prefix, base, rebase=not s.fresh)
    background: list[tuple[int, BackgroundEtcdctl]] = []
    stopped: set[int] = set()
    try:
        for step in s.steps:
            args, stdin = step.render(prefix, base, out.leases)
            if step.cmd.startswith("!"):
                _control(cluster, step, args, background, out, stopped)
                out.runs.append((step, Run(0, "", "")))
                continue
            if args and args[0].startswith("&"):
                args[0] = args[0][1:]
                if args[0] == "watch" and "--rev" not in args:
                    args[1:1] = ["--rev", str(base_revision(cluster, prefix) + 1)]
                background.append((len(out.runs), BackgroundEtcdctl(cluster.endpoints, args)))
                out.runs.append((step, Run(0, "", "")))
                if args[0] == "watch" and _HEADERS.search(" ".join(args)):
                    time.sleep(WATCH_START_S)
                continue
            if command(args) == "watch":
                assert stdin is None and (step.lines is not None or step.ends), \
                    f"say what `{step.cmd}` waits for: watch(cmd, lines=N) or ends=True"
                run = _watch(cluster, args, step)
            else:
                if _local_read(args, stdin):
                    settle(cluster)
                run = cluster.etcdctl(args, stdin)
            out.runs.append((step, run))
            _note_leases(out, args, run)
        if len(stopped) < len(background):
            time.sleep(WATCH_S)  # a late extra event still shows
    finally:
        for n, (i, proc) in enumerate(background):
            if n not in stopped:
                out.runs[i] = (out.runs[i][0], proc.stop())
    _note_sessions(out)
    return out


def _watch(cluster: _Cluster, args: list[str], step: Step) -> Run:
    """A foreground watch: until it ends (`step.ends`), or until its `step.lines` and
    then WATCH_S without more; at most WAIT_S (then stopped: the diff shows it short)."""
    proc = BackgroundEtcdctl(cluster.endpoints, args)
    if step.ends:
        proc.wait_exit(WAIT_S)
    elif proc.wait_lines(step.lines or 0, WAIT_S):
        proc.wait_exit(WATCH_S)
    return proc.stop()


def _control(cluster: _Cluster, step: Step, args: list[str],
             background: list[tuple[int, BackgroundEtcdctl]], out: ScriptRun,
             stopped: set[int]) -> None:
    """`!stop N`, `!wait N K`, `!exit N`, `!keys PREFIX N`, `!expired LEASE` (see
    WATCH_S)."""
    if (m := _STOP.match(step.cmd)) is not None:
        n = int(m.group(1))
        i, proc = background[n]
        out.runs[i] = (out.runs[i][0], proc.stop())
        stopped.add(n)
        return
    if (m := _WAIT.match(step.cmd)) is not None:
        i, proc = background[int(m.group(2))]
        done = (proc.wait_lines(int(m.group(3)), WAIT_S) if m.group(1) == "wait"
                else proc.wait_exit(WAIT_S))
        if not done:
            raise AssertionError(f"{cluster.kind}: `{step.cmd}` not reached within {WAIT_S}s: "
                                 f"{out.runs[i][0].cmd!r} did {proc.stop()}")
        return
    if (m := _KEYS.match(" ".join(args))) is not None:
        want = int(m.group(2))
        _until(cluster, step, ["get", m.group(1), "--prefix", "--keys-only", "-w", "json"],
               lambda run: _json(run.stdout).get("count", 0) == want)
    elif (m := _EXPIRED.match(" ".join(args))) is not None:
        _until(cluster, step, ["lease", "timetolive", m.group(1)],
               lambda run: run.stdout.endswith(" already expired\n"))
    else:
        raise AssertionError(f"unknown harness step {step.cmd!r}")


def _until(cluster: _Cluster, step: Step, args: list[str], done: Callable[[Run], bool]
           ) -> None:
    """`etcdctl ARGS` again until `done` says yes (at most WAIT_S)."""
    deadline = time.monotonic() + WAIT_S
    while not done(run := cluster.etcdctl(args)):
        if time.monotonic() > deadline:
            raise AssertionError(f"{cluster.kind}: `{step.cmd}` not reached within {WAIT_S}s: "
                                 f"{run}")
        time.sleep(0.1)


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _note_sessions(out: ScriptRun) -> None:
    """The session leases of the `lock`/`elect` steps: the hex ending the keys they
    print (the lock or election key, or `ETCD_LOCK_KEY` echoed by a lock's command), in
    step order."""
    for step, run in out.runs:
        if step.cmd.lstrip("&").split(" ", 1)[0] not in ("lock", "elect"):
            continue
        for line in run.stdout.splitlines():
            m = _SESSION_KEY.search(line)
            if line.startswith(out.prefix) and m and m.group(1) not in out.sessions:
                out.sessions.append(m.group(1))


def _note_leases(out: ScriptRun, args: list[str], run: Run) -> None:
    """The lease ids a `lease grant` step printed (simple or JSON), in order."""
    for line in run.stdout.splitlines():
        if (m := _GRANTED.match(line)) is not None:
            out.leases.append(m.group(1))
        elif args[:2] == ["lease", "grant"] and line.startswith("{"):
            try:
                granted = json.loads(line).get("ID")
            except ValueError:
                granted = None
            if isinstance(granted, int) and granted:
                out.leases.append(format(granted & 0xFFFFFFFFFFFFFFFF, "016x"))


# ---- normalization ----

def normalize_step(step: Step, run: Run, ctx: ScriptRun) -> dict[str, Any]:
    return {
        "cmd": step.cmd + (f"  <<< {step.stdin!r}" if step.stdin is not None else ""),
        "rc": run.rc,
        "stdout": normalize_stdout(run.stdout, ctx),
        "stderr": normalize_stderr(run.stderr, ctx),
    }


def _endpoints(text: str, ctx: ScriptRun) -> str:
    for i, ep in enumerate(ctx.endpoints):
        text = text.replace(ep, f"EP{i}")
    return text


def _rev(value: int, ctx: ScriptRun) -> int | str:
    if not ctx.rebase or value <= 0:
        return value
    return f"r{value - ctx.base:+d}"


def normalize_json(value: Any, ctx: ScriptRun, in_header: bool = False) -> Any:
    if isinstance(value, dict):
        # etcdctl prints a lease answer's header fields at the top level
        in_header = in_header or ("raft_term" in value and not {"ID", "id", "leases"}
                                  .isdisjoint(value))
        out: dict[str, Any] = {}
        for k, v in value.items():
            if in_header and k in HEADER_IDS:
                out[k] = "*"
            elif k in REV_KEYS and isinstance(v, int):
                out[k] = _rev(v, ctx)
            elif k in LEASE_KEYS and isinstance(v, int) and ctx.lease_name(v) is not None:
                out[k] = ctx.lease_name(v)
            elif (k == "took" and isinstance(v, str)) or (
                    k == "ttl" and isinstance(v, int) and v > 0 and "granted-ttl" in value):
                out[k] = "*"  # timings; a lease's seconds left
            elif k == "keys" and isinstance(v, list) and "granted-ttl" in value:
                out[k] = sorted(v, key=str)  # a lease's keys: in etcd's (Go) map order
            elif k == "endpoint" and isinstance(v, str):
                out[k] = _endpoints(v, ctx)
            elif k == "key" and isinstance(v, str) and ctx.sessions:
                out[k] = _json_key(v, ctx)
            else:
                out[k] = normalize_json(v, ctx, in_header=(k in ("header", "Header")))
        return out
    if isinstance(value, list):
        items = [normalize_json(v, ctx) for v in value]
        if items and all(isinstance(i, dict) and "endpoint" in i for i in items):
            items.sort(key=lambda i: str(i["endpoint"]))  # endpoint health/status order
        elif items and all(isinstance(i, dict) and set(i) == {"id"} for i in items):
            items.sort(key=lambda i: str(i["id"]))  # lease list order
        return items
    return value


def _json_key(value: str, ctx: ScriptRun) -> str:
    """A base64 key of a JSON answer; a session's key as its normalized text."""
    try:
        key = base64.b64decode(value, validate=True).decode()
    except ValueError:
        return value
    named = ctx.session_key(key)
    return value if named == key else f"key {named}"


def normalize_stdout(text: str, ctx: ScriptRun) -> list[Any]:
    """Line by line: etcdctl prints a JSON document on one line (after `txn -i`'s
    prompts), simple and fields output as lines."""
    lines: list[Any] = []
    for line in text.split("\n"):
        if line[:1] in ("{", "["):
            try:
                lines.append(normalize_json(json.loads(line), ctx))
                continue
            except ValueError:
                pass
        line = _endpoints(line, ctx)
        for i, lease in enumerate(ctx.leases):
            line = line.replace(lease, f"L{i}")
        line = _REMAINING.sub("remaining(*)", line)
        line = _ATTACHED.sub(lambda m: f"attached keys([{' '.join(sorted(m[1].split()))}])",
                             line)
        line = ctx.session_key(line)
        m = _FIELDS_LINE.match(line)
        if m and m.group(1) in FIELDS_IDS:
            line = f'"{m.group(1)}" : *'
        elif m and m.group(1) in FIELDS_REVS:
            line = f'"{m.group(1)}" : {_rev(int(m.group(2)), ctx)}'
        elif (m := _COMPACTED.match(line)) is not None:
            line = f"compacted revision {_rev(int(m.group(1)), ctx)}"
        lines.append(_TOOK.sub("took = *", line))
    if lines and isinstance(lines[0], str) and lines[0].startswith("found ") and \
            lines[0].endswith(" leases"):
        lines[1:] = sorted(lines[1:], key=str)  # `lease list`: the order is etcd's whim
    return lines


def normalize_stderr(text: str, ctx: ScriptRun) -> list[Any]:
    out: list[Any] = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                log = json.loads(line)
            except ValueError:
                log = None
            if isinstance(log, dict):
                log.pop("ts", None)
                if "target" in log:
                    log["target"] = "*"
                out.append(log)
                continue
        out.append(_TOOK.sub("took = *", _endpoints(line, ctx)))
    if any(isinstance(x, str) and (" is healthy" in x or " is unhealthy" in x) for x in out):
        # `endpoint health` prints each member's line as it answers.
        out.sort(key=lambda x: json.dumps(x, sort_keys=True))
    return out


# ---- comparison ----

def differences(expected: ScriptRun, actual: ScriptRun) -> str:
    """'' when the normalized runs are equal, else a readable diff of the first steps that
    differ (expected = the reference etcd cluster)."""
    a, b = expected.normalized(), actual.normalized()
    if a == b:
        return ""
    report = [f"{actual.cluster} differs from {expected.cluster} (prefix {actual.prefix!r}, "
              f"base revision {expected.base} vs {actual.base}):"]
    shown = 0
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x == y:
            continue
        left = json.dumps(x, indent=1, sort_keys=True).splitlines()
        right = json.dumps(y, indent=1, sort_keys=True).splitlines()
        report.append(f"step {i}: {x['cmd']}")
        report.extend(difflib.unified_diff(left, right, expected.cluster, actual.cluster,
                                           lineterm="", n=2))
        shown += 1
        if shown == 3:
            report.append("... (later steps not shown)")
            break
    return "\n".join(report)

"""One PySyncObj node for bench/compare.py, driven over stdin/stdout (one JSON per line).

    python bench/pysyncobj_node.py SELF_ADDR JOURNAL_FILE BATCH(0|1) PARTNER_ADDR...

PySyncObj is a library: an application embeds it and calls its replicated methods in its
own process. So the load of a run is generated here, in the leader's process, with the
same key/value sizes and statistics code (dengine.bench.load) as for the other systems.

Commands (stdin) -> answers (stdout):
  {"cmd": "status"}                     -> {"leader": bool, "ready": bool, "has_quorum": bool}
  {"cmd": "preload", "spec": {...}}     -> {"ok": true}
  {"cmd": "run", "spec": {...}, "warmup": s} -> LoadResult.to_dict()
  {"cmd": "quit"}                       -> exits

Writes are replicated method calls completed by callback (PySyncObj's asynchronous API),
`concurrency` of them in flight. PySyncObj has no linearizable read: a read is a plain
lookup in the leader's local dict (it cannot be in flight, so concurrency does not apply).
Its journal is an mmap'ed file that is never fsynced or msynced per write.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

from dengine.bench.load import LoadResult, LoadSpec, make_key

NO_ANSWER_TIMEOUT_S = 10.0


class KV(SyncObj):
    def __init__(self, self_addr: str, partners: list[str], conf: SyncObjConf) -> None:
        super().__init__(self_addr, partners, conf)
        self.data: dict[bytes, bytes] = {}

    @replicated
    def set(self, key: bytes, value: bytes) -> None:
        self.data[key] = value


def run_writes(kv: KV, spec: LoadSpec, keys: list[bytes], value: bytes) -> LoadResult:
    """Closed loop: `concurrency` replicated calls in flight, the next issued on each callback."""
    result = LoadResult(spec)
    latencies = result.latencies
    lock = threading.Lock()
    done = threading.Event()
    rng = random.Random(spec.seed)
    state = {"started": 0, "in_flight": 0, "answered": 0, "closed": False}
    began = time.perf_counter()
    deadline = began + spec.duration if spec.duration else None

    def issue() -> None:
        with lock:
            if state["closed"]:
                return
            n = state["started"]
            now = time.perf_counter()
            if (spec.total is not None and n >= spec.total) or (
                deadline is not None and now >= deadline
            ):
                state["in_flight"] -= 1
                if state["in_flight"] == 0:
                    done.set()
                return
            state["started"] = n + 1
            key = keys[n % len(keys)] if spec.sequential_keys else keys[rng.randrange(len(keys))]

        def callback(res: Any, err: int, start: float = now) -> None:
            with lock:
                if state["closed"]:
                    return
                state["answered"] += 1
                if err == FAIL_REASON.SUCCESS:
                    latencies.append(time.perf_counter() - start)
                else:
                    result.errors += 1
                    kind = f"FAIL_REASON_{err}"
                    result.error_kinds[kind] = result.error_kinds.get(kind, 0) + 1
            issue()

        kv.set(key, value, callback=callback)

    with lock:
        state["in_flight"] = spec.concurrency
    for _ in range(spec.concurrency):
        issue()
    # A command forwarded to a leader whose answer got lost never calls back (until the
    # next leader change): give up on the stragglers after a while without any answer.
    answered, last_progress = 0, time.monotonic()
    while not done.wait(0.5):
        with lock:
            if state["answered"] != answered:
                answered, last_progress = state["answered"], time.monotonic()
            elif time.monotonic() - last_progress > NO_ANSWER_TIMEOUT_S:
                state["closed"] = True
                result.errors += state["in_flight"]
                result.error_kinds["NO_ANSWER"] = state["in_flight"]
                break
    result.elapsed = time.perf_counter() - began
    result.ops = len(latencies)
    return result


def run_local_reads(kv: KV, spec: LoadSpec, keys: list[bytes]) -> LoadResult:
    """Plain reads of the leader's local dict, one after the other."""
    result = LoadResult(spec)
    latencies = result.latencies
    rng = random.Random(spec.seed)
    data = kv.data
    perf_counter = time.perf_counter
    began = perf_counter()
    deadline = began + spec.duration if spec.duration else None
    n = 0
    while True:
        start = perf_counter()
        if (spec.total is not None and n >= spec.total) or (
            deadline is not None and start >= deadline
        ):
            break
        key = keys[n % len(keys)] if spec.sequential_keys else keys[rng.randrange(len(keys))]
        data.get(key)
        latencies.append(perf_counter() - start)
        n += 1
    result.elapsed = perf_counter() - began
    result.ops = len(latencies)
    return result


def run(kv: KV, spec: LoadSpec) -> LoadResult:
    keys = [make_key(n, spec.key_size) for n in range(spec.key_space)]
    if spec.workload == "put":
        value = random.Random(spec.seed).randbytes(spec.value_size)
        return run_writes(kv, spec, keys, value)
    return run_local_reads(kv, spec, keys)


def main() -> None:
    self_addr, journal, batch, *partners = sys.argv[1:]
    conf = SyncObjConf(journalFile=journal, appendEntriesUseBatch=batch == "1",
                       dynamicMembershipChange=False)
    kv = KV(self_addr, partners, conf)
    for line in sys.stdin:
        request = json.loads(line)
        cmd = request["cmd"]
        if cmd == "quit":
            break
        if cmd == "status":
            status = kv.getStatus()
            answer: dict[str, Any] = {"leader": kv._isLeader(), "ready": kv.isReady(),
                                      "has_quorum": bool(status["has_quorum"])}
        elif cmd == "preload":
            spec = LoadSpec(**request["spec"])
            value = b"v" * spec.value_size
            keys = [make_key(n, spec.key_size) for n in range(spec.key_space)]
            preload = LoadSpec(workload="put", total=spec.key_space, concurrency=256,
                               key_size=spec.key_size, key_space=spec.key_space,
                               sequential_keys=True)
            run_writes(kv, preload, keys, value)
            answer = {"ok": len(kv.data) >= spec.key_space}
        elif cmd == "run":
            spec = LoadSpec(**request["spec"])
            warmup = float(request.get("warmup", 0))
            if warmup > 0:
                run(kv, LoadSpec(**{**request["spec"], "total": None, "duration": warmup}))
            answer = run(kv, spec).to_dict()
        else:
            answer = {"error": f"unknown command {cmd!r}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    kv.destroy()


if __name__ == "__main__":
    main()

"""`dengine bench restart`: how long a node holding N keys takes to serve again, and its memory.

A one-node Engine in a temp dir is loaded with `keys` distinct keys (batched writes),
stopped cleanly, then started again in a fresh Python process, which reports the time
from `Engine.start` to the first answered linearizable read, and its resident memory
after that minus its resident memory before the start (the interpreter and imports
excluded). Raw size = keys x (key size + value size).

Loading a million keys takes minutes, so `data_dir` keeps the loaded node: the first run
loads it there and leaves a marker (`bench-restart.json`, written once the load is
complete); a later run with the same key count and sizes skips the load. The probe then
restarts a copy of it, so every run starts from the same files.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from dengine.bench.load import make_key
from dengine.bench.runner import NoProgress, Progress
from dengine.errors import InvalidRequest, Unavailable

WRITE_BATCH = 1000
WRITERS = 8  # batches in flight, so that group commit joins them
PROBE_TIMEOUT_S = 600.0
MARKER = "bench-restart.json"  # in a kept data dir: what was loaded into it

# Runs in a fresh interpreter: start the node on the loaded dir, read one key, report.
_PROBE = """
import asyncio, json, sys, time
from dengine.node.engine import Engine

def rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0

async def main(data_dir, key):
    before = rss_bytes()
    began = time.perf_counter()
    engine = await Engine.start(data_dir, node_id=1)
    try:
        await engine.wait_ready(timeout=600)
        value = await engine.get(key.encode(), timeout=600)
        serving = time.perf_counter() - began
        rss = rss_bytes()
        keys = engine.status().applied_index
    finally:
        await engine.stop()
    print(json.dumps({"serving_s": serving, "rss_bytes": rss - before,
                      "found": value is not None, "applied_index": keys}))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@dataclass
class RestartResult:
    keys: int
    key_size: int
    value_size: int
    load_s: float
    serving_s: float
    rss_bytes: int

    @property
    def raw_bytes(self) -> int:
        return self.keys * (self.key_size + self.value_size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "keys": self.keys, "key_size": self.key_size, "value_size": self.value_size,
            "load_s": round(self.load_s, 2), "restart_to_serving_s": round(self.serving_s, 3),
            "raw_bytes": self.raw_bytes, "rss_bytes": self.rss_bytes,
            "rss_over_raw": round(self.rss_bytes / self.raw_bytes, 2) if self.raw_bytes else 0,
        }


def _loaded(data_dir: str, keys: int, key_size: int, value_size: int) -> float | None:
    """The load time recorded in a kept data dir holding exactly these keys, else None."""
    try:
        with open(os.path.join(data_dir, MARKER)) as f:
            marker = json.load(f)
    except FileNotFoundError:
        if os.path.isdir(data_dir) and os.listdir(data_dir):
            raise InvalidRequest(
                f"{data_dir} is neither empty nor a data dir kept by `dengine bench restart`"
            ) from None
        return None
    if (marker["keys"], marker["key_size"], marker["value_size"]) != (keys, key_size, value_size):
        raise InvalidRequest(
            f"{data_dir} holds {marker['keys']:,} keys of {marker['key_size']}+"
            f"{marker['value_size']} bytes, not {keys:,} of {key_size}+{value_size}"
        )
    return float(marker["load_s"])


async def _load(
    workdir: str, keys: int, key_size: int, value_size: int, progress: Progress
) -> float:
    """Write `keys` keys into a one-node engine at `workdir`, stop it; the seconds taken."""
    from dengine.node.engine import Engine
    from dengine.proto import WriteCommand

    value = b"v" * value_size
    progress.phase(f"writing {keys:,} keys", keys)
    began = time.perf_counter()
    engine = await Engine.start(workdir, node_id=1)
    starts = iter(range(0, keys, WRITE_BATCH))
    written = 0

    async def writer() -> None:
        nonlocal written
        for start in starts:
            commands = []
            for n in range(start, min(keys, start + WRITE_BATCH)):
                cmd = WriteCommand()
                cmd.insert.key = make_key(n, key_size)
                cmd.insert.value = value
                commands.append(cmd)
            await engine.write(commands, timeout=60.0)
            written += len(commands)
            progress.update(written, time.perf_counter() - began)

    try:
        await engine.wait_ready()
        await asyncio.gather(*(writer() for _ in range(WRITERS)))
    finally:
        await engine.stop()
    return time.perf_counter() - began


async def run_restart(
    keys: int, *, key_size: int = 8, value_size: int = 256,
    progress: Progress | None = None, base_dir: str | None = None,
    data_dir: str | None = None,
) -> RestartResult:
    """Load `keys` keys into a one-node engine, then time a restart in a fresh process.

    With `data_dir`, the loaded node is kept there and reused by later runs (see above).
    """
    if keys <= 0:
        raise InvalidRequest(f"keys must be positive, got {keys}")
    if key_size < len(str(keys - 1)):
        raise InvalidRequest(f"key size {key_size} is too small for {keys} distinct keys")
    progress = progress or NoProgress()
    workdir = tempfile.mkdtemp(prefix="dengine-bench-restart-", dir=base_dir)
    try:
        if data_dir is None:
            load_s = await _load(workdir, keys, key_size, value_size, progress)
        else:
            kept = _loaded(data_dir, keys, key_size, value_size)
            if kept is None:
                os.makedirs(data_dir, exist_ok=True)
                kept = await _load(data_dir, keys, key_size, value_size, progress)
                with open(os.path.join(data_dir, MARKER), "w") as f:
                    json.dump({"keys": keys, "key_size": key_size, "value_size": value_size,
                               "load_s": kept}, f)
            load_s = kept
            progress.phase("copying the kept data dir", None)
            os.rmdir(workdir)
            shutil.copytree(data_dir, workdir, ignore=shutil.ignore_patterns(MARKER))
        progress.phase("restarting in a fresh process", None)
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE, workdir, make_key(keys - 1, key_size).decode()],
            capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False,
        )
        if probe.returncode != 0:
            raise Unavailable(f"the restarted node failed:\n{probe.stderr[-3000:]}")
        report = json.loads(probe.stdout.strip().splitlines()[-1])
        if not report["found"]:
            raise Unavailable("the restarted node does not have the last key written")
        return RestartResult(keys, key_size, value_size, load_s, report["serving_s"],
                             report["rss_bytes"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

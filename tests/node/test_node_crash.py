"""kill -9 of a node process mid-write: every acknowledged write survives the restart."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

from node_helpers import run

from dengine import Engine

HERE = Path(__file__).parent
FAST = {"tick_ms": 5, "election_timeout_ms": 50, "heartbeat_interval_ms": 15,
        "clock_drift_ms": 10}


def write_until_killed(data_dir: Path, run_no: int, acks_before_kill: int) -> list[bytes]:
    """Run the writer child, SIGKILL it after `acks_before_kill` acks; return the acked keys."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "crash_writer.py"), str(data_dir), str(run_no)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    acked: list[bytes] = []
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        while len(acked) < acks_before_kill:
            line = proc.stdout.readline()
            assert line, "writer died"
            acked.append(line.strip())
        proc.send_signal(signal.SIGKILL)
        # acks already printed before the kill count too
        rest = proc.stdout.read()
        acked += [k for k in rest.split(b"\n") if k]
    finally:
        proc.kill()
        proc.wait()
    return acked


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    rng = random.Random(7)
    acked: list[bytes] = []
    for run_no in range(6):
        acked += write_until_killed(tmp_path, run_no, rng.randint(20, 600))

    async def check() -> None:
        async with await Engine.start(str(tmp_path), **FAST) as engine:
            await engine.wait_ready(timeout=10)
            values = await engine.get_many(acked)
            missing = [k for k, v in zip(acked, values, strict=True) if v != k]
            assert not missing, f"{len(missing)} acknowledged writes lost: {missing[:5]}"

    run(check())

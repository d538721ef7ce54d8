"""The state machine's WAL is not fsynced per apply; the Raft log covers it.

A writer child is killed with SIGKILL, then every state machine WAL is cut back to the
bytes that had been fdatasynced, plus a few garbage bytes (what a power cut may leave).
The restarted node must hold every acknowledged write: it re-applies the log above the
state machine's durable point, which is possible only if the log was never compacted
above that point (checked by the "broken" variant, which must lose or refuse).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from node_helpers import run

from dengine import Engine
from dengine.errors import DengineError

HERE = Path(__file__).parent
FAST = {"tick_ms": 5, "election_timeout_ms": 50, "heartbeat_interval_ms": 15,
        "clock_drift_ms": 10, "snapshot_threshold_entries": 300}


def write_until_killed(data_dir: Path, run_no: int, acks: int, broken: bool) -> list[bytes]:
    args = [sys.executable, str(HERE / "lazy_sm_writer.py"), str(data_dir), str(run_no)]
    proc = subprocess.Popen(
        args + (["broken"] if broken else []), stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    acked: list[bytes] = []
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        while len(acked) < acks:
            line = proc.stdout.readline()
            assert line, "writer died"
            acked.append(line.strip())
        proc.send_signal(signal.SIGKILL)
        acked += [k for k in proc.stdout.read().split(b"\n") if k]
    finally:
        proc.kill()
        proc.wait()
    return acked


def cut_to_synced(data_dir: Path, rng: random.Random) -> int:
    """Every state machine WAL keeps what was synced, then a torn tail of garbage;
    returns how many written bytes were cut."""
    journal = Path(f"{data_dir}.synced")
    synced: dict[str, int] = {}
    for line in journal.read_text().splitlines():
        path, size = line.rsplit(" ", 1)
        synced[path] = int(size)
    journal.unlink()
    cut = 0
    for path, size in synced.items():
        if not os.path.exists(path) or os.path.getsize(path) <= size:
            continue
        with open(path, "r+b") as f:
            cut += len(f.read().rstrip(b"\0")) - size
            f.truncate(size)
            f.seek(size)
            f.write(rng.randbytes(rng.randint(1, 64)))
    return cut


async def missing_after_restart(data_dir: Path, acked: list[bytes]) -> tuple[list[bytes], int]:
    """The acknowledged keys a restarted node lacks, and the first index of its log."""
    async with await Engine.start(str(data_dir), **FAST) as engine:
        await engine.wait_ready(timeout=10)
        values = await engine.get_many(acked)
        first_index = engine.status().first_log_index
    return [k for k, v in zip(acked, values, strict=True) if v != k], first_index


def test_acknowledged_writes_survive_a_cut_of_the_unsynced_state_machine(tmp_path: Path):
    data_dir = tmp_path / "n"
    rng = random.Random(11)
    acked: list[bytes] = []
    cut = 0
    for run_no in range(3):
        acked += write_until_killed(data_dir, run_no, rng.randint(1500, 2500), broken=False)
        cut += cut_to_synced(data_dir, rng)
    missing, first_index = run(missing_after_restart(data_dir, acked))
    assert not missing, f"{len(missing)} acknowledged writes lost: {missing[:5]}"
    assert cut > 0 and first_index > 1  # the test did cut applied data from a compacted node


def test_compacting_above_the_durable_point_is_caught(tmp_path: Path):
    """The teeth: a node that compacts the log past the synced state machine loses data
    or refuses to start; the check above would notice."""
    data_dir = tmp_path / "n"
    acked = write_until_killed(data_dir, 0, 2000, broken=True)
    cut_to_synced(data_dir, random.Random(3))
    with pytest.raises((DengineError, AssertionError)):
        missing, _ = run(missing_after_restart(data_dir, acked))
        assert not missing

"""Real processes killed with SIGKILL at random points; every acknowledged step must survive."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from crash_writer import KEYS, make_entry

from dengine.raft import LogCompacted
from dengine.storage import FileRaftLog, FileStateMachine

WRITER = Path(__file__).with_name("crash_writer.py")
KILLS = 50


def run_and_kill(directory: Path, seed: int, delay: float) -> list[list[str]]:
    """Start the writer, let it run `delay` seconds after its first ack, SIGKILL it."""
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(directory), str(seed)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    if not first:
        raise AssertionError(f"writer failed: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    lines = [first.decode(), *out.decode().splitlines(keepends=True)]
    # A line cut by the kill (no newline) was never acknowledged; blank lines carry nothing.
    return [line.split() for line in lines if line.endswith("\n") and line.strip()]


def verify(directory: Path, acks: list[list[str]], hard_term: int) -> int:
    log = FileRaftLog(directory / "raft")
    sm = FileStateMachine(directory / "sm")
    try:
        hs = log.hard_state()
        assert hs.term >= hard_term
        first, last = log.first_index(), log.last_index()
        entries = log.entries(first, last + 1)
        for entry in entries:  # nothing appears that was not written
            expected = make_entry(entry.index, entry.term)
            assert entry.SerializeToString() == expected.SerializeToString()
        terms = [e.term for e in entries]
        assert terms == sorted(terms) and all(t <= hs.term for t in terms)

        acked_last = acked_term = None
        pending_truncate = None
        acked_applied = 0
        for ack in acks:
            if ack[0] == "L":
                acked_last, acked_term, pending_truncate = int(ack[1]), int(ack[2]), None
            elif ack[0] == "T":
                pending_truncate = int(ack[1])
            elif ack[0] == "S":
                acked_applied = int(ack[1])
        if acked_last is not None:
            if pending_truncate is None:
                assert last >= acked_last
                with contextlib.suppress(LogCompacted):
                    assert log.term(acked_last) == acked_term
            else:
                assert last >= min(acked_last, pending_truncate - 1)

        applied = sm.last_applied().index
        assert applied >= acked_applied
        assert last >= applied  # applied entries were durable in the log first
        for k in range(KEYS):  # each key holds the value of the last entry that wrote it
            writers = [i for i in range(k, applied + 1, KEYS) if i > 0]
            value = sm.get(b"k%d" % k)
            if not writers:
                assert value is None
                continue
            assert value is not None and value.startswith(b"v%d-" % writers[-1])
            if writers[-1] >= first:
                assert value == b"v%d-%d" % (writers[-1], log.term(writers[-1])) + b"." * (
                    writers[-1] % 200)
        return applied
    finally:
        log.close()
        sm.close()


def test_kill_minus_nine_keeps_every_acknowledged_write(tmp_path):
    rng = random.Random(int(os.environ.get("DENGINE_CRASH_SEED", "12345")))
    hard_term = 0
    progress = 0
    for n in range(KILLS):
        acks = run_and_kill(tmp_path, rng.randrange(2**32), rng.uniform(0.0, 0.08))
        hard_term = max([hard_term, *(int(a[1]) for a in acks if a[0] == "H")])
        try:
            progress = verify(tmp_path, acks, hard_term)
        except AssertionError as e:
            raise AssertionError(f"after kill {n + 1} (acks: {acks[-5:]})") from e
    assert progress > 0

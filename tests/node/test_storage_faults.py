"""Storage faults at start: a node recovers what it safely can and refuses the rest with
one clear error (the same verdict `dengine check` gives)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from node_helpers import run

from dengine import Engine
from dengine.errors import CorruptionError, StorageError
from dengine.storage.inspect import check_data_dir
from dengine.storage.records import MAGIC_SEGMENT, scan

FAST = {"tick_ms": 5, "election_timeout_ms": 50, "heartbeat_interval_ms": 15,
        "clock_drift_ms": 10}


async def fill(data_dir: Path, n: int) -> None:
    async with await Engine.start(str(data_dir), **FAST) as engine:
        await engine.wait_ready(timeout=5)
        for i in range(n):
            await engine.put(b"k%d" % i, b"v%d" % i)


def last_segment(data_dir: Path) -> Path:
    return sorted((data_dir / "raft").glob("seg-*"))[-1]


@pytest.mark.parametrize("fault", ["last record flipped", "segment cut in half"])
def test_state_machine_ahead_of_a_cut_log_starts_on_every_restart(tmp_path: Path, fault) -> None:
    """Cutting the log's tail as torn left the state machine ahead of the log, and the node
    refused to start on every restart; its applied point is committed: the log restarts
    after it, and every acknowledged write is still there."""
    async def main() -> None:
        await fill(tmp_path, 30)
        segment = last_segment(tmp_path)
        data = segment.read_bytes()
        end = scan(data, str(segment), MAGIC_SEGMENT).valid_end
        if fault == "last record flipped":
            segment.write_bytes(data[: end - 1] + bytes([data[end - 1] ^ 0x40]) + data[end:])
        else:
            segment.write_bytes(data[: end // 2])
        assert check_data_dir(str(tmp_path)).starts
        for _ in range(2):  # and again: the log and the state machine are in step now
            async with await Engine.start(str(tmp_path), **FAST) as engine:
                await engine.wait_ready(timeout=5)
                assert await engine.get_many([b"k%d" % i for i in range(30)]) == [
                    b"v%d" % i for i in range(30)]
                await engine.put(b"after", b"restart")
        assert check_data_dir(str(tmp_path)).starts

    run(main())


def test_damaged_hard_state_refuses_to_start(tmp_path: Path) -> None:
    run(fill(tmp_path, 3))
    path = tmp_path / "raft" / "hardstate"
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0x01]))
    with pytest.raises(CorruptionError, match=r"hardstate.*not a torn write"):
        run(Engine.start(str(tmp_path), **FAST))
    result = check_data_dir(str(tmp_path))
    assert not result.starts and result.error is not None and "hardstate" in result.error


@pytest.mark.skipif(not hasattr(os, "setuid"), reason="POSIX only")
@pytest.mark.parametrize("state", ["read-only", "read-only, fresh"])
def test_read_only_data_dir_is_one_line_error(state: str) -> None:
    """As a user who may not write the data dir (root writes anywhere: the child process
    drops to nobody when run as root, after its imports: the interpreter's files may not
    be readable by nobody)."""
    with tempfile.TemporaryDirectory() as top:  # pytest's tmp_path is not open to nobody
        os.chmod(top, 0o755)
        _read_only_data_dir(Path(top) / "data", state)


def _read_only_data_dir(data_dir: Path, state: str) -> None:
    if state == "read-only":
        run(fill(data_dir, 3))
    else:
        data_dir.mkdir()
    for path in [data_dir, *data_dir.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    code = (
        "import asyncio, os, sys\n"
        "from dengine import Engine\n"
        "from dengine.errors import DengineError\n"
        "import dengine.node.node, dengine.storage.recovery, dengine.node.transport\n"
        "if os.getuid() == 0: os.setgid(65534); os.setuid(65534)\n"
        "try:\n"
        f"    asyncio.run(Engine.start({str(data_dir)!r}, listen_peer='127.0.0.1:1'))\n"
        "except DengineError as e:\n"
        "    print(f'{e.code}: {e.message}'); sys.exit(3)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout.startswith("STORAGE: ") and "Permission denied" in result.stdout
    assert ("node.json" if state.endswith("fresh") else "raft") in result.stdout
    assert len(result.stdout.strip().splitlines()) == 1


def test_missing_data_dir_that_cannot_be_created_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(StorageError, match="cannot create data dir"):
        run(Engine.start(str(tmp_path / "file" / "data"), **FAST))

"""A fatal storage error (a full disk) never leaves a zombie: the node gives up leadership
at once and closes its peer connections, its calls get a clear StorageError, the others
elect a leader, `dengine serve` exits with the error, and a restart with room loses nothing.
"""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Any

import pytest
from node_helpers import Cluster, free_port, run, until

from dengine.client import Client
from dengine.config import NodeConfig
from dengine.errors import DengineError, StorageError, Timeout, Unavailable
from dengine.server.process import serve
from dengine.storage import FileRaftLog

FAST = {"tick_ms": 5, "election_timeout_ms": 100, "heartbeat_interval_ms": 20,
        "clock_drift_ms": 20}


def disk_full(*_: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device", "seg-...")


def test_a_leader_whose_disk_fills_steps_down_and_a_restart_loses_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        nodes = Cluster(tmp_path, 3)
        await nodes.start_all()
        try:
            leader = await nodes.leader()
            await leader.put(b"before", b"1")
            old = leader.node_id
            leader._node._log.append = disk_full  # type: ignore[attr-defined]
            with pytest.raises((StorageError, Timeout, Unavailable)):
                await leader.put(b"during", b"x", timeout=2)
            failure = await asyncio.wait_for(leader.wait_failure(), 5)
            assert isinstance(failure, OSError) and failure.errno == errno.ENOSPC
            assert not leader.is_leader and leader.leader_id == 0
            assert leader.status().role != "leader"
            with pytest.raises(StorageError, match="No space left on device"):
                await leader.put(b"k", b"v")
            await nodes.stop(old)
            new = await nodes.leader()
            assert new.node_id != old
            await new.put(b"after", b"2")
            again = await nodes.start(old)  # the disk has room again
            await until(lambda: again.leader_id == new.node_id, 10)
            await new.put(b"last", b"3")

            async def caught_up() -> bool:
                got = await again.get_many([b"before", b"after", b"last"], "eventual")
                return got == [b"1", b"2", b"3"]
            for _ in range(200):
                if await caught_up():
                    break
                await asyncio.sleep(0.02)
            assert await caught_up()
        finally:
            await nodes.stop_all()

    run(main())


def test_serve_exits_with_the_storage_error(tmp_path: Path, monkeypatch) -> None:
    """`dengine serve` ended its node but kept answering 'node 1 failed' (and claiming to
    lead); now it exits with the error (main prints it on one line, exit status 1)."""
    config = NodeConfig(data_dir=str(tmp_path), listen_client=f"127.0.0.1:{free_port()}",
                        listen_peer=f"127.0.0.1:{free_port()}", listen_client_native="",
                        **FAST)  # type: ignore[arg-type]

    async def main() -> None:
        server = asyncio.create_task(serve(config, asyncio.Event()))
        async with Client(config.listen_client, timeout=5) as client:
            for _ in range(200):
                try:
                    await client.put(b"a", b"1")
                    break
                except DengineError:
                    await asyncio.sleep(0.05)
            monkeypatch.setattr(FileRaftLog, "append", disk_full)
            with pytest.raises(DengineError):
                await client.put(b"b", b"2", timeout=2)
        with pytest.raises(StorageError, match="No space left on device"):
            await asyncio.wait_for(server, 20)

    run(main())

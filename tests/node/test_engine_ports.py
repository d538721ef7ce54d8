"""The embedded Engine of a one-node app binds no port unless asked (issue 18 item 7)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from node_helpers import FAST, free_port, run

from dengine import Engine
from dengine.config import NodeConfig
from dengine.errors import ConfigError


def test_lone_engine_listens_on_no_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bound: list[Any] = []
    real = asyncio.start_server

    async def recording(*args: Any, **kwargs: Any) -> Any:
        bound.append(args[1:3])
        return await real(*args, **kwargs)

    monkeypatch.setattr(asyncio, "start_server", recording)

    async def main() -> None:
        # two apps side by side, as two processes would be: neither binds anything
        async with await Engine.start(str(tmp_path / "a"), **FAST) as a, \
                await Engine.start(str(tmp_path / "b"), **FAST) as b:
            await a.wait_ready(timeout=5)
            await b.wait_ready(timeout=5)
            await a.put(b"k", b"v")
            assert await a.get(b"k") == b"v"
            assert a.config.listen_peer == ""
        assert bound == []
        # asked for a peer listener: it binds it
        port = free_port()
        async with await Engine.start(str(tmp_path / "c"), listen_peer=f"127.0.0.1:{port}",
                                      **FAST) as c:
            await c.wait_ready(timeout=5)
        assert bound == [("127.0.0.1", port)]

    run(main())


def test_no_peer_listener_needs_no_peers() -> None:
    NodeConfig(listen_peer="").validate()
    with pytest.raises(ConfigError, match="listen_peer"):
        NodeConfig(listen_peer="", peers={2: "127.0.0.1:9182"}).validate()

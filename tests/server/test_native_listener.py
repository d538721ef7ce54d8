"""`listen_client_native`: its default, turning it off, bad values, a taken port."""

from __future__ import annotations

import asyncio
import socket

import pytest

from dengine.cli.server_cmds import serve_config
from dengine.config import NodeConfig
from dengine.errors import ConfigError
from dengine.server import ClientService, NativeServer


def test_default_is_listen_clients_host_on_a_fixed_port() -> None:
    """The same port at every start (it was a free one chosen at start: a restarted node
    announced a new one): the client port + 200."""
    assert NodeConfig().native_listen_address == "127.0.0.1:9281"
    assert NodeConfig(listen_client="[::1]:7000").native_listen_address == "[::1]:7200"
    assert NodeConfig(listen_client_native="127.0.0.1:0").native_listen_address == (
        "127.0.0.1:0")
    with pytest.raises(ConfigError, match="65535|not a port"):
        _ = NodeConfig(listen_client="127.0.0.1:65500").native_listen_address
    assert NodeConfig(listen_client_native="").native_listen_address == ""
    config = serve_config(None, [], {"listen_client_native": "10.0.0.1:7000"})
    assert config.native_listen_address == "10.0.0.1:7000"


@pytest.mark.parametrize("value", ["nohost", "127.0.0.1:99999", "auto:x"])
def test_bad_address_is_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        serve_config(None, [], {"listen_client_native": value})


def test_binds_a_free_port_and_reports_it_and_a_taken_port_is_a_config_error() -> None:
    async def main() -> None:
        server = NativeServer(ClientService(object(), NodeConfig()), 1024)  # type: ignore[arg-type]
        address = await server.start("127.0.0.1:0")
        try:
            host, _, port = address.rpartition(":")
            assert host == "127.0.0.1" and int(port) > 0
            with socket.create_connection((host, int(port)), timeout=5):
                pass
            other = NativeServer(ClientService(object(), NodeConfig()), 1024)  # type: ignore[arg-type]
            with pytest.raises(ConfigError, match=f"cannot listen for native clients on "
                                                  f"{address}"):
                await other.start(address)
        finally:
            await server.stop(0)

    asyncio.run(main())

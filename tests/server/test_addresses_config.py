"""Listen and advertise settings under etcd's names and URL forms (issue 18 item 6)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from dengine.cli.server_cmds import serve, serve_config
from dengine.config import NodeConfig
from dengine.errors import ConfigError
from dengine.server.logs import JsonFormatter


def test_etcd_flag_names_and_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[NodeConfig] = []
    monkeypatch.setattr("dengine.server.run_server", lambda config: seen.append(config) or 0)
    result = CliRunner().invoke(serve, [
        "--listen-client-urls", "http://0.0.0.0:7001", "--listen-peer-urls",
        "http://0.0.0.0:7101", "--advertise-client-urls", "http://10.0.0.5:17001",
        "--initial-advertise-peer-urls", "http://10.0.0.5:17101", "--log-format", "json"])
    assert result.exit_code == 0, result.output
    [config] = seen
    assert (config.listen_client, config.listen_peer) == ("0.0.0.0:7001", "0.0.0.0:7101")
    assert (config.client_address, config.peer_address) == ("10.0.0.5:17001", "10.0.0.5:17101")
    # the cluster id is derived from what the others are told, as etcd's
    assert config.initial_members() == "1=10.0.0.5:17101"
    assert config.advertised_native("0.0.0.0:7201") == "10.0.0.5:7201"


def test_defaults_advertise_the_listen_addresses() -> None:
    config = NodeConfig(listen_client="127.0.0.1:7001", listen_peer="127.0.0.1:7101")
    assert (config.client_address, config.peer_address) == ("127.0.0.1:7001", "127.0.0.1:7101")
    assert config.advertised_native("127.0.0.1:7201") == "127.0.0.1:7201"


def test_toml_takes_etcds_names(tmp_path: Path) -> None:
    toml = tmp_path / "n.toml"
    toml.write_text('listen_client_urls = "http://127.0.0.1:7001"\n'
                    'advertise_client_urls = "http://db1.example:7001"\n'
                    'initial_advertise_peer_urls = "db1.example:7101"\n'
                    'log_format = "json"\n')
    config = serve_config(str(toml), [], {})
    assert config.listen_client == "127.0.0.1:7001"
    assert (config.client_address, config.peer_address) == ("db1.example:7001",
                                                             "db1.example:7101")
    toml.write_text('listen_client_urls = "127.0.0.1:7001"\nlisten_client = "127.0.0.1:1"\n')
    with pytest.raises(ConfigError, match="same setting"):
        serve_config(str(toml), [], {})


@pytest.mark.parametrize(("settings", "message"), [
    ({"advertise_client_urls": "http://0.0.0.0:7001"}, "reach"),
    ({"advertise_client_urls": "http://a:1,http://b:2"}, "one address"),
    ({"initial_advertise_peer_urls": "ftp://a:1"}, "URL"),
    ({"initial_advertise_peer_urls": "nohost"}, "HOST:PORT"),
    ({"log_format": "xml"}, "log_format"),
])
def test_bad_addresses_are_config_errors(settings: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        serve_config(None, [], settings)


def test_json_log_line_has_node_id_and_term() -> None:
    formatter = JsonFormatter(3)
    record = logging.LogRecord("dengine.node", logging.INFO, __file__, 1, "won %s", ("x",),
                               None)
    assert json.loads(formatter.format(record))["term"] is None
    formatter.term = lambda: 7
    line = json.loads(formatter.format(record))
    assert (line["node_id"], line["term"], line["msg"], line["level"]) == (3, 7, "won x",
                                                                          "info")

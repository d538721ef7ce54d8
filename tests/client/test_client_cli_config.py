"""`dengine serve` settings: flags over TOML over defaults, and the documented table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dengine.cli.server_cmds import SETTINGS_HELP, _setting_flag, serve_config
from dengine.config import NodeConfig
from dengine.errors import ConfigError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def test_flags_win_over_toml_which_wins_over_defaults(tmp_path: Path) -> None:
    toml = tmp_path / "n.toml"
    toml.write_text('node_id = 2\nlisten_client = "127.0.0.1:7001"\nmax_key_size = 10\n'
                    '[peers]\n"1" = "127.0.0.1:7100"\n')
    config = serve_config(str(toml), ["3=127.0.0.1:7300"],
                          {"node_id": 5, "listen_client": None, "max_key_size": None})
    assert config.node_id == 5  # flag
    assert config.listen_client == "127.0.0.1:7001"  # file
    assert config.max_key_size == 10  # file
    assert config.peers == {3: "127.0.0.1:7300"}  # flags replace the file's peers
    assert config.election_timeout_ms == NodeConfig().election_timeout_ms  # default


@pytest.mark.parametrize(
    ("peers", "settings", "message"),
    [
        (["1=127.0.0.1:7000"], {}, "own id"),
        (["x"], {}, "ID=HOST:PORT"),
        ([], {"listen_client": "nohost"}, "HOST:PORT"),
        ([], {"node_id": 0}, "positive"),
    ],
)
def test_bad_settings_are_config_errors(peers: list[str], settings: dict[str, object],
                                        message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        serve_config(None, peers, settings)


def test_every_setting_is_documented_with_its_default() -> None:
    text = DOCS.read_text()
    defaults = NodeConfig()
    for f in dataclasses.fields(NodeConfig):
        assert f.name in SETTINGS_HELP, f"no help for setting {f.name}"
        row = next((line for line in text.splitlines() if line.startswith(f"| `{f.name}` |")),
                   None)
        assert row is not None, f"docs/operations.md: no Configuration row for {f.name}"
        assert f"`{_setting_flag(f.name)}`" in row
        default = getattr(defaults, f.name)
        if f.name != "peers":
            shown = str(default).lower() if isinstance(default, bool) else str(default)
            assert shown in row, f"{f.name}: default {default!r} missing from {row}"

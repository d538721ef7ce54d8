"""`dengine check DATA_DIR` on healthy, torn and corrupt data directories."""

from __future__ import annotations

from click.testing import CliRunner
from test_corruption import build, flip

from dengine.cli import cli


def run_check(path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["check", str(path)], terminal_width=200)
    return result.exit_code, result.output


def test_healthy_dir_lists_every_file(tmp_path):
    build(tmp_path)
    code, out = run_check(tmp_path)
    assert code == 0, out
    for name in ("seg-000000-00000000000000000001", "hardstate", "meta", "wal-0000000001",
                 "checkpoint", "snapshot.bin"):
        assert name in out
    assert "1..20" in out and "11..20" in out
    assert "format version 7, 10 ops" in out  # 5 chunk records holding 10 entries
    # the checkpoint: one block; each entry put a key, so the revision is 1 + 10
    assert "format version 5, 10 keys at (1, 10), revision 11, never" in out
    assert "compacted, 10 changes, 0 leases, replay from WAL 1" in out
    assert "0 torn tails, 0 corrupt" in out


def test_torn_tail_is_reported_without_failing(tmp_path):
    paths = build(tmp_path)
    with open(paths["wal"], "ab") as f:
        f.write(b"\x10\x00\x00\x00partial")
    code, out = run_check(tmp_path)
    assert code == 0 and "torn tail" in out and "1 torn tails, 0 corrupt" in out


def test_corruption_fails_with_the_offset(tmp_path):
    paths = build(tmp_path)
    flip(paths["segment"], 14)
    code, out = run_check(tmp_path)
    assert code == 1 and "CORRUPT" in out and "offset 8" in out


def test_missing_dir_is_a_clear_error(tmp_path):
    code, out = run_check(tmp_path / "nope")
    assert code != 0 and "data directory not found" in out and "Traceback" not in out


def test_damaged_node_json_fails_as_start_up_would(tmp_path):
    from dengine.config import NodeConfig
    from dengine.node.datadir import DataDir

    build(tmp_path)
    DataDir(tmp_path).claim_for(NodeConfig(node_id=1, cluster_id="c0ffee"))
    raw = bytearray((tmp_path / "node.json").read_bytes())
    raw[raw.index(b"c0ffee")] ^= 0x01  # "b0ffee": valid JSON, another cluster id
    (tmp_path / "node.json").write_bytes(bytes(raw))
    code, out = run_check(tmp_path)
    assert code == 1 and "unreadable" in out and "CRC32C mismatch" in out
    assert "1 corrupt" in out

"""What a new user trips on (issue 18 item 7): each point as a newcomer meets it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from click.testing import CliRunner

from dengine.cli import cli

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-c", "from dengine.cli import main; main()"]


def dengine(*args: str, stdin: bytes | None = None, timeout: float = 90
            ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*CLI, *args], capture_output=True, input=stdin, timeout=timeout)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once closed


def test_python_dash_m_dengine() -> None:
    result = subprocess.run([sys.executable, "-m", "dengine", "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout and "Usage:" in result.stdout


def test_unreachable_endpoint_fails_at_once_with_its_reason() -> None:
    ep = f"127.0.0.1:{closed_port()}"
    started = time.monotonic()
    result = dengine("get", "k", "--endpoints", ep, "--timeout", "60")
    assert result.returncode == 1
    # not after the deadline: a refused connection is known at once
    assert time.monotonic() - started < 30
    assert result.stderr.decode().strip() == (
        f"error [UNAVAILABLE]: cannot connect to {ep}: Connection refused")

    status = dengine("status", "--endpoints", ep, "--timeout", "60")
    assert status.returncode == 1 and b"unreachable" in status.stdout
    assert f"cannot connect to {ep}: Connection refused".encode() in status.stderr
    doc = json.loads(dengine("status", "--json", "--endpoints", ep).stdout)
    assert "Connection refused" in doc[0]["error"]["message"]


def test_unknown_host_is_one_clear_message() -> None:
    result = dengine("get", "k", "--endpoints", "nosuchhost.invalid:9081", "--timeout", "60")
    err = result.stderr.decode()
    assert result.returncode == 1
    assert err.startswith("error [UNAVAILABLE]: cannot connect to nosuchhost.invalid:9081: "
                          "unknown host 'nosuchhost.invalid'"), err
    assert err.count("nosuchhost.invalid:9081") == 1, err
    assert "connection lost" not in err


def test_put_reads_the_value_from_stdin_or_a_file(endpoint: str, tmp_path: Path) -> None:
    ep = ["--endpoints", endpoint]
    big = bytes(range(256)) * 3000  # 750 KiB: fine as a value, too long for argv here
    (tmp_path / "v").write_bytes(big)
    assert dengine("put", "/file", "--value-file", str(tmp_path / "v"), *ep).stdout == b"OK\n"
    assert dengine("get", "/file", "--print-value-only", *ep).stdout == big + b"\n"
    # as etcdctl: no VALUE -> stdin; '--value-file -' is stdin too
    assert dengine("put", "/stdin", *ep, stdin=b"from\nstdin").stdout == b"OK\n"
    assert dengine("get", "/stdin", "--print-value-only", *ep).stdout == b"from\nstdin\n"
    assert dengine("put", "/dash-file", "--value-file", "-", *ep, stdin=b"x").returncode == 0
    assert dengine("get", "/dash-file", "--print-value-only", *ep).stdout == b"x\n"
    # etcdctl stores a lone '-' as is: so do we, and say how to read stdin instead
    dash = dengine("put", "/dash", "-", *ep)
    assert dash.stdout == b"OK\n" and b"--value-file" in dash.stderr
    assert dengine("get", "/dash", "--print-value-only", *ep).stdout == b"-\n"
    both = dengine("put", "/x", "v", "--value-file", str(tmp_path / "v"), *ep)
    assert both.returncode == 2 and b"not both" in both.stderr
    missing = dengine("put", "/x", "--value-file", str(tmp_path / "none"), *ep)
    assert missing.returncode == 2 and b"Traceback" not in missing.stderr


def test_check_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["check", str(ROOT / "tests"), "--json"])
    doc = json.loads(result.output)
    assert doc["start_up"] == "proceeds" and result.exit_code == 0
    assert doc["node_id"] is None and isinstance(doc["files"], list)


def test_check_names_node_json(tmp_path: Path) -> None:
    (tmp_path / "node.json").write_text(
        '{"format": 2, "node_id": 3, "cluster_id": "c0ffee", "joined": false}')
    doc = json.loads(CliRunner().invoke(cli, ["check", str(tmp_path), "--json"]).output)
    [identity] = [f for f in doc["files"] if f["file"] == "node.json"]
    assert identity["kind"] == "node identity" and identity["status"] == "ok"
    assert "node 3 of cluster 'c0ffee'" in identity["detail"]


def test_demo_dirs_are_ignored_by_git() -> None:
    for path in ("demo-cluster/", "dengine-cluster/", "dengine-data/"):
        result = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert result.returncode == 0, f"{path} not in .gitignore"


def test_license_is_an_spdx_string() -> None:
    """A license table makes setuptools warn at every install (PEP 639)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert isinstance(project["license"], str)

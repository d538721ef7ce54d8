"""`dengine get|put|del|watch --user`: the data commands under etcd's auth answer as
etcdctl 3.4 does on the same node, and so does the Python client (docs/auth.md)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from test_auth_cli import ETCDCTL, dengine, etcdctl

from dengine import SyncClient
from dengine.errors import KvError

pytestmark = pytest.mark.skipif(ETCDCTL is None, reason="etcdctl not installed")


def same(endpoint: str, *args: str, user: str | None = None, stdin: str = "") -> str:
    """stdout, exit code and etcd's error lines ("Error: etcdserver: ...") as etcdctl's
    (etcdctl also logs its retries on stderr: only its "Error:" lines are compared)."""
    flags = ["--user", user] if user else []
    ours = dengine(endpoint, *args, *flags, stdin=stdin)
    theirs = subprocess.run([str(ETCDCTL), "--endpoints", endpoint, *flags, *args],
                            capture_output=True, text=True, timeout=60, input=stdin,
                            env={**os.environ, "ETCDCTL_API": "3"})
    errors = [line.removeprefix("Error: ") for line in theirs.stderr.splitlines()
              if line.startswith("Error:")]
    assert (ours.stdout, ours.returncode) == (theirs.stdout, theirs.returncode), (ours, theirs)
    assert ours.stderr.splitlines() == [f"Error: {e}" for e in errors], (ours, theirs)
    return ours.stdout


def test_a_reader_of_app_as_etcdctl(endpoint: str, tmp_path: Path) -> None:
    for args in (["user", "add", "root:pw"], ["user", "add", "u1:p1"], ["role", "add", "r1"],
                 ["role", "grant-permission", "r1", "read", "/app/", "--prefix"],
                 ["user", "grant-role", "u1", "r1"], ["put", "/app/x", "1"],
                 ["put", "/other/y", "2"], ["auth", "enable"]):
        assert dengine(endpoint, *args).returncode == 0, args
    try:
        U = "u1:p1"
        assert same(endpoint, "get", "/app/x", user=U) == "/app/x\n1\n"
        same(endpoint, "get", "/app/", "--prefix", "-w", "json", user=U)
        same(endpoint, "put", "/app/x", "2", user=U)  # etcdserver: permission denied
        same(endpoint, "del", "/app/x", user=U)
        same(endpoint, "get", "/other/y", user=U)
        same(endpoint, "get", "/", "--prefix", user=U)
        same(endpoint, "get", "/app/x")  # no user: user name is empty
        same(endpoint, "txn", user=U, stdin='mod("/app/x") > "0"\n\nget /app/x\n\n\n')
        same(endpoint, "txn", user=U, stdin='\nget /app/x\nput /app/x 9\n\n\n')  # denied
        same(endpoint, "txn", user=U, stdin='mod("/other/y") > "0"\n\nget /app/x\n\n\n')
        for user in (U, None):  # a watch etcd's auth refuses: cancelled, as etcdctl says
            flags = ["--user", user] if user else []
            ours = dengine(endpoint, "watch", "/other/", "--prefix", *flags)
            theirs = etcdctl(endpoint, *flags, "watch", "/other/", "--prefix")
            assert (ours.stdout, ours.stderr, ours.returncode) == (
                theirs.stdout, theirs.stderr, theirs.returncode), (ours, theirs)
        same(endpoint, "put", "/app/x", "3", user="root:pw")
        same(endpoint, "get", "/other/y", user="root:pw")
        assert dengine(endpoint, "get", "/app/x", "--user", "u1",
                       "--password", "p1").stdout == "/app/x\n3\n"
        # etcd's Maintenance/Snapshot with the token of --user: root only
        saved = dengine(endpoint, "snapshot", "save", str(tmp_path / "b.db"),
                        "--user", "root:pw")
        assert saved.returncode == 0 and (tmp_path / "b.db").exists(), saved
        refused = dengine(endpoint, "snapshot", "save", str(tmp_path / "c.db"), "--user", U)
        assert (refused.returncode, "auth: permission denied" in refused.stderr) == (
            1, True), refused
        with SyncClient(endpoint, user="u1", password="p1") as client:
            assert client.get(b"/app/x") == b"3"
            with pytest.raises(KvError, match=r"^etcdserver: permission denied$"):
                client.put(b"/app/x", b"5")
            with pytest.raises(KvError, match=r"^etcdserver: permission denied$"):
                client.get(b"/other/y")
        with SyncClient(endpoint) as client, pytest.raises(
                KvError, match=r"^etcdserver: user name is empty$"):
            client.get(b"/app/x")
        assert dengine(endpoint, "auth", "disable", "--user", "root:pw").returncode == 0
        # auth off: etcd's clients go on without a token
        assert same(endpoint, "get", "/app/x", user="root:pw") == "/app/x\n3\n"
    finally:
        dengine(endpoint, "auth", "disable", "--user", "root:pw")

"""`dengine user | role | auth`: etcdctl's commands and output, checked against etcdctl
3.4 itself on the same node (docs/auth.md)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from dengine.errors import KvError

ETCDCTL = shutil.which("etcdctl")
CLI = [sys.executable, "-c", "from dengine.cli import main; main()"]
pytestmark = pytest.mark.skipif(ETCDCTL is None, reason="etcdctl not installed")


def dengine(endpoint: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args, "--endpoints", endpoint], capture_output=True,
                          text=True, timeout=60, input=stdin)


def etcdctl(endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    assert ETCDCTL is not None
    return subprocess.run([ETCDCTL, "--endpoints", endpoint, *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "ETCDCTL_API": "3"})


def same(endpoint: str, *args: str, user: str | None = None) -> str:
    """The command prints the same (stdout, exit code, the "Error:" line) from both."""
    flags = ["--user", user] if user else []
    ours = dengine(endpoint, *args, *flags)
    theirs = etcdctl(endpoint, *flags, *args)
    errors = [
        [line for line in r.stderr.splitlines() if line.startswith("Error:")]
        for r in (ours, theirs)]
    assert (ours.stdout, ours.returncode, errors[0]) == (
        theirs.stdout, theirs.returncode, errors[1]), (ours, theirs)
    return ours.stdout


def test_users_roles_and_auth_as_etcdctl(endpoint: str) -> None:
    def ok(*args: str, stdin: str = "") -> str:
        done = dengine(endpoint, *args, stdin=stdin)
        assert done.returncode == 0, done
        return done.stdout

    assert ok("user", "add", "root:pw") == "User root created\n"
    again = dengine(endpoint, "user", "add", "root:pw")
    assert (again.returncode, again.stderr) == (
        1, "Error: etcdserver: user name already exists\n")
    assert ok("role", "add", "r1") == "Role r1 created\n"
    for grant in (["read", "/app/", "--prefix"], ["readwrite", "/x", "/z"], ["write", "/w"],
                  ["read", "/all", "--from-key"]):
        assert ok("role", "grant-permission", "r1", *grant) == "Role r1 updated\n"
    assert "(prefix /app/)" in same(endpoint, "role", "get", "r1")
    assert ok("user", "add", "u1", "--interactive=false", stdin="p1\n") == "User u1 created\n"
    assert ok("user", "grant-role", "u1", "r1") == "Role r1 is granted to user u1\n"
    same(endpoint, "user", "get", "u1")
    same(endpoint, "user", "list")
    same(endpoint, "role", "list")
    same(endpoint, "role", "get", "nope")
    assert ok("role", "revoke-permission", "r1", "/w") == (
        "Permission of key /w is revoked from role r1\n")
    assert etcdctl(endpoint, "role", "revoke-permission", "r1", "/x", "/z").stdout == (
        ok("role", "grant-permission", "r1", "readwrite", "/x", "/z") and
        ok("role", "revoke-permission", "r1", "/x", "/z"))
    assert ok("user", "revoke-role", "u1", "r1") == "Role r1 is revoked from user u1\n"
    assert ok("user", "grant-role", "u1", "r1")
    assert ok("auth", "enable") == "Authentication Enabled\n"  # root's role made
    same(endpoint, "user", "list")  # no user: "user name is empty"
    same(endpoint, "user", "list", user="root:pw")
    for args in (["user", "list"], ["user", "get", "u1"], ["role", "list"],
                 ["role", "get", "r1"], ["role", "get", "root"], ["user", "get", "nope"],
                 ["user", "get", "u1", "--detail"], ["user", "get", "root", "--detail"]):
        same(endpoint, *args, "-w", "json", user="root:pw")  # etcd's response as JSON
    same(endpoint, "user", "get", "u1", "--detail", user="root:pw")
    for args in (["role", "add", "r2"], ["role", "grant-permission", "r2", "read", "/a"],
                 ["role", "delete", "r2"]):  # changes: the header only, as etcdctl
        out = json.loads(ok(*args, "-w", "json", "--user", "root:pw"))
        assert list(out) == ["header"] and list(out["header"]) == [
            "cluster_id", "member_id", "revision", "raft_term"], out
    assert ok("auth", "enable", "-w", "json", "--user", "root:pw") == (
        "Authentication Enabled\n")  # etcdctl 3.4 prints the line with -w json too
    same(endpoint, "user", "list", user="u1:p1")  # permission denied
    same(endpoint, "user", "get", "u1", user="u1:p1")
    same(endpoint, "user", "list", user="root:bad")  # authentication failed, exit 2
    assert ok("user", "passwd", "u1", "--interactive=false", "--user", "root:pw",
              stdin="np\n") == "Password updated\n"
    same(endpoint, "user", "get", "u1", user="u1:np")
    assert ok("auth", "disable", "--user", "root", "--password", "pw") == (
        "Authentication Disabled\n")
    same(endpoint, "user", "list")


def test_auth_errors_print_as_etcdctl_others_keep_their_code() -> None:
    from dengine.cli import error_line
    from dengine.errors import InvalidRequest

    assert error_line(KvError("PERMISSION_DENIED", "etcdserver: permission denied")) == (
        "Error: etcdserver: permission denied")
    assert error_line(KvError("INVALID_ARGUMENT", "etcdserver: user name is empty")) == (
        "Error: etcdserver: user name is empty")
    assert error_line(KvError("OUT_OF_RANGE", "etcdserver: mvcc: required revision has "
                                              "been compacted")).startswith("error [KV_ERROR]: ")
    assert error_line(InvalidRequest("bad")) == "error [INVALID_REQUEST]: bad"

"""`dengine lease grant | revoke | keep-alive | timetolive | list` and `put --lease`
against a real server: etcdctl 3.4's output (lease ids in 16 hexadecimal digits)."""

from __future__ import annotations

import json
import re

from click.testing import CliRunner

from dengine.cli import cli


def run(endpoint: str, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, [*args, "--endpoints", endpoint])
    assert result.exit_code == code, (args, result.output, result.exception)
    return result.output + (str(result.exception) if code else "")


def test_lease_commands_like_etcdctl(endpoint: str) -> None:
    out = run(endpoint, "lease", "grant", "60")
    m = re.fullmatch(r"lease ([0-9a-f]{16}) granted with TTL\(60s\)\n", out)
    assert m, out
    lease = m.group(1)
    small = run(endpoint, "lease", "grant", "0")
    assert small.endswith(" granted with TTL(1s)\n")  # the minimum of the default timing
    assert run(endpoint, "put", "/l/a", "1", "--lease", lease) == "OK\n"
    assert run(endpoint, "put", "/l/b", "2", f"--lease={lease}") == "OK\n"
    out = run(endpoint, "lease", "timetolive", lease, "--keys")
    assert re.fullmatch(rf"lease {lease} granted with TTL\(60s\), remaining\((59|60)s\), "
                        r"attached keys\(\[/l/a /l/b\]\)\n", out), out
    assert run(endpoint, "lease", "keep-alive", "--once", lease) == (
        f"lease {lease} keepalived with TTL(60)\n")
    listed = run(endpoint, "lease", "list").splitlines()
    assert listed[0] == f"found {len(listed) - 1} leases" and lease in listed[1:]
    doc = json.loads(run(endpoint, "lease", "timetolive", lease, "--keys", "--json"))
    assert doc["granted-ttl"] == 60 and len(doc["keys"]) == 2
    assert run(endpoint, "lease", "revoke", lease) == f"lease {lease} revoked\n"
    assert run(endpoint, "get", "/l/", "--prefix") == ""
    assert run(endpoint, "lease", "timetolive", lease) == f"lease {lease} already expired\n"
    assert run(endpoint, "lease", "keep-alive", lease) == f"lease {lease} expired or revoked.\n"
    out = run(endpoint, "lease", "revoke", lease, code=1)
    assert "etcdserver: requested lease not found" in out
    out = run(endpoint, "put", "/l/c", "3", "--lease", lease, code=1)
    assert "etcdserver: requested lease not found" in out
    out = run(endpoint, "lease", "revoke", "xyz", code=1)
    assert "hexadecimal" in out and "Traceback" not in out

"""`dengine get | put | del | txn | compaction` against a real server: etcdctl's output."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from dengine.cli import cli

CLI = [sys.executable, "-c", "from dengine.cli import main; main()"]


def run(endpoint: str, *args: str, stdin: str | None = None) -> str:
    result = CliRunner().invoke(cli, [*args, "--endpoints", endpoint], input=stdin)
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.output


def test_put_get_del_like_etcdctl(endpoint: str) -> None:
    assert run(endpoint, "put", "/t/a", "1") == "OK\n"
    assert run(endpoint, "put", "/t/b", "2") == "OK\n"
    assert run(endpoint, "put", "/t/b", "3", "--prev-kv") == "OK\n/t/b\n2\n"
    assert run(endpoint, "put", "/t/c", "x y") == "OK\n"
    assert run(endpoint, "get", "/t/a") == "/t/a\n1\n"
    assert run(endpoint, "get", "/t/", "--prefix") == "/t/a\n1\n/t/b\n3\n/t/c\nx y\n"
    assert run(endpoint, "get", "/t/a", "/t/c", "--print-value-only") == "1\n3\n"
    assert run(endpoint, "get", "/t/", "--prefix", "--keys-only", "--limit", "2") == (
        "/t/a\n\n/t/b\n\n")
    assert run(endpoint, "get", "/t/", "--prefix", "--sort-by", "MODIFY", "--order",
               "DESCEND", "--limit", "1") == "/t/c\nx y\n"
    assert run(endpoint, "get", "/t/", "--prefix", "--count-only") == "3\n"
    assert run(endpoint, "get", "/t/b", "--from-key", "--consistency", "s",
               "--print-value-only").startswith("3\nx y\n")
    assert run(endpoint, "get", "/t/none") == ""

    doc = json.loads(run(endpoint, "get", "/t/", "--prefix", "--limit", "1", "-w", "json"))
    assert doc["more"] is True and doc["count"] == 3 and len(doc["kvs"]) == 1
    assert set(doc["header"]) == {"cluster_id", "member_id", "revision", "raft_term"}
    kv = doc["kvs"][0]
    assert kv["key"] == "L3QvYQ==" and kv["value"] == "MQ==" and kv["version"] == 1
    rev = doc["header"]["revision"]
    b = json.loads(run(endpoint, "get", "/t/b", "--rev", str(kv["mod_revision"] + 1),
                       "--json"))
    assert b["kvs"][0]["value"] == "Mg==" and b["header"]["revision"] == rev

    assert run(endpoint, "del", "/t/a", "--prev-kv") == "1\n/t/a\n1\n"
    assert run(endpoint, "del", "/t/", "--prefix") == "2\n"
    assert run(endpoint, "delete", "/t/none") == "0\n"


def test_txn_from_stdin_and_interactive(endpoint: str) -> None:
    run(endpoint, "put", "/x/k", "v")
    out = run(endpoint, "txn", stdin='mod("/x/k") > "0"\nvalue("/x/k") = "v"\n\n'
              'put /x/k v2\nget /x/k\ndel /x/nope\n\nput /x/k v3\n\n')
    assert out == "SUCCESS\n\nOK\n\n/x/k\nv2\n\n0\n"
    out = run(endpoint, "txn", stdin='value("/x/k") = "zz"\n\nput /x/k v2\n\n'
              'get /x/k\nput /x/other "hello world"\n\n')
    assert out == "FAILURE\n\n/x/k\nv2\n\nOK\n"
    out = run(endpoint, "txn", "-i", stdin='version("/x/k") > "0"\n\nget /x/other\n\n\n')
    assert out == ("compares:\nsuccess requests (get, put, del):\n"
                   "failure requests (get, put, del):\nSUCCESS\n\n/x/other\nhello world\n")
    doc = json.loads(run(endpoint, "txn", "-w", "json",
                         stdin='create("/x/k") = "0"\n\n\nget /x/k --keys-only\n\n'))
    assert "succeeded" not in doc
    assert list(doc["responses"][0]["Response"]) == ["ResponseRange"]


def test_compaction(endpoint: str) -> None:
    run(endpoint, "put", "/c/k", "1")
    header = json.loads(run(endpoint, "put", "/c/k", "2", "-w", "json"))["header"]
    # etcdctl's keys, in its order (a plain put's header too, not its revision alone)
    assert list(header) == ["cluster_id", "member_id", "revision", "raft_term"]
    rev = header["revision"]
    assert run(endpoint, "compaction", str(rev)) == f"compacted revision {rev}\n"
    assert run(endpoint, "get", "/c/k", "--rev", str(rev), "--print-value-only") == "2\n"


def test_bad_input_is_a_message_and_a_status_never_a_traceback(endpoint: str) -> None:
    ep = ["--endpoints", endpoint]
    cases: list[tuple[list[str], str | None, str]] = [
        (["txn"], 'foo("k") > "0"\n\n', "unknown target foo"),
        (["txn"], 'version("k") > "x"\n\n', "takes an integer"),
        (["txn"], '\nbogus k\n\n', "expected put, get or del"),
        (["get", "k", "--rev", "999999999"], None, "future revision"),
        (["compaction", "999999999"], None, "future revision"),
        (["get", "k", "--limit", "-1"], None, "-1"),
        (["get", "k", "--sort-by", "size"], None, "bad sort target"),
        (["get", "k", "z", "--prefix"], None, "RANGE_END"),
        (["get", "k", "-w", "table"], None, "table"),
        (["put", "", "v"], None, "key"),
    ]
    for args, stdin, needle in cases:
        result = subprocess.run([*CLI, *args, *ep], input=stdin, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode in (1, 2), (args, result.stdout, result.stderr)
        assert needle in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)

"""The key-value commands print what etcdctl 3.4 prints (its simple and json formats,
recorded from etcdctl against etcd 3.4.23)."""

from __future__ import annotations

import json

import pytest

from dengine.api import (
    DeleteResult,
    KeyValue,
    PutResult,
    RangeResult,
    ResponseHeader,
    TxnResult,
)
from dengine.cli.kv_cmds import Output, to_json

H = ResponseHeader(15118495548433857066, 13668033151171901709, 5, 2)


def test_json_of_a_range_matches_etcdctl() -> None:
    r = RangeResult([KeyValue(b"a", b"1", 2, 2, 1)], True, 2, 5, H)
    assert json.dumps(to_json(r), separators=(",", ":")) == (
        '{"header":{"cluster_id":15118495548433857066,"member_id":13668033151171901709,'
        '"revision":5,"raft_term":2},"kvs":[{"key":"YQ==","create_revision":2,'
        '"mod_revision":2,"version":1,"value":"MQ=="}],"more":true,"count":2}')
    empty = RangeResult([], False, 0, 5, H)
    assert list(to_json(empty)) == ["header"]


def test_json_of_put_delete_and_txn() -> None:
    put = PutResult(5, KeyValue(b"b", b"3", 3, 4, 2), H)
    assert to_json(put)["prev_kv"] == {"key": "Yg==", "create_revision": 3,
                                       "mod_revision": 4, "version": 2, "value": "Mw=="}
    assert to_json(DeleteResult(1, [], 7, H)) == {
        "header": to_json(put)["header"], "deleted": 1}
    txn = TxnResult(False, [
        RangeResult([KeyValue(b"k", b"v2", 8, 9, 2)], False, 1, 10, ResponseHeader(revision=10)),
        PutResult(11, None, ResponseHeader(revision=11)),
    ], 11, H)
    out = json.dumps(to_json(txn), separators=(",", ":"))
    assert out.endswith(
        '"responses":[{"Response":{"ResponseRange":{"header":{"revision":10},"kvs":'
        '[{"key":"aw==","create_revision":8,"mod_revision":9,"version":2,"value":"djI="}],'
        '"count":1}}},{"Response":{"ResponsePut":{"header":{"revision":11}}}}]}')
    assert '"succeeded"' not in out


def test_simple_output(capsys: pytest.CaptureFixture[str]) -> None:
    out = Output("simple", False, False)
    out.any(RangeResult([KeyValue(b"a", b"1", 2, 2, 1), KeyValue(b"b", b"4", 3, 5, 3)],
                        False, 2, 5))
    out.any(PutResult(5, KeyValue(b"b", b"2", 3, 3, 1)))
    out.any(DeleteResult(1, [KeyValue(b"a", b"1", 2, 2, 1)], 6))
    out.any(TxnResult(True, [PutResult(7), RangeResult([KeyValue(b"k", b"v2", 7, 7, 1)],
                                                       False, 1, 7),
                             DeleteResult(0, [], 7)], 7))
    assert capsys.readouterr().out == (
        "a\n1\nb\n4\n" "OK\nb\n2\n" "1\na\n1\n" "SUCCESS\n\nOK\n\nk\nv2\n\n0\n")
    Output("simple", False, False, value_only=True).any(
        RangeResult([KeyValue(b"a", b"1", 2, 2, 1)], False, 1, 5))
    Output("simple", False, False).any(RangeResult([KeyValue(b"x", b"", 2, 2, 1)],
                                                   False, 1, 5))
    assert capsys.readouterr().out == "1\nx\n\n"

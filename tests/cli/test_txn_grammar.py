"""etcdctl's txn input grammar (dengine.cli.txn_grammar): what parses and what is refused."""

from __future__ import annotations

import pytest

from dengine.cli.txn_grammar import (
    TxnSyntaxError,
    argify,
    parse_compare,
    parse_op,
    parse_txn,
    unquote,
)
from dengine.errors import InvalidRequest
from dengine.proto.etcd import rpc_pb2

C = rpc_pb2.Compare


@pytest.mark.parametrize(("line", "target", "result", "field", "operand"), [
    ('mod("k") = "5"', C.MOD, C.EQUAL, "mod_revision", 5),
    ('m("k") == "5"', C.MOD, C.EQUAL, "mod_revision", 5),
    ('value("k") = "v"', C.VALUE, C.EQUAL, "value", b"v"),
    ('val("k") != "a b"', C.VALUE, C.NOT_EQUAL, "value", b"a b"),
    ('version("k") > "0"', C.VERSION, C.GREATER, "version", 0),
    ('ver("k") < "2"', C.VERSION, C.LESS, "version", 2),
    ('create("k") < "3"', C.CREATE, C.LESS, "create_revision", 3),
    ('c("k") > "-1"', C.CREATE, C.GREATER, "create_revision", -1),
    ('lease("k") = "0"', C.LEASE, C.EQUAL, "lease", 0),
    ('  value("k\\n\\x41") = "\\"q\\""  ', C.VALUE, C.EQUAL, "value", b'"q"'),
])
def test_compares(line: str, target: int, result: int, field: str, operand: object) -> None:
    pb = parse_compare(line).to_pb()
    assert (pb.target, pb.result, pb.WhichOneof("target_union")) == (target, result, field)
    assert getattr(pb, field) == operand


@pytest.mark.parametrize(("line", "message"), [
    ('foo("k") > "0"', "unknown target foo"),
    ('version("k") >= "0"', "unknown operator >="),
    ('version("k") > "x"', "takes an integer"),
    ('version(k) > "0"', "malformed comparison"),
    ('version("k") > 0', "malformed comparison"),
    ('value("k\\q") = "v"', "unknown escape"),
    ("put k v", "malformed comparison"),
])
def test_bad_compares(line: str, message: str) -> None:
    with pytest.raises(TxnSyntaxError, match=message):
        parse_compare(line)


def test_argify_like_etcdctl() -> None:
    assert argify("put k v") == [b"put", b"k", b"v"]
    assert argify('put k "a b\\tc"') == [b"put", b"k", b"a b\tc"]
    assert argify("put 'k 1' 'x'") == [b"put", b"k 1", b"x"]
    assert unquote('"\\x00\\xff"') == b"\x00\xff"


def test_ops() -> None:
    put = parse_op("put k v --prev-kv").to_pb().request_put
    assert (put.key, put.value, put.prev_kv) == (b"k", b"v", True)
    get = parse_op("get k --prefix --limit 2 --rev=5 --sort-by=MODIFY --order DESCEND "
                   "--keys-only").to_pb().request_range
    assert (get.key, get.range_end, get.limit, get.revision, get.keys_only) == (
        b"k", b"l", 2, 5, True)
    assert (get.sort_target, get.sort_order) == (rpc_pb2.RangeRequest.MOD,
                                                 rpc_pb2.RangeRequest.DESCEND)
    get = parse_op("get a c --sort-by=version").to_pb().request_range
    assert (get.range_end, get.sort_order) == (b"c", rpc_pb2.RangeRequest.ASCEND)
    dele = parse_op("del a --from-key --prev-kv").to_pb().request_delete_range
    assert (dele.key, dele.range_end, dele.prev_kv) == (b"a", b"\0", True)


@pytest.mark.parametrize(("line", "message"), [
    ("bogus k", "expected put, get or del"),
    ("put k", "put takes KEY VALUE"),
    ("put k v w", "put takes KEY VALUE"),
    ("get", "get takes KEY"),
    ("get k --bogus", "unknown flag --bogus"),
    ("get k --limit", "needs a value"),
    ("get k --limit x", "takes an integer"),
    ("get k --limit -1", ">= 0"),
    ("get k --prefix z", "range_end cannot be given"),
    ("get k --sort-by size", "bad sort target"),
    ("del k --prefix=yes", "is a flag"),
])
def test_bad_ops(line: str, message: str) -> None:
    with pytest.raises(TxnSyntaxError, match=message):
        parse_op(line)


def test_whole_input_and_prompts() -> None:
    text = ('mod("k") > "0"\nvalue("k") = "v"\n\nput k v2\nget k\ndel nope\n\n'
            "put k v3\n\n")
    prompts: list[str] = []
    txn = parse_txn(iter(text.splitlines(keepends=True)), prompts.append)
    assert len(txn.compare) == 2 and len(txn.success) == 3 and len(txn.failure) == 1
    assert prompts == ["compares:", "success requests (get, put, del):",
                       "failure requests (get, put, del):"]
    # the end of the input ends the sections; all may be empty
    empty = parse_txn(iter([]))
    assert (empty.compare, empty.success, empty.failure) == ([], [], [])
    only_success = parse_txn(iter(["\n", "put a b\n"]))
    assert len(only_success.success) == 1 and not only_success.failure
    assert issubclass(TxnSyntaxError, InvalidRequest)

"""Validation: limits at their exact bounds, the two command paths (objects, bytes)
agreeing with each other and with what the state machine will apply, messages."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kv_helpers import canonical_commands, damaged, protobuf_decode

from dengine.errors import InvalidRequest, KvError
from dengine.kv import (
    Limits,
    as_bytes,
    check_encoded_commands,
    check_key,
    check_keys,
    check_node_id,
    check_value,
    decode_any_command,
    encode_commands,
)
from dengine.kv.codec import (
    OP_COMPACTION,
    OP_DELETE,
    OP_DELETE_RANGE,
    OP_INSERT,
    OP_PUT,
    OP_TXN,
)
from dengine.proto import WriteCommand

LIMITS = Limits(max_key_size=8, max_value_size=16, max_request_size=64)


def command(op: int, key: bytes, value: bytes = b"") -> WriteCommand:
    if op == OP_INSERT:
        return WriteCommand(insert=WriteCommand.Insert(key=key, value=value))
    return WriteCommand(delete=WriteCommand.Delete(key=key))


@settings(deadline=None)
@given(st.binary(max_size=12), st.binary(max_size=20))
def test_key_and_value_limits(key, value):
    key_ok = 0 < len(key) <= LIMITS.max_key_size
    try:
        assert check_key(key, LIMITS) is key
        assert key_ok
    except InvalidRequest as e:
        assert not key_ok
        assert e.code == "INVALID_REQUEST"
        assert ("empty key" if not key else "exceeds max_key_size (8 bytes)") in e.message
    value_ok = len(value) <= LIMITS.max_value_size
    try:
        assert check_value(value, LIMITS) is value
        assert value_ok
    except InvalidRequest as e:
        assert not value_ok and "exceeds max_value_size (16 bytes)" in e.message


OPS = st.lists(st.tuples(st.sampled_from([OP_INSERT, OP_DELETE]), st.binary(max_size=10),
                         st.binary(max_size=18)), max_size=5)


@settings(deadline=None)
@given(OPS)
def test_objects_and_bytes_are_validated_alike(ops):
    """encode_commands(objects) accepts exactly what check_encoded_commands accepts of
    their encodings, with the same message, and encodes them canonically."""
    commands = [command(*op) for op in ops]
    encoded = [c.SerializeToString() for c in commands]
    try:
        out = encode_commands(commands, LIMITS)
    except InvalidRequest as e:
        with pytest.raises(InvalidRequest) as again:
            check_encoded_commands(encoded, LIMITS)
        assert again.value.message == e.message
        return
    assert out == encoded
    check_encoded_commands(encoded, LIMITS)
    for (op, key, value), data in zip(ops, out, strict=True):
        assert decode_any_command(data) == (op, key, value if op == OP_INSERT else b"")


@settings(deadline=None)
@given(st.one_of(st.binary(max_size=30), canonical_commands().flatmap(damaged)))
def test_accepted_bytes_are_what_the_state_machine_applies(data):
    """Bytes that pass validation decode (as the state machine will) to a valid insert or
    delete; bytes protobuf cannot read as one are refused."""
    limits = Limits(max_key_size=200, max_value_size=30000, max_request_size=1 << 20)
    if decode_any_command(data)[0] in (OP_PUT, OP_DELETE_RANGE, OP_TXN, OP_COMPACTION):
        try:  # an etcd request: etcd's checks (KvError), then applied as the request
            check_encoded_commands([data], limits)
        except KvError:
            pass
        return
    try:
        check_encoded_commands([data], limits)
    except InvalidRequest:
        decoded = protobuf_decode(data)
        assert decoded is None or not decoded[1] or len(decoded[1]) > 200
        return
    decoded = protobuf_decode(data)
    assert decoded is not None and decoded[1]
    assert decode_any_command(data) == decoded


@pytest.mark.parametrize(("commands", "message"), [
    ([], "a write needs at least one command"),
    ([WriteCommand()], "command 0: no operation set (a WriteCommand must set insert or delete)"),
    ([command(OP_INSERT, b"k", b"v"), command(OP_DELETE, b"")], "command 1: empty key"),
    ([command(OP_INSERT, b"k" * 9, b"v")],
     "command 0: key of 9 bytes exceeds max_key_size (8 bytes)"),
    ([command(OP_INSERT, b"k", b"v" * 17)],
     "command 0: value of 17 bytes exceeds max_value_size (16 bytes)"),
    ([command(OP_INSERT, b"k", b"v" * 16)] * 4,
     "write of 92 bytes exceeds max_request_size (64 bytes)"),
    (command(OP_INSERT, b"k", b"v"), "commands must be a sequence of WriteCommand"),
    ([b"raw"], "commands must be WriteCommand, got bytes"),
])
def test_command_messages(commands, message):
    with pytest.raises(InvalidRequest) as e:
        encode_commands(commands, LIMITS)
    assert e.value.message == message


def test_bytes_that_are_not_a_command():
    for data in (b"", b"\xff\xff", b"\xfa\x07\x00"):  # no operation, undecodable, unknown field
        with pytest.raises(InvalidRequest, match="command 0: no operation set"):
            check_encoded_commands([data], LIMITS)
    # an etcd request (WriteCommand fields 3-6) is checked as etcd checks it
    with pytest.raises(KvError, match="etcdserver: key is not provided"):
        check_encoded_commands([b"\x1a\x00"], LIMITS)
    with pytest.raises(KvError, match="malformed TxnRequest"):
        check_encoded_commands([b"\x2a\x02\xff\xff"], LIMITS)
    with pytest.raises(InvalidRequest, match="at least one command"):
        check_encoded_commands([], LIMITS)


def test_keys():
    assert check_keys([b"a", "b", bytearray(b"c")], LIMITS) == [b"a", b"b", b"c"]
    assert check_keys([], LIMITS) == []
    for keys, message in (
        (b"ab", "keys must be a sequence of bytes"),
        ("ab", "keys must be a sequence of bytes"),
        ([b"a", b""], "key 1: empty key"),
        ([b"k" * 9], "key 0: key of 9 bytes exceeds max_key_size (8 bytes)"),
        ([b"a", 3], "key must be bytes or str, got int"),
    ):
        with pytest.raises(InvalidRequest) as e:
            check_keys(keys, LIMITS)
        assert e.value.message == message


def test_as_bytes():
    assert as_bytes("é") == "é".encode() and as_bytes(memoryview(b"x")) == b"x"
    with pytest.raises(InvalidRequest, match="value must be bytes or str, got NoneType"):
        as_bytes(None, "value")


@pytest.mark.parametrize("node_id", [0, -1, True, 1.0, "1", None])
def test_bad_node_ids(node_id):
    with pytest.raises(InvalidRequest, match="node id must be a positive integer, got"):
        check_node_id(node_id)


def test_good_node_id():
    assert check_node_id(7) == 7


def test_limits_of_a_config():
    from dengine.config import NodeConfig

    config = NodeConfig(max_key_size=1, max_value_size=2, max_request_size=3)
    assert Limits.of(config) == Limits(1, 2, 3)

"""The command codec: hand encodings byte-equal to protobuf, decoding never disagreeing
with protobuf (fast path, learnt shapes, damaged input), entry kinds."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st
from kv_helpers import (
    canonical_commands,
    command_entry,
    config_entry,
    damaged,
    delete,
    insert,
    protobuf_decode,
)

from dengine.kv import codec
from dengine.kv.codec import (
    OP_CONFIG,
    OP_DELETE,
    OP_INSERT,
    OP_NOOP,
    OP_REJECTED,
    SHAPES,
    decode_any_command,
    decode_command,
    decode_entry,
    decode_payload,
    encode_command,
    encode_delete,
    encode_insert,
    encode_request,
    fast_decode_command,
    split_write_request,
)
from dengine.proto import Entry, Membership, WriteCommand
from dengine.proto.client_pb2 import WriteRequest


def large(lo: int, hi: int) -> st.SearchStrategy[bytes]:
    """Values of lo..hi bytes (3-byte length varints) from a short random pattern: random
    bytes of that size exceed hypothesis' entropy budget (FailedHealthCheck
    data_too_large, seen once in CI)."""
    return st.tuples(st.integers(lo, hi), st.binary(min_size=1, max_size=16)).map(
        lambda t: (t[1] * (t[0] // len(t[1]) + 1))[:t[0]])


VALUES = st.one_of(st.binary(max_size=300), large(16000, 20000))


@settings(deadline=None)
@given(st.binary(max_size=300), VALUES)
def test_encode_insert_is_the_protobuf_encoding(key, value):
    # Byte-equal, not just decodable: the apply path's shape cache keys on exact bytes.
    assert encode_insert(key, value) == insert(key, value)


@settings(deadline=None)
@given(st.one_of(st.binary(max_size=300), large(16000, 17000)))
def test_encode_delete_is_the_protobuf_encoding(key):
    assert encode_delete(key) == delete(key)


@settings(deadline=None)
@given(st.binary(max_size=300), VALUES)
def test_round_trip(key, value):
    for op, data in ((OP_INSERT, encode_command(OP_INSERT, key, value)),
                     (OP_DELETE, encode_command(OP_DELETE, key))):
        expected = (op, key, value if op == OP_INSERT else b"")
        assert decode_any_command(data) == expected
        assert decode_entry(command_entry(1, data)) == expected
        assert decode_any_command(data) == expected  # again, through a learnt shape if any


def test_encode_command_refuses_other_ops():
    with pytest.raises(ValueError, match="no command"):
        encode_command(OP_CONFIG, b"k")


@settings(deadline=None)
@given(st.one_of(
    st.tuples(st.just("insert"), st.binary(max_size=300), st.binary(max_size=20000)),
    st.tuples(st.just("delete"), st.binary(max_size=300), st.just(b"")),
))
def test_fast_decode_matches_protobuf_on_commands(cmd):
    kind, key, value = cmd
    encoded = insert(key, value) if kind == "insert" else delete(key)
    expected = (OP_INSERT if kind == "insert" else OP_DELETE, key, value)
    assert protobuf_decode(encoded) == expected
    if len(value) < 16000 and len(encoded) < 16000:  # 1- and 2-byte lengths only
        assert fast_decode_command(encoded) == expected


@settings(deadline=None)
@given(st.one_of(st.binary(max_size=40), canonical_commands().flatmap(damaged)))
def test_fast_decode_never_disagrees_with_protobuf(data):
    fast = fast_decode_command(data)
    if fast is not None:
        assert fast == protobuf_decode(data)


@settings(deadline=None)
@given(st.binary(max_size=60))
def test_any_bytes_decode_like_protobuf_or_as_rejected(data):
    expected = protobuf_decode(data)
    assert decode_any_command(data) == (expected or (OP_REJECTED, b"", b""))


@settings(max_examples=300, deadline=None)
@given(st.data(), canonical_commands())
def test_known_shapes_decode_like_protobuf_even_when_damaged(data, command):
    """A shape learnt from a valid command never misreads a damaged one of the same head."""
    first = decode_command(command)  # learns the shape
    assert first is None or first == protobuf_decode(command)
    again = decode_command(command)  # decoded through the learnt shape, if any
    assert again == first
    other = data.draw(damaged(command))
    decoded = decode_command(other)
    if decoded is not None:
        assert decoded == protobuf_decode(other)


def test_typical_commands_are_learnt_and_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(codec, "_SHAPES_MAX", 8)
    SHAPES.clear()
    for size in (0, 10, 200, 5000):
        command = insert(b"k" * 16, b"v" * size)
        assert decode_command(command) == (OP_INSERT, b"k" * 16, b"v" * size)
    assert len(SHAPES) == 4
    assert decode_command(insert(b"x" * 16, b"w" * 200)) == (OP_INSERT, b"x" * 16, b"w" * 200)
    assert len(SHAPES) == 4  # the same shape as the 200-byte value above
    for size in range(20, 30):
        decode_command(insert(b"k", b"v" * size))
    assert 0 < len(SHAPES) <= 8


def test_entry_kinds():
    noop = Entry(index=1, term=1)
    noop.payload.noop.SetInParent()
    assert decode_entry(noop) == (OP_NOOP, b"", b"")
    op, key, value = decode_entry(config_entry(2, [1, 2]))
    assert (op, key) == (OP_CONFIG, b"")
    assert [m.id for m in Membership.FromString(value).voters] == [1, 2]
    assert decode_entry(Entry(index=3, term=1)) == (OP_REJECTED, b"", b"")  # no payload
    assert decode_entry(command_entry(4, b"")) == (OP_REJECTED, b"", b"")  # no operation
    assert decode_entry(command_entry(5, b"\xff\xff")) == (OP_REJECTED, b"", b"")
    assert decode_payload(command_entry(6, insert(b"k", b"v"))) == (OP_INSERT, b"k", b"v")


COMMANDS = st.lists(st.one_of(
    st.builds(encode_insert, st.binary(max_size=200), st.binary(max_size=300)),
    st.builds(encode_delete, st.binary(max_size=200)),
    st.binary(max_size=20),  # anything, even not a command
), max_size=8)


@settings(deadline=None)
@given(COMMANDS)
def test_split_write_request_gives_each_command_as_sent(commands):
    data = b"".join(b"\x0a" + codec._varint(len(c)) + c for c in commands)
    assert split_write_request(data) == commands


@settings(deadline=None)
@given(COMMANDS.map(lambda cs: WriteRequest(commands=[
    WriteCommand.FromString(c) for c in cs if protobuf_decode(c) is not None]
)))
def test_split_write_request_agrees_with_protobuf(request):
    data = request.SerializeToString()
    assert split_write_request(data) == [c.SerializeToString() for c in request.commands]


@settings(deadline=None)
@given(st.one_of(st.binary(max_size=60), COMMANDS.map(
    lambda cs: b"".join(b"\x0a" + codec._varint(len(c)) + c for c in cs)).flatmap(damaged)))
def test_split_write_request_never_disagrees_with_protobuf(data):
    """Whatever it splits, protobuf parses to the same commands (or refuses a command
    that is no WriteCommand, which validation refuses too)."""
    parts = split_write_request(data)
    if parts is None:
        return
    try:
        request = WriteRequest.FromString(data)
    except DecodeError:
        assert any(decode_any_command(p)[0] == OP_REJECTED for p in parts)
        return
    assert len(parts) == len(request.commands)
    for part, command in zip(parts, request.commands, strict=True):
        expected = protobuf_decode(command.SerializeToString())
        assert decode_any_command(part) == (expected or (OP_REJECTED, b"", b""))


def test_split_write_request_leaves_the_unusual_to_protobuf():
    command = encode_insert(b"k", b"v")
    framed = b"\x0a" + bytes([len(command)]) + command
    assert split_write_request(b"") == []
    assert split_write_request(framed + b"\x10\x01") is None  # an unknown field
    assert split_write_request(framed[:-1]) is None  # truncated
    assert split_write_request(b"\x0a") is None
    assert split_write_request(b"\x0a\x80") is None  # varint cut short
    long_form = b"\x0a" + bytes([len(command) | 0x80, 0x00]) + command  # overlong varint
    assert split_write_request(long_form) == [command] == [
        c.SerializeToString() for c in WriteRequest.FromString(long_form).commands]


REQUEST_OPS = [(codec.OP_PUT, "put"), (codec.OP_DELETE_RANGE, "delete_range"),
               (codec.OP_TXN, "txn"), (codec.OP_COMPACTION, "compaction")]


@given(st.sampled_from(REQUEST_OPS), st.binary(max_size=300))
def test_etcd_requests_are_wrapped_as_sent_and_decode_to_their_bytes(op_field, request):
    op, field = op_field
    cmd = encode_request(op, request)
    assert cmd == WriteCommand(**{field: request}).SerializeToString()
    assert decode_any_command(cmd) == (op, b"", request)
    assert decode_command(cmd) is None  # never taken for an insert or delete


@settings(deadline=None)
@given(st.sampled_from([0x1A, 0x22, 0x2A, 0x32]), st.binary(max_size=40))
def test_request_fields_decode_like_protobuf(tag, tail):
    data = bytes([tag]) + tail
    assert decode_any_command(data) == (protobuf_decode(data) or (OP_REJECTED, b"", b""))


@settings(deadline=None)
@given(st.sampled_from([0x1A, 0x22, 0x2A, 0x32]), st.integers(0, 300), st.integers(-2, 2),
       st.booleans())
def test_request_fields_with_two_byte_lengths_decode_like_protobuf(tag, size, off, overlong):
    """Lengths of 2 bytes (canonical from 128, or an overlong form of a short one),
    bodies a little shorter or longer than they say."""
    if overlong:
        size %= 0x80
        length = bytes([size | 0x80, 0x00])
    else:
        size += 0x80
        length = codec._varint(size)
    data = bytes([tag]) + length + bytes(range(256)) * 2
    data = data[: 1 + len(length) + max(0, size + off)]
    assert decode_any_command(data) == (protobuf_decode(data) or (OP_REJECTED, b"", b""))


def test_encode_request_refuses_other_ops():
    with pytest.raises(ValueError):
        encode_request(OP_INSERT, b"")

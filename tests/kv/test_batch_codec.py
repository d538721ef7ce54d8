"""Which commands join a batch entry (kv.codec.batchable), and a client may send none."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dengine.errors import InvalidRequest
from dengine.kv import Limits
from dengine.kv.codec import (
    BATCH_OPS,
    OP_AUTH,
    OP_COMPACTION,
    OP_DELETE_RANGE,
    OP_INSERT,
    OP_LEASE_GRANT,
    OP_LEASE_REVOKE,
    OP_PUT,
    OP_REJECTED,
    OP_TXN,
    batch_inserts,
    batchable,
    command_count,
    decode_any_command,
    decode_batch,
    encode_batch,
    encode_delete,
    encode_insert,
    encode_request,
    join_write_request,
    split_write_request,
    stamp_request,
)
from dengine.kv.validate import check_encoded_commands
from dengine.proto import AuthInfo, WriteBatch

STAMP = AuthInfo(username="u", revision=3).SerializeToString()


def test_key_value_writes_join_a_batch_stamped_or_not() -> None:
    for cmd in (encode_insert(b"k", b"v"), encode_delete(b"k"),
                encode_request(OP_PUT, b"\x0a\x01k"), encode_request(OP_DELETE_RANGE, b"\x0a\x01k"),
                encode_request(OP_TXN, b""), stamp_request(encode_insert(b"k", b"v"), STAMP),
                stamp_request(encode_request(OP_PUT, b"\x0a\x01k"), STAMP)):
        assert batchable(cmd), cmd


def test_compaction_lease_auth_and_batch_commands_stay_alone() -> None:
    for cmd in (encode_request(OP_COMPACTION, b"\x08\x01"),
                encode_request(OP_LEASE_GRANT, b"\x08\x05"),
                encode_request(OP_LEASE_REVOKE, b"\x08\x05"),
                stamp_request(encode_request(OP_LEASE_REVOKE, b"\x08\x05"), STAMP),
                encode_request(OP_AUTH, b""),
                encode_batch([encode_insert(b"k", b"v")] * 2),
                b"\xff\xff"):
        assert not batchable(cmd), cmd
    assert command_count(encode_batch([encode_insert(b"k", b"v")] * 3)) == 3
    assert command_count(encode_insert(b"k", b"v")) == 1


def test_a_client_may_not_send_a_batch() -> None:
    with pytest.raises(InvalidRequest, match="command 0: batch commands are made by the "
                                             "leader"):
        check_encoded_commands([encode_batch([encode_insert(b"k", b"v")] * 2)],
                               Limits(max_key_size=8, max_value_size=16, max_request_size=1024))


# -- batches of commands of one size: split, counted and decoded by strided slices


def _reference_split(body: bytes) -> list[bytes]:
    return list(WriteBatch.FromString(body).commands)


def _reference_ops(body: bytes) -> list[tuple[int, bytes, bytes]]:
    """decode_batch as each command alone decodes (decode_any_command)."""
    out = []
    for cmd in _reference_split(body):
        decoded = decode_any_command(cmd)
        out.append(decoded if decoded[0] in BATCH_OPS else (OP_REJECTED, b"", b""))
    return out


# Commands of one length whose bytes differ from a plain insert of that shape where a
# run of one shape must notice: the key length (same total), field 3 instead of the
# value (protobuf decodes the Insert with its key only), the command's own tag (a delete).
def _odd_ones(key: bytes, value: bytes) -> list[bytes]:
    same = encode_insert(key, value)
    out = [same[:-1] + b"\x00"]  # still a plain insert of this shape (another value)
    if len(key) > 1:
        out.append(encode_insert(key[:-1], value + b"x"))
    head = len(same) - len(key) - len(value) - (3 if len(value) >= 0x80 else 2)
    mid_at = head + len(key)
    out.append(same[:mid_at] + b"\x1a" + same[mid_at + 1 :])  # field 3, not the value
    out.append(b"\x12" + same[1:])  # a delete (its Delete with an unknown field 2)
    return [c for c in out if len(c) == len(same)]


@settings(deadline=None, max_examples=300)
@given(st.data())
def test_batches_of_one_size_decode_as_each_command_alone(data) -> None:
    key_size = data.draw(st.integers(1, 40))
    value_size = data.draw(st.sampled_from([0, 1, 5, 120, 127, 128, 129, 300]))
    n = data.draw(st.integers(1, 12))
    keys = data.draw(st.lists(st.binary(min_size=key_size, max_size=key_size),
                              min_size=n, max_size=n))
    values = data.draw(st.lists(st.binary(min_size=value_size, max_size=value_size),
                                min_size=n, max_size=n))
    commands = [encode_insert(k, v) for k, v in zip(keys, values, strict=True)]
    if data.draw(st.booleans()):
        odd = _odd_ones(keys[0], values[0])
        if odd:
            commands[data.draw(st.integers(0, n - 1))] = data.draw(st.sampled_from(odd))
    body = join_write_request(commands)
    assert split_write_request(body) == _reference_split(body) == commands
    assert decode_batch(body) == _reference_ops(body)
    batch = encode_batch(commands)
    assert command_count(batch) == n
    columns = batch_inserts(batch)
    if columns is not None:
        assert [(OP_INSERT, k, v) for k, v in zip(*columns, strict=True)] == _reference_ops(body)


def test_a_run_of_one_shape_is_decoded_by_columns_only_when_each_command_agrees() -> None:
    key, value = b"key", bytes(200)
    plain = [encode_insert(b"k%02d" % i, value) for i in range(5)]
    columns = batch_inserts(encode_batch(plain))
    assert columns is not None and list(columns[0]) == [b"k%02d" % i for i in range(5)]
    for odd in _odd_ones(key, value)[1:]:  # a different key length, field 3
        commands = [encode_insert(key, value), odd, encode_insert(key, value)]
        assert batch_inserts(encode_batch(commands)) is None
        assert decode_batch(join_write_request(commands)) == _reference_ops(
            join_write_request(commands))
    assert batch_inserts(encode_batch([encode_delete(b"abc")] * 3)) is None
    stamped = stamp_request(encode_insert(b"k", b"v"), STAMP)
    assert batch_inserts(encode_batch([stamped] * 3)) is None
    assert batch_inserts(encode_insert(b"k", b"v")) is None
    assert command_count(encode_batch([b""] * 4)) == 4
    assert split_write_request(join_write_request([b""] * 3)) == [b""] * 3


ANY_COMMAND = st.one_of(
    st.builds(encode_insert, st.binary(max_size=20), st.binary(max_size=200)),
    st.builds(encode_delete, st.binary(max_size=20)),
    st.builds(encode_request,
              st.sampled_from([OP_PUT, OP_DELETE_RANGE, OP_TXN, OP_COMPACTION, OP_LEASE_GRANT,
                               OP_LEASE_REVOKE, OP_AUTH]),
              st.binary(max_size=40)),
    st.builds(lambda c: stamp_request(c, STAMP), st.builds(encode_insert, st.binary(
        max_size=8), st.binary(max_size=8))),
    st.builds(lambda c: stamp_request(c, STAMP), st.builds(encode_request, st.just(OP_PUT),
                                                           st.binary(max_size=20))),
    st.binary(max_size=12),  # anything
)


@settings(deadline=None, max_examples=300)
@given(st.lists(ANY_COMMAND, min_size=1, max_size=10))
def test_a_batch_decodes_as_each_command_alone(commands) -> None:
    body = join_write_request(commands)
    assert decode_batch(body) == _reference_ops(body)
    assert command_count(encode_batch(commands)) == len(commands)

"""Which commands join a batch entry (kv.codec.batchable), and a client may send none."""

from __future__ import annotations

import pytest

from dengine.errors import InvalidRequest
from dengine.kv import Limits
from dengine.kv.codec import (
    OP_AUTH,
    OP_COMPACTION,
    OP_DELETE_RANGE,
    OP_LEASE_GRANT,
    OP_LEASE_REVOKE,
    OP_PUT,
    OP_TXN,
    batchable,
    command_count,
    encode_batch,
    encode_delete,
    encode_insert,
    encode_request,
    stamp_request,
)
from dengine.kv.validate import check_encoded_commands
from dengine.proto import AuthInfo

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

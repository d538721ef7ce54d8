"""Validation of keys, values, commands and node ids: the one copy, one set of messages.

Every check raises `InvalidRequest` (code INVALID_REQUEST) with a message that names the
item (`command 2: ...`, `key 0: ...`) when it is one of a batch. The engine runs these
at proposal (design lesson 4: applying a committed entry never fails for input reasons),
whichever API the request came through.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dengine.errors import InvalidRequest
from dengine.kv import etcd_check
from dengine.kv.codec import (
    OP_AUTH,
    OP_BATCH,
    OP_COMPACTION,
    OP_DELETE,
    OP_DELETE_RANGE,
    OP_INSERT,
    OP_LEASE_GRANT,
    OP_LEASE_REVOKE,
    OP_PUT,
    OP_STAMPED,
    OP_TXN,
    decode_any_command,
    encode_command,
)
from dengine.proto import WriteCommand


@dataclass(frozen=True, slots=True)
class Limits:
    """The size limits a node enforces (NodeConfig's max_key_size, max_value_size,
    max_request_size; for etcd requests, max_txn_ops and max_request_bytes)."""

    max_key_size: int
    max_value_size: int
    max_request_size: int
    max_txn_ops: int = etcd_check.DEFAULT_MAX_TXN_OPS
    max_request_bytes: int = etcd_check.DEFAULT_MAX_REQUEST_BYTES

    @classmethod
    def of(cls, config: Any) -> Limits:
        """The limits of a config object (anything with the three size attributes; the
        etcd ones default to etcd's)."""
        return cls(config.max_key_size, config.max_value_size, config.max_request_size,
                   getattr(config, "max_txn_ops", etcd_check.DEFAULT_MAX_TXN_OPS),
                   getattr(config, "max_request_bytes", etcd_check.DEFAULT_MAX_REQUEST_BYTES))


def as_bytes(data: Any, what: str = "key") -> bytes:
    """`data` as bytes (str -> UTF-8); InvalidRequest naming `what` for any other type."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise InvalidRequest(f"{what} must be bytes or str, got {type(data).__name__}")


def _at(where: str) -> str:
    return f"{where}: " if where else ""


def check_key(key: bytes, limits: Limits, where: str = "") -> bytes:
    """`key` if it is a non-empty key within max_key_size."""
    if not key:
        raise InvalidRequest(f"{_at(where)}empty key")
    if len(key) > limits.max_key_size:
        raise InvalidRequest(
            f"{_at(where)}key of {len(key)} bytes exceeds max_key_size "
            f"({limits.max_key_size} bytes)"
        )
    return key


def check_value(value: bytes, limits: Limits, where: str = "") -> bytes:
    """`value` if it is within max_value_size."""
    if len(value) > limits.max_value_size:
        raise InvalidRequest(
            f"{_at(where)}value of {len(value)} bytes exceeds max_value_size "
            f"({limits.max_value_size} bytes)"
        )
    return value


def check_write_size(size: int, limits: Limits) -> None:
    """The encoded commands of one write fit max_request_size."""
    if size > limits.max_request_size:
        raise InvalidRequest(
            f"write of {size} bytes exceeds max_request_size ({limits.max_request_size} bytes)"
        )


def check_keys(keys: Any, limits: Limits) -> list[bytes]:
    """A sequence of keys (bytes or str) as a list of valid keys."""
    if isinstance(keys, bytes | str) or not isinstance(keys, Sequence):
        raise InvalidRequest("keys must be a sequence of bytes")
    out = [as_bytes(k, "key") for k in keys]
    for n, key in enumerate(out):
        check_key(key, limits, f"key {n}")
    return out


_NO_OPERATION = "no operation set (a WriteCommand must set insert or delete)"


def check_command(op: int, key: bytes, value: bytes, limits: Limits, where: str = "") -> None:
    """A decoded command (kv.codec) is an insert or delete of a valid key and value, or
    an etcd request passing etcd's checks (KvError otherwise)."""
    if op == OP_INSERT:
        check_key(key, limits, where)
        check_value(value, limits, where)
    elif op == OP_DELETE:
        check_key(key, limits, where)
    elif op in (OP_PUT, OP_DELETE_RANGE, OP_TXN, OP_COMPACTION):  # an etcd request
        if key:  # its AuthInfo (kv.codec.STAMPED_OPS): the proposing member's to set
            raise InvalidRequest(f"{_at(where)}auth_info is set by the member that proposes "
                                 "a request, not by a client")
        etcd_check.check_encoded(op, value, limits.max_txn_ops, limits.max_request_bytes)
    elif op in (OP_LEASE_GRANT, OP_LEASE_REVOKE):
        # The lease ID and minimum TTL are chosen at proposal by the lease calls.
        raise InvalidRequest(f"{_at(where)}lease commands go through the lease calls "
                             "(lease_grant, lease_revoke), not a raw write")
    elif op == OP_STAMPED:
        raise InvalidRequest(f"{_at(where)}auth_info is set by the member that proposes "
                             "a command, not by a client")
    elif op == OP_AUTH:
        raise InvalidRequest(f"{_at(where)}auth commands go through etcd's Auth service, "
                             "not a raw write")
    elif op == OP_BATCH:
        raise InvalidRequest(f"{_at(where)}batch commands are made by the leader from the "
                             "writes it proposes, not sent by a client")
    else:
        raise InvalidRequest(f"{_at(where)}{_NO_OPERATION}")


def encode_commands(commands: Any, limits: Limits) -> list[bytes]:
    """Validate `WriteCommand` objects and encode them (canonical bytes, kv.codec)."""
    if isinstance(commands, WriteCommand) or not isinstance(commands, Sequence):
        raise InvalidRequest("commands must be a sequence of WriteCommand")
    if not commands:
        raise InvalidRequest("a write needs at least one command")
    out: list[bytes] = []
    total = 0
    for n, cmd in enumerate(commands):
        if not isinstance(cmd, WriteCommand):
            raise InvalidRequest(f"commands must be WriteCommand, got {type(cmd).__name__}")
        which = cmd.WhichOneof("operation")
        if which == "insert":
            op, key, value = OP_INSERT, cmd.insert.key, cmd.insert.value
        elif which == "delete":
            op, key, value = OP_DELETE, cmd.delete.key, b""
        else:
            raise InvalidRequest(f"command {n}: {_NO_OPERATION}")
        check_command(op, key, value, limits, f"command {n}")
        data = encode_command(op, key, value)
        total += len(data)
        out.append(data)
    check_write_size(total, limits)
    return out


def check_encoded_commands(commands: Sequence[bytes], limits: Limits) -> None:
    """Validate encoded commands as the state machine will decode them (kv.codec): a
    command that would apply as rejected is refused here."""
    if not commands:
        raise InvalidRequest("a write needs at least one command")
    total = 0
    for n, data in enumerate(commands):
        check_command(*decode_any_command(data), limits, f"command {n}")
        total += len(data)
    check_write_size(total, limits)


def check_node_id(node_id: Any) -> int:
    """A node id: a positive integer."""
    if isinstance(node_id, bool) or not isinstance(node_id, int) or node_id <= 0:
        raise InvalidRequest(f"node id must be a positive integer, got {node_id!r}")
    return int(node_id)

"""The command codec: `WriteCommand` bytes <-> (op, key, value), without protobuf when it can.

A command is the encoded `WriteCommand` an entry carries (docs/formats.md). Decoding is
on the apply path of every replica, so the canonical encodings of insert and delete are
parsed by hand (and by learnt "shapes"); anything else goes through protobuf, so the
result never differs from protobuf's. Encoding the two commands by hand gives bytes equal
to protobuf's (tested), which the shape cache relies on.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from itertools import repeat

from google.protobuf.message import DecodeError

from dengine.proto import Entry, WriteCommand

# What an entry does to the store (also the op byte of the state machine's WAL records,
# docs/formats.md; storage adds its own bookkeeping ops 5 and 6).
OP_NOOP = 0
OP_INSERT = 1
OP_DELETE = 2
OP_CONFIG = 3  # value = encoded Membership
OP_REJECTED = 4  # a command that did not decode: applied as a failed no-op
# etcd requests (value = the encoded etcdserverpb request as the client sent it, key b"").
OP_PUT = 7
OP_DELETE_RANGE = 8
OP_TXN = 9
OP_COMPACTION = 10
OP_LEASE_GRANT = 11
OP_LEASE_REVOKE = 12
OP_AUTH = 20  # value = an encoded dengine.AuthCommand (kv/auth.py; ops 22-29 reserved)
# A plain insert or delete stamped with its AuthInfo (checked as it applies): key = the
# encoded AuthInfo, value = the command without it (docs/formats.md)
OP_STAMPED = 21
# A batch entry (WriteCommand.batch): value = the encoded WriteBatch, key b"". Never a WAL
# op: the state machine records each of its commands as its own op (docs/formats.md).
OP_BATCH = 30
# The commands a batch may hold: the key-value writes, stamped or not (no compaction,
# lease, auth or batch command: those stay entries of their own).
BATCH_OPS = frozenset((OP_INSERT, OP_DELETE, OP_PUT, OP_DELETE_RANGE, OP_TXN, OP_STAMPED))
_BATCH_TAG = b"\xa2\x01"  # WriteCommand.batch: field 20, length-delimited
# The log entry formats a release applies, announced to its peers (the transport's Hello):
# an older release (format 1, announcing nothing) would apply a batch entry as one
# rejected command and silently diverge, so a leader makes them only for peers of format 2.
LOG_FORMAT_SINGLE = 1
LOG_FORMAT_BATCH = 2
LOG_FORMAT = LOG_FORMAT_BATCH  # this release's


def is_batch_entry(cmd: bytes) -> bool:
    """Whether an entry's command is a batch (only a leader of LOG_FORMAT_BATCH makes them)."""
    return cmd[:2] == _BATCH_TAG

# WriteCommand's request fields: tag byte (field << 3 | 2) -> op
_REQUEST_TAGS = {0x1A: OP_PUT, 0x22: OP_DELETE_RANGE, 0x2A: OP_TXN, 0x32: OP_COMPACTION,
                 0x3A: OP_LEASE_GRANT, 0x42: OP_LEASE_REVOKE, 0x52: OP_AUTH}


def fast_decode_command(cmd: bytes) -> tuple[int, bytes, bytes] | None:
    """Decode the canonical encoding of an insert or delete WriteCommand without protobuf.

    Per-entry protobuf decoding dominates apply cost, so the common shape (one `insert`
    or `delete` field holding key then value, each length a 1- or 2-byte varint) is
    parsed here. Any other byte string returns None and goes through protobuf, so the
    result never differs from protobuf's.
    """
    n = len(cmd)
    if n < 2:
        return None
    tag = cmd[0]
    if tag == 0x0A:
        op = OP_INSERT
    elif tag == 0x12:
        op = OP_DELETE
    else:
        return None
    b = cmd[1]
    if b < 0x80:
        pos = 2
    elif n > 2 and cmd[2] < 0x80:
        b = (b & 0x7F) | cmd[2] << 7
        pos = 3
    else:
        return None
    if pos + b != n:
        return None
    key = value = b""
    if pos < n and cmd[pos] == 0x0A:
        if pos + 1 >= n:
            return None
        b = cmd[pos + 1]
        if b < 0x80:
            pos += 2
        elif pos + 2 < n and cmd[pos + 2] < 0x80:
            b = (b & 0x7F) | cmd[pos + 2] << 7
            pos += 3
        else:
            return None
        key = cmd[pos : pos + b]
        pos += b
    if op == OP_INSERT and pos < n and cmd[pos] == 0x12:
        if pos + 1 >= n:
            return None
        b = cmd[pos + 1]
        if b < 0x80:
            pos += 2
        elif pos + 2 < n and cmd[pos + 2] < 0x80:
            b = (b & 0x7F) | cmd[pos + 2] << 7
            pos += 3
        else:
            return None
        value = cmd[pos : pos + b]
        pos += b
    return (op, key, value) if pos == n else None


_SMALL_VARINTS = [bytes([n]) for n in range(0x80)]
_TWO_BYTE_VARINTS: dict[int, bytes] = {}  # memo, at most 16,256 entries


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL_VARINTS[n]
    if n < 0x4000:
        encoded = _TWO_BYTE_VARINTS.get(n)
        if encoded is None:
            encoded = _TWO_BYTE_VARINTS[n] = bytes((n & 0x7F | 0x80, n >> 7))
        return encoded
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# (key length, value length) -> the bytes of an insert before its key and between its
# key and value (both non-empty), as encode_insert makes them. Bounded as SHAPES.
_INSERT_PARTS: dict[tuple[int, int], tuple[bytes, bytes]] = {}


def encode_insert(key: bytes, value: bytes) -> bytes:
    """The canonical protobuf encoding of WriteCommand(insert=Insert(key, value)), built
    without a message object (the embedded `put` hot path; equal bytes, tested)."""
    parts = _INSERT_PARTS.get((len(key), len(value)))
    if parts is not None:
        return b"".join((parts[0], key, parts[1], value))
    if not (key and value):
        body = (b"\x0a" + _varint(len(key)) + key if key else b"") + (
            b"\x12" + _varint(len(value)) + value if value else b""
        )
        return b"\x0a" + _varint(len(body)) + body
    key_len = _varint(len(key))
    value_len = _varint(len(value))
    body_len = 2 + len(key_len) + len(key) + len(value_len) + len(value)
    head = b"".join((b"\x0a", _varint(body_len), b"\x0a", key_len))
    mid = b"\x12" + value_len
    if len(_INSERT_PARTS) >= _SHAPES_MAX:
        _INSERT_PARTS.clear()
    _INSERT_PARTS[(len(key), len(value))] = (head, mid)
    return b"".join((head, key, mid, value))


def encode_delete(key: bytes) -> bytes:
    """The canonical protobuf encoding of WriteCommand(delete=Delete(key)) (equal bytes,
    tested)."""
    if not key:
        return b"\x12\x00"
    key_len = _varint(len(key))
    return b"".join((b"\x12", _varint(1 + len(key_len) + len(key)), b"\x0a", key_len, key))


def encode_command(op: int, key: bytes, value: bytes = b"") -> bytes:
    """The canonical encoding of an insert (OP_INSERT) or delete (OP_DELETE) command."""
    if op == OP_INSERT:
        return encode_insert(key, value)
    if op == OP_DELETE:
        return encode_delete(key)
    raise ValueError(f"no command encodes op {op}")


# Command shapes seen so far, by the bytes before the key (tag, length, key tag, key
# length). Commands of one workload share a few shapes (same key and value sizes), so a
# known shape decodes with one dict lookup and one struct unpack instead of a byte walk.
# Bounded: cleared when full.
_Shape = tuple[int, Callable[[bytes], tuple[bytes, ...]], bytes, int]  # n, unpack, mid, op
SHAPES: dict[bytes, _Shape] = {}
_SHAPES_MAX = 4096


def command_head(cmd: bytes) -> bytes:
    """The shape key of a command: its bytes up to the key (a 1- or 2-byte outer length)."""
    return cmd[:5] if len(cmd) > 129 else cmd[:4]


def _learn_shape(cmd: bytes, op: int, key: bytes, value: bytes) -> None:
    """Remember the shape of `cmd` if it is the canonical encoding of (op, key, value).

    A command with the same head and length and the same bytes between key and value
    (value tag and length) differs from `cmd` only inside the key and value bytes, so
    protobuf decodes it to the key and value at the same positions.
    """
    k = len(key)
    if not 0 < k < 0x80 or op not in (OP_INSERT, OP_DELETE):
        return
    mid = b"\x12" + _varint(len(value)) if value else b""
    head = (b"\x0a" if op == OP_INSERT else b"\x12") + _varint(2 + k + len(mid) + len(value))
    head += b"\x0a" + bytes([k])
    if head != command_head(cmd) or head + key + mid + value != cmd:
        return
    if len(SHAPES) >= _SHAPES_MAX:
        SHAPES.clear()
    unpack = struct.Struct(f"<{len(head)}x{k}s{len(mid)}s{len(value)}s").unpack
    SHAPES[head] = (len(cmd), unpack, mid, op)


def decode_command(cmd: bytes) -> tuple[int, bytes, bytes] | None:
    """(op, key, value) of an insert or delete command, without protobuf; None otherwise.

    Hot loops inline the known-shape lookup and call this on a miss.
    """
    n = len(cmd)
    shape = SHAPES.get(cmd[:5] if n > 129 else cmd[:4])
    if shape is not None and shape[0] == n:
        key, mid, value = shape[1](cmd)
        if mid == shape[2]:
            return shape[3], key, value
    decoded = fast_decode_command(cmd)
    if decoded is not None:
        _learn_shape(cmd, *decoded)
    return decoded


def decode_any_command(cmd: bytes) -> tuple[int, bytes, bytes]:
    """(op, key, value) of any command bytes: OP_REJECTED when protobuf cannot decode
    them or they set no operation (what every replica applies for such an entry). An
    etcd request decodes to (OP_PUT..OP_LEASE_REVOKE, b"", the request's bytes), or with
    key = its encoded `AuthInfo` when stamped (STAMPED_OPS), an auth command to (OP_AUTH,
    b"", its bytes)."""
    decoded = decode_command(cmd)
    return decoded if decoded is not None else _decode_protobuf(cmd)


def decode_request(cmd: bytes) -> tuple[int, bytes, bytes] | None:
    """(op, b"", request bytes) of a command that is one etcd request field and nothing
    else (how servers wrap a request: tag, varint length, the bytes); None otherwise."""
    op = _REQUEST_TAGS.get(cmd[0]) if cmd else None
    if op is None:
        return None
    n = len(cmd)
    if n > 2 and cmd[1] >= 0x80 and cmd[2] < 0x80:  # a 2-byte length (128 B - 16 KiB)
        return (op, b"", cmd[3:]) if 3 + ((cmd[1] & 0x7F) | cmd[2] << 7) == n else None
    body = _field_body(cmd, 1)
    return None if body is None else (op, b"", body)


def _field_body(cmd: bytes, pos: int) -> bytes | None:
    """The bytes of the length-delimited field whose length varint starts at `pos`, if
    that field runs exactly to the end of `cmd`."""
    start = _field_start(cmd, pos)
    return None if start is None else cmd[start:]


def _field_start(cmd: bytes, pos: int) -> int | None:
    """Where the bytes of the length-delimited field whose length varint starts at `pos`
    begin, if that field runs exactly to the end of `cmd`."""
    n = len(cmd)
    size = 0
    shift = 0
    while True:
        if pos >= n or shift > 28:
            return None
        b = cmd[pos]
        pos += 1
        size |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
    return pos if pos + size == n else None


def encode_batch(commands: list[bytes]) -> bytes:
    """The WriteCommand of a batch entry holding `commands` (encoded WriteCommands of
    BATCH_OPS, in order; equal to protobuf's encoding, tested)."""
    body = join_write_request(commands)
    return _BATCH_TAG + _varint(len(body)) + body


def decode_batch(body: bytes) -> list[tuple[int, bytes, bytes]] | None:
    """(op, key, value) of each command of a batch's WriteBatch bytes, in order: a
    command outside BATCH_OPS as OP_REJECTED. None when the bytes hold no command or are
    not a WriteBatch (the entry then applies as one OP_REJECTED)."""
    columns = _uniform_inserts(body, 0)
    if columns is not None:
        keys, values = columns
        return list(zip(repeat(OP_INSERT, len(keys)), keys, values, strict=True))
    commands = split_write_request(body)
    if not commands:
        return None
    out: list[tuple[int, bytes, bytes]] = []
    put = out.append
    request_tags = _REQUEST_TAGS
    for cmd in commands:
        # an etcd request (tag 0x1A-0x52) is never an insert or delete's shape
        decoded = (decode_request(cmd) if cmd and cmd[0] in request_tags
                   else decode_command(cmd))
        if decoded is None:
            decoded = _decode_protobuf(cmd)
        if decoded[0] not in BATCH_OPS:
            decoded = (OP_REJECTED, b"", b"")
        put(decoded)
    return out


def command_count(cmd: bytes) -> int:
    """The commands an entry's command holds: a batch's count, else 1."""
    if cmd[:2] == _BATCH_TAG:
        start = _field_start(cmd, 2)
        if start is not None and start < len(cmd):
            run = _uniform_run(cmd, start)
            if run is not None:
                return run[0]
            commands = split_write_request(cmd[start:])
            if commands:
                return len(commands)
    return 1


def batch_ops(body: bytes) -> list[tuple[int, bytes, bytes]]:
    """What a batch entry (OP_BATCH, b"", `body`) applies as: `decode_batch`, or one
    OP_REJECTED when its bytes are not a batch."""
    return decode_batch(body) or [(OP_REJECTED, b"", b"")]


def batch_inserts(cmd: bytes) -> tuple[Sequence[bytes], Sequence[bytes]] | None:
    """(keys, values) of a batch entry's command (`encode_batch`'s form) whose commands
    are all plain inserts of one shape (same key and value lengths: what a workload of
    same-sized puts proposes), decoded at C speed; None for any other command (then
    `decode_entry` and `batch_ops`, which give the same inserts for this one)."""
    if cmd[:2] != _BATCH_TAG:
        return None
    start = _field_start(cmd, 2)
    if start is None or start == len(cmd):
        return None
    return _uniform_inserts(cmd, start)


def _uniform_run(data: bytes, start: int) -> tuple[int, int, int] | None:
    """(count, record size, header size) when `data[start:]` is a run of `count`
    WriteRequest records (field 1: tag 0x0A, a 1- or 2-byte length, the command) all of
    the same header, checked by strided slices at C speed; None otherwise.

    Every record then starts with the same tag and length bytes, so `split_write_request`
    would read exactly these records: each of `record size` bytes, the command after the
    header."""
    n = len(data) - start
    if n < 2 or data[start] != 0x0A:
        return None
    size = data[start + 1]
    header = 2
    if size >= 0x80:
        if n < 3 or data[start + 2] >= 0x80:
            return None
        size = (size & 0x7F) | data[start + 2] << 7
        header = 3
    record = header + size
    count, rest = divmod(n, record)
    if rest:
        return None
    for j in range(header):
        if data[start + j :: record] != data[start + j : start + j + 1] * count:
            return None
    return count, record, header


# Structs that take the key and value of each record of a uniform run of one insert
# shape, by (record header size, shape head). Bounded as SHAPES.
_RUN_STRUCTS: dict[tuple[int, bytes], struct.Struct] = {}


def _uniform_inserts(data: bytes, start: int) -> tuple[Sequence[bytes], Sequence[bytes]] | None:
    """(keys, values) of `data[start:]` when it is a `_uniform_run` of plain inserts of
    one known shape (`decode_command` of each would answer these); None otherwise.

    The bytes of every record outside its key and value (the record's header, the
    command's head, the bytes between key and value) are checked equal to the first
    record's by strided slices, so each command has the shape's head, length and middle:
    what `decode_command` checks before it unpacks."""
    run = _uniform_run(data, start)
    if run is None:
        return None
    count, record, header = run
    first = data[start + header : start + record]
    decoded = decode_command(first)  # (learns the shape)
    if decoded is None or decoded[0] != OP_INSERT:
        return None
    head = command_head(first)
    shape = SHAPES.get(head)
    if shape is None or shape[0] != record - header or shape[3] != OP_INSERT:
        return None
    key_at = header + len(head)
    mid_at = key_at + len(decoded[1])
    for j in (*range(header, key_at), *range(mid_at, mid_at + len(shape[2]))):
        at = start + j
        if data[at::record] != data[at : at + 1] * count:
            return None
    unpack_run = _RUN_STRUCTS.get((header, head))
    if unpack_run is None:
        if len(_RUN_STRUCTS) >= _SHAPES_MAX:
            _RUN_STRUCTS.clear()
        unpack_run = _RUN_STRUCTS[(header, head)] = struct.Struct(
            f"<{key_at}x{mid_at - key_at}s{len(shape[2])}x{len(decoded[2])}s")
    keys, values = zip(*unpack_run.iter_unpack(memoryview(data)[start:]), strict=True)
    return keys, values


def batchable(cmd: bytes) -> bool:
    """Whether a (validated) command may join a batch: it decodes to one of BATCH_OPS."""
    if decode_command(cmd) is not None:  # a plain insert or delete
        return True
    request = decode_request(cmd)
    if request is not None:
        return request[0] in BATCH_OPS
    return _decode_protobuf(cmd)[0] in BATCH_OPS


def _decode_protobuf(cmd: bytes) -> tuple[int, bytes, bytes]:
    request = decode_request(cmd)
    if request is not None:
        return request
    if cmd[:2] == _BATCH_TAG:
        body = _field_body(cmd, 2)
        if body is not None:
            return OP_BATCH, b"", body
    try:
        command = WriteCommand.FromString(cmd)
    except DecodeError:
        return OP_REJECTED, b"", b""
    which = command.WhichOneof("operation")
    if command.HasField("auth_info") and which in ("insert", "delete"):
        stamp = command.auth_info.SerializeToString()
        command.ClearField("auth_info")
        return OP_STAMPED, stamp, command.SerializeToString()
    if which == "insert":
        return OP_INSERT, command.insert.key, command.insert.value
    if which == "delete":
        return OP_DELETE, command.delete.key, b""
    if which == "batch":  # not in its canonical form (above): only a leader makes them
        return (OP_REJECTED, b"", b"") if command.HasField("auth_info") else (
            OP_BATCH, b"", command.batch)
    if which in _REQUEST_FIELDS:
        op = _REQUEST_FIELDS[which]
        stamp = b""
        if op in STAMPED_OPS and command.HasField("auth_info"):
            stamp = command.auth_info.SerializeToString()
        return op, stamp, getattr(command, which)
    return OP_REJECTED, b"", b""


# The etcd requests whose permission is checked again as they apply (etcd's
# authApplierV3): decoded with key = the encoded `AuthInfo` of the command (b"": none).
STAMPED_OPS = frozenset((OP_PUT, OP_DELETE_RANGE, OP_TXN, OP_LEASE_REVOKE))
_AUTH_INFO_TAG = b"\x5a"  # WriteCommand.auth_info: field 11, length-delimited


def stamp_request(command: bytes, auth_info: bytes) -> bytes:
    """`command` (an etcd request's WriteCommand, `encode_request`'s form, or a plain
    insert or delete) with its `auth_info` field set to the encoded `AuthInfo` (equal to
    protobuf's encoding)."""
    return command + _AUTH_INFO_TAG + _varint(len(auth_info)) + auth_info


def stamp_command(command: bytes, auth_info: bytes) -> bytes:
    """A client's command (validated) as proposed while auth is on: stamped if it is one
    whose permission is checked as it applies (an insert, a delete, STAMPED_OPS)."""
    op = decode_any_command(command)[0]
    if op in STAMPED_OPS or op in (OP_INSERT, OP_DELETE):
        return stamp_request(command, auth_info)
    return command


_REQUEST_FIELDS = {"put": OP_PUT, "delete_range": OP_DELETE_RANGE, "txn": OP_TXN,
                   "compaction": OP_COMPACTION, "lease_grant": OP_LEASE_GRANT,
                   "lease_revoke": OP_LEASE_REVOKE, "auth": OP_AUTH}


def encode_request(op: int, request: bytes) -> bytes:
    """The WriteCommand carrying an encoded etcd request (op OP_PUT..OP_LEASE_REVOKE, or
    OP_AUTH) as it came, without decoding it (equal to protobuf's encoding, tested)."""
    for tag, tag_op in _REQUEST_TAGS.items():
        if tag_op == op:
            return bytes([tag]) + _varint(len(request)) + request
    raise ValueError(f"no etcd request has op {op}")


def decode_entry(entry: Entry) -> tuple[int, bytes, bytes]:
    """(op, key, value) of any entry: known shapes, the byte decoder, then protobuf."""
    command = entry.payload.command
    decoded = decode_command(command) if command else None
    return decoded if decoded is not None else decode_payload(entry)


def decode_payload(entry: Entry) -> tuple[int, bytes, bytes]:
    """The slow, general path: any payload kind, any encoding, undecodable commands."""
    payload = entry.payload
    kind = payload.WhichOneof("payload")
    if kind == "command":
        return _decode_protobuf(payload.command)
    if kind == "noop":
        return OP_NOOP, b"", b""
    if kind == "config":
        return OP_CONFIG, b"", payload.config.SerializeToString()
    return OP_REJECTED, b"", b""


def split_write_request(data: bytes) -> list[bytes] | None:
    """The encoded commands of an encoded `WriteRequest` (`repeated WriteCommand commands
    = 1`, client.proto), each the bytes the client sent, without decoding them.

    The server proposes these bytes as they are (validated with the codec, which decodes
    them as the state machine will), so no command is decoded into a message and encoded
    again. None when `data` holds anything but field 1 (unknown fields) or is truncated:
    the caller then parses it with protobuf.
    """
    run = _uniform_run(data, 0)
    if run is not None:  # commands of one size: sliced at C speed
        count, record, header = run
        n = count * record
        return list(map(data.__getitem__, map(slice, range(header, header + n, record),
                                               range(record, n + 1, record))))
    out: list[bytes] = []
    put = out.append
    n = len(data)
    pos = 0
    while pos < n:
        if data[pos] != 0x0A or pos + 1 >= n:
            return None
        size = data[pos + 1]
        pos += 2
        if size >= 0x80:  # a longer varint
            size &= 0x7F
            shift = 7
            while True:
                if pos >= n or shift > 63:
                    return None
                b = data[pos]
                pos += 1
                size |= (b & 0x7F) << shift
                if b < 0x80:
                    break
                shift += 7
        end = pos + size
        if end > n:
            return None
        put(data[pos:end])
        pos = end
    return out


def join_write_request(commands: list[bytes]) -> bytes:
    """An encoded `WriteRequest` of encoded commands (the inverse of
    `split_write_request`), without a message built for any of them."""
    parts = [b"\x0a"] * (3 * len(commands))
    parts[1::3] = map(_varint, map(len, commands))
    parts[2::3] = commands
    return b"".join(parts)

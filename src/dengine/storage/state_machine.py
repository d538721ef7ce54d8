"""The `StateMachine` contract (what the node calls to apply, read and snapshot) and an
in-memory implementation.

Methods are plain and synchronous; the node decides which thread calls them. Applying a
committed entry is deterministic and never fails for input reasons: a command that does
not decode is recorded as a failed `ApplyResult`, the same on every replica.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Protocol

from google.protobuf.message import DecodeError

from dengine.api import WriteResult
from dengine.errors import StorageError
from dengine.proto import Entry, LogId, Membership, SnapshotMetadata, WriteCommand
from dengine.storage import kvfile
from dengine.storage.fileio import FileIO, RealDisk

# The outcome of applying one entry: the API's `WriteResult` (one class from the state
# machine to the caller). Later commands (compare-and-swap) fill `value`.
ApplyResult = WriteResult


class StateMachine(Protocol):
    """What the node runtime calls (`dengine.node`), and nothing else.

    Applies need not be durable when `apply_chunk` returns: the Raft log holds what the
    state machine has not synced, and the node keeps the log above `durable_index()`.
    """

    def get(self, key: bytes) -> bytes | None: ...
    def items(self) -> dict[bytes, bytes]: ...
    def apply_chunk(self, entries: Sequence[Entry]) -> list[ApplyResult]: ...
    def last_applied(self) -> LogId: ...
    def durable_index(self) -> int: ...
    def sync(self) -> None: ...
    def checkpoint_headroom(self) -> int: ...
    def membership(self) -> Membership | None: ...
    def snapshot_metadata(self) -> SnapshotMetadata | None: ...
    def apply_snapshot_from_file(self, metadata: SnapshotMetadata, directory: str) -> None: ...
    def close(self) -> None: ...


# What applying an entry did, as recorded in the file state machine's WAL.
OP_NOOP = 0
OP_INSERT = 1
OP_DELETE = 2
OP_CONFIG = 3  # value = encoded Membership
OP_REJECTED = 4  # a command that did not decode: applied as a failed no-op
OP_LAST_APPLIED = 5  # persist_last_applied: (index, term) only
OP_SNAPSHOT_META = 6  # persist_last_snapshot_metadata: value = encoded SnapshotMetadata

Op = tuple[int, int, int, bytes, bytes]  # index, term, op, key, value


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


def encode_insert(key: bytes, value: bytes) -> bytes:
    """The canonical protobuf encoding of WriteCommand(insert=Insert(key, value)), built
    without a message object (the embedded `put` hot path; equal bytes, tested)."""
    if not (key and value):
        body = (b"\x0a" + _varint(len(key)) + key if key else b"") + (
            b"\x12" + _varint(len(value)) + value if value else b""
        )
        return b"\x0a" + _varint(len(body)) + body
    key_len = _varint(len(key))
    value_len = _varint(len(value))
    body_len = 2 + len(key_len) + len(key) + len(value_len) + len(value)
    return b"".join((b"\x0a", _varint(body_len), b"\x0a", key_len, key, b"\x12", value_len, value))


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
        try:
            command = WriteCommand.FromString(payload.command)
        except DecodeError:
            return OP_REJECTED, b"", b""
        which = command.WhichOneof("operation")
        if which == "insert":
            return OP_INSERT, command.insert.key, command.insert.value
        if which == "delete":
            return OP_DELETE, command.delete.key, b""
        return OP_REJECTED, b"", b""
    if kind == "noop":
        return OP_NOOP, b"", b""
    if kind == "config":
        return OP_CONFIG, b"", payload.config.SerializeToString()
    return OP_REJECTED, b"", b""


def plan_chunk(entries: Sequence[Entry], last_applied: int) -> list[Op]:
    """Decode a chunk into ops. Raises StorageError before any change on a bad index order."""
    ops: list[Op] = []
    put = ops.append
    prev = last_applied
    get_shape = SHAPES.get
    for entry in entries:
        index = entry.index
        if index <= prev:
            raise StorageError(
                f"apply_chunk: entry index {index} is not above {prev} "
                f"({'last applied' if prev == last_applied else 'the previous entry'})"
            )
        prev = index
        cmd = entry.payload.command
        n = len(cmd)
        shape = get_shape(cmd[:5] if n > 129 else cmd[:4])
        if shape is None or shape[0] != n or (parts := shape[1](cmd))[1] != shape[2]:
            put((index, entry.term, *decode_entry(entry)))
        else:
            put((index, entry.term, shape[3], parts[0], parts[2]))
    return ops


_new = object.__new__


def results_of(ops: list[Op]) -> list[ApplyResult]:
    """One ApplyResult per op. A frozen dataclass's __init__ costs ~1 us per entry, so a
    succeeded result is built by setting `index` only: the other fields keep the class
    defaults."""
    out: list[ApplyResult] = []
    put = out.append
    for op in ops:
        if op[2] == OP_REJECTED:
            put(ApplyResult(op[0], succeeded=False))
        else:
            result = _new(ApplyResult)
            result.__dict__["index"] = op[0]
            put(result)
    return out


def apply_ops(state: dict[bytes, bytes], ops: list[Op]) -> Membership | None:
    """Apply decoded ops to `state`; return the last membership among them, if any."""
    membership = None
    pop = state.pop
    for _, _, op, key, value in ops:
        if op == OP_INSERT:
            state[key] = value
        elif op == OP_DELETE:
            pop(key, None)
        elif op == OP_CONFIG:
            membership = Membership.FromString(value)
    return membership


def check_snapshot_point(last_applied: LogId, last_included: LogId) -> None:
    """A snapshot must describe exactly the applied state: refuse any other point."""
    if (last_included.index, last_included.term) != (last_applied.index, last_applied.term):
        raise StorageError(
            f"snapshot requested at ({last_included.term}, {last_included.index}) but the state "
            f"machine is at ({last_applied.term}, {last_applied.index})"
        )


def copy_log_id(log_id: LogId) -> LogId:
    return LogId(index=log_id.index, term=log_id.term)


class MemoryStateMachine:
    """A `StateMachine` kept in memory (tests, simulator). Snapshots go through `fileio`."""

    def __init__(self, *, fileio: FileIO | None = None) -> None:
        self._io = fileio or RealDisk()
        self._state: dict[bytes, bytes] = {}
        self._last_applied = LogId()
        self._membership: Membership | None = None
        self._snapshot: SnapshotMetadata | None = None
        self._running = False

    def start(self) -> None:
        self._running = True

    def stop(self) -> None:
        self._running = False

    def is_running(self) -> bool:
        return self._running

    def get(self, key: bytes) -> bytes | None:
        return self._state.get(key)

    def __len__(self) -> int:
        return len(self._state)

    def len(self) -> int:
        return len(self._state)

    def items(self) -> dict[bytes, bytes]:
        """A copy of the whole map (tests and tools)."""
        return dict(self._state)

    def apply_chunk(self, entries: Sequence[Entry]) -> list[ApplyResult]:
        ops = plan_chunk(entries, self._last_applied.index)
        if not ops:
            return []
        membership = apply_ops(self._state, ops)
        if membership is not None:
            self._membership = membership
        self._last_applied = LogId(index=ops[-1][0], term=ops[-1][1])
        return results_of(ops)

    def last_applied(self) -> LogId:
        return copy_log_id(self._last_applied)

    def update_last_applied(self, log_id: LogId) -> None:
        self._last_applied = copy_log_id(log_id)

    def persist_last_applied(self, log_id: LogId) -> None:
        self.update_last_applied(log_id)

    def membership(self) -> Membership | None:
        return self._membership

    def snapshot_metadata(self) -> SnapshotMetadata | None:
        return self._snapshot

    def update_last_snapshot_metadata(self, metadata: SnapshotMetadata) -> None:
        self._snapshot = metadata

    def persist_last_snapshot_metadata(self, metadata: SnapshotMetadata) -> None:
        self._snapshot = metadata

    def generate_snapshot_data(self, directory: str, last_included: LogId) -> bytes:
        check_snapshot_point(self._last_applied, last_included)
        checksum = kvfile.write_snapshot(
            self._io, directory, self._state, last_included, self._membership
        )
        self._snapshot = SnapshotMetadata(
            last_included=copy_log_id(last_included), checksum=checksum,
            membership=self._membership,
        )
        return checksum

    def apply_snapshot_from_file(self, metadata: SnapshotMetadata, directory: str) -> None:
        data = kvfile.read_snapshot(self._io, directory, metadata)
        self._state = data.state
        self._last_applied = data.last_included
        self._membership = data.membership
        self._snapshot = metadata

    def durable_index(self) -> int:
        """In memory, what is applied is as durable as it will get."""
        return self._last_applied.index

    def sync(self) -> None:
        """Nothing to persist in memory."""

    def checkpoint_headroom(self) -> int:
        """No WAL to checkpoint: unbounded."""
        return 1 << 62

    def close(self) -> None:
        self._running = False

    def save_hard_state(self) -> None:
        """Nothing to persist in memory."""

    def flush(self) -> None:
        """Nothing to persist in memory."""

    def reset(self) -> None:
        self._state = {}
        self._last_applied = LogId()
        self._membership = None
        self._snapshot = None

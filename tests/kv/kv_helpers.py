"""Reference encodings (protobuf messages) and entry builders for the kv tests."""

from __future__ import annotations

from hypothesis import strategies as st

from dengine.proto import Entry, Member, Membership, WriteCommand


def insert(key: bytes, value: bytes) -> bytes:
    cmd = WriteCommand()
    cmd.insert.key = key
    cmd.insert.value = value
    return cmd.SerializeToString()


def delete(key: bytes) -> bytes:
    cmd = WriteCommand()
    cmd.delete.key = key
    return cmd.SerializeToString()


def command_entry(index: int, command: bytes, term: int = 1) -> Entry:
    entry = Entry(index=index, term=term)
    entry.payload.command = command
    return entry


def config_entry(index: int, voters: list[int], term: int = 1) -> Entry:
    entry = Entry(index=index, term=term)
    entry.payload.config.CopyFrom(Membership(voters=[Member(id=v) for v in voters]))
    return entry


def protobuf_decode(command: bytes) -> tuple[int, bytes, bytes] | None:
    """(op, key, value) as protobuf reads `command`; None if it sets no operation."""
    from google.protobuf.message import DecodeError

    from dengine.kv import OP_DELETE, OP_INSERT
    from dengine.kv.codec import OP_COMPACTION, OP_DELETE_RANGE, OP_PUT, OP_TXN

    try:
        cmd = WriteCommand.FromString(command)
    except DecodeError:
        return None
    which = cmd.WhichOneof("operation")
    if which == "insert":
        return OP_INSERT, cmd.insert.key, cmd.insert.value
    if which == "delete":
        return OP_DELETE, cmd.delete.key, b""
    requests = {"put": OP_PUT, "delete_range": OP_DELETE_RANGE, "txn": OP_TXN,
                "compaction": OP_COMPACTION}
    if which in requests:
        return requests[which], b"", getattr(cmd, which)
    return None


@st.composite
def damaged(draw: st.DrawFn, command: bytes) -> bytes:
    """`command` with one byte changed, cut short or extended."""
    data = bytearray(command)
    how = draw(st.sampled_from(["flip", "cut", "extend"]))
    if how == "flip" and data:
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif how == "cut":
        del data[draw(st.integers(0, len(data))):]
    else:
        data += draw(st.binary(min_size=1, max_size=4))
    return bytes(data)


@st.composite
def canonical_commands(draw: st.DrawFn) -> bytes:
    key = draw(st.binary(min_size=0, max_size=140))
    if draw(st.booleans()):
        return delete(key)
    return insert(key, draw(st.binary(max_size=draw(st.sampled_from([100, 300, 20000])))))

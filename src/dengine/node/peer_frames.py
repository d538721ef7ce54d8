"""Peer frames: `u32 length | u32 crc32c(payload) | payload` (little-endian; payload = a
PeerFrame), their encoding (a MessageBatch written by hand, each message serialized once),
reading and checking, and writing on a connection that may be closed."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Iterable

import crc32c
from google.protobuf.message import DecodeError

from dengine.errors import DengineError
from dengine.kv.codec import LOG_FORMAT_BATCH, LOG_FORMAT_SINGLE, is_batch_entry
from dengine.proto import Hello, Message, MessageType, PeerFrame

log = logging.getLogger("dengine.node.transport")  # the transport's lines, as before

HEADER = struct.Struct("<II")
# PeerFrame field 2 (MessageBatch) and MessageBatch field 1 (Message), both length-delimited.
_BATCH_TAG = b"\x12"
_MESSAGE_TAG = b"\x0a"
_FRAME_OVERHEAD = 64  # header + tags + varints, rounded up generously
_MSG_APPEND = MessageType.MSG_APPEND


class PeerProtocolError(DengineError):
    """A peer broke the transport protocol (bad frame, wrong cluster, unknown node id)."""

    code = "PEER_PROTOCOL"




def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_frame(payload: bytes) -> bytes:
    """Prefix an encoded PeerFrame with its length and CRC32C."""
    return HEADER.pack(len(payload), crc32c.crc32c(payload)) + payload


def encode_message_frames(messages: Iterable[Message], max_frame_bytes: int) -> list[bytes]:
    """Encode messages as few MessageBatch frames as the size limit allows.

    The batch is written by hand so each message is serialized exactly once, without
    copying it into a MessageBatch first. A single message too big for any frame is
    dropped with an error log: the receiver would refuse it anyway.
    """
    frames: list[bytes] = []
    parts: list[bytes] = []
    size = 0
    budget = max_frame_bytes - _FRAME_OVERHEAD
    for msg in messages:
        data = msg.SerializeToString()
        item = _MESSAGE_TAG + _varint(len(data)) + data
        if len(item) > budget:
            log.error("dropping a %d-byte %s to node %d: over the frame limit %d",
                      len(item), msg.type, msg.to_id, max_frame_bytes)
            continue
        if size + len(item) > budget and parts:
            frames.append(_batch_frame(parts, size))
            parts, size = [], 0
        parts.append(item)
        size += len(item)
    if parts:
        frames.append(_batch_frame(parts, size))
    return frames


def without_batch_appends(messages: list[Message]) -> list[Message]:
    """`messages` less the appends carrying a batch entry."""
    return [m for m in messages if m.type != _MSG_APPEND
            or not any(is_batch_entry(e.payload.command) for e in m.entries)]


class PeerLogFormats:
    """The newest log entry format each peer announced in its latest Hello, and what an
    append may carry to it: a peer of an older format gets no batch entry (it would apply
    one as a rejected command and diverge), so it stays behind, logged, until upgraded."""

    def __init__(self, node_id: int, formats: dict[int, int] | None = None) -> None:
        self.node_id = node_id
        self._formats = {} if formats is None else formats  # the simulator shares one
        self.withheld_appends = 0  # appends carrying batch entries not sent to older peers

    def heard(self, hello: Hello) -> None:
        self._formats[hello.node_id] = hello.log_format or LOG_FORMAT_SINGLE

    def of(self, peer: int) -> int:
        """0: not heard from since the transport started."""
        return self._formats.get(peer, 0)

    def replicable(self, peer: int, messages: list[Message]) -> list[Message]:
        if self._formats.get(peer, 0) >= LOG_FORMAT_BATCH:
            return messages
        kept = without_batch_appends(messages)
        if len(kept) != len(messages):
            self.withheld_appends = n = self.withheld_appends + len(messages) - len(kept)
            if n & (n - 1) == 0:  # the 1st, 2nd, 4th, 8th ... are logged
                log.warning("node %d: node %d runs an older release (log format %d) that "
                            "cannot apply batch entries; not replicating them to it: upgrade "
                            "it (%d appends withheld so far)", self.node_id, peer,
                            self.of(peer), n)
        return kept


def write(writer: asyncio.StreamWriter, data: bytes) -> None:
    """`writer.write(data)`, or ConnectionResetError if the connection is closed or closing.

    uvloop (the server's event loop) raises RuntimeError ("the handler is closed") for a
    write on a connection it has closed, where asyncio ignores it: once uncaught, that
    ended a link's task without a word, and the link never reconnected.
    """
    if writer.is_closing():
        raise ConnectionResetError("the connection is closed")
    writer.write(data)


def _batch_frame(parts: list[bytes], size: int) -> bytes:
    return encode_frame(_BATCH_TAG + _varint(size) + b"".join(parts))


async def read_frame(reader: asyncio.StreamReader, max_frame_bytes: int) -> PeerFrame:
    """Read and check one frame; PeerProtocolError on a bad one, IncompleteReadError at EOF."""
    length, crc = HEADER.unpack(await reader.readexactly(HEADER.size))
    if length > max_frame_bytes:
        raise PeerProtocolError(f"frame of {length} bytes exceeds the limit {max_frame_bytes}")
    payload = await reader.readexactly(length)
    if crc32c.crc32c(payload) != crc:
        raise PeerProtocolError("frame checksum mismatch")
    try:
        return PeerFrame.FromString(payload)
    except DecodeError as e:
        raise PeerProtocolError(f"undecodable frame: {e}") from None

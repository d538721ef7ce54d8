"""HTTP/2 and gRPC wire formats of the hand-framed front end (docs/grpc-frontend.md):
frame and error-code numbers, frame builders, the HPACK fields of answers as constant
bytes, `grpc-timeout` and `grpc-message`. No I/O."""

from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113, 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
# Flags.
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
# Error codes (RFC 9113, 7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0x5, 0x6, 0x7, 0x8
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x9, 0xB
# Settings.
SETTINGS_ENABLE_PUSH, SETTINGS_MAX_CONCURRENT_STREAMS = 0x2, 0x3
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE = (
    0x4, 0x5, 0x6)

DEFAULT_WINDOW = 65_535
MIN_FRAME_SIZE, MAX_FRAME_SIZE_LIMIT = 16_384, (1 << 24) - 1
MAX_WINDOW = (1 << 31) - 1

FRAME_HEADER = struct.Struct(">BHBBI")  # length (24 bits as 8 + 16), type, flags, stream id
MESSAGE_PREFIX = struct.Struct(">BI")  # compressed flag, length


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return FRAME_HEADER.pack(n >> 16, n & 0xFFFF, ftype, flags, sid) + payload


def settings(*pairs: tuple[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def window_update(sid: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", increment))


def rst_stream(sid: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, sid, struct.pack(">I", code))


def goaway(last_sid: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, struct.pack(">II", last_sid, code) + debug)


def _integer(value: int, prefix_bits: int) -> bytes:
    """HPACK integer (RFC 7541, 5.1), first byte's high bits zero."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([value])
    out = [limit]
    value -= limit
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """A header field as an HPACK literal without indexing, new name, no Huffman: the same
    bytes whatever the peer's decoder table holds, so answers can be cached bytes."""
    return b"\0" + _integer(len(name), 7) + name + _integer(len(value), 7) + value


# `:status 200` (static table index 8), the content type and the request encodings taken
# (grpc.aio's answer has them too).
RESPONSE_HEADERS = (b"\x88" + literal(b"content-type", b"application/grpc")
                    + literal(b"grpc-accept-encoding", b"identity, deflate, gzip"))


def error_headers(http: int) -> bytes:
    """The head of an answer to a request that is not gRPC (grpc-go's: HTTP status 405
    or 415 with gRPC's content type)."""
    return literal(b":status", str(http).encode()) + literal(b"content-type",
                                                                b"application/grpc")


def percent_encode(message: str) -> bytes:
    """`grpc-message` as the gRPC spec (PROTOCOL-HTTP2.md) wants it: UTF-8, with bytes
    outside 0x20-0x7E and '%' as %XX."""
    return b"".join(bytes([b]) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b
                    for b in message.encode())


def status_fields(code: int, message: str,
                  metadata: tuple[tuple[str, str | bytes], ...] = ()) -> bytes:
    """The trailer fields of a call: grpc-status, grpc-message, trailing metadata."""
    out = [literal(b"grpc-status", str(code).encode())]
    if message:
        out.append(literal(b"grpc-message", percent_encode(message)))
    for key, value in metadata:
        out.append(literal(key.encode(), value if isinstance(value, bytes) else value.encode()))
    return b"".join(out)


OK_STATUS = status_fields(0, "")  # the trailers of most answers

_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def parse_timeout(value: bytes) -> float:
    """`grpc-timeout` in seconds: 1 to 8 digits and a unit; ValueError otherwise."""
    digits, unit = value[:-1], _TIMEOUT_UNITS.get(value[-1:])
    if unit is None or not 1 <= len(digits) <= 8 or not digits.isdigit():
        raise ValueError(f"malformed grpc-timeout: {value!r}")
    return int(digits) * unit

"""Framing of the native client protocol (docs/formats.md, "Native client protocol").

The bodies are the protobuf messages of `client.proto`; this module only frames them, so
the server (`dengine.server.native`) and the client (`dengine.client.native`) agree on one
definition. All integers are little-endian.

    request  = u32 length | u8 method | u32 request id | u32 timeout ms (0 = none) | body
    response = u32 length | u32 request id | u8 status | body

`length` counts the bytes after itself. Request id 0 is reserved for errors about the
connection as a whole (the server closes it after sending one).
"""

from __future__ import annotations

import struct

# Method numbers are forever, like protobuf field numbers: append, never renumber.
METHODS: tuple[str, ...] = (
    "",  # 0: not a method
    "Write", "Read", "Status", "GetLeader", "MemberList", "AddMember", "PromoteMember",
    "RemoveMember", "KvRead",
    "Lease", "LeaseKeepAlive",  # 10, 11
    "WatchPoll",  # 12
    "ForwardWrite",  # 13: a Write that followers forward for their etcd clients
    "Events",  # 14
    "",  # 15: unused
    "Authenticate",  # 16: etcd's Authenticate; the token becomes the connection's
    "UseToken",  # 17: a token Authenticate issued becomes the connection's
)
METHOD_CODES = {name: code for code, name in enumerate(METHODS) if name}

REQUEST_HEADER = struct.Struct("<IBII")   # length, method, request id, timeout ms
RESPONSE_HEADER = struct.Struct("<IIB")   # length, request id, status
LENGTH = struct.Struct("<I")
REQUEST_OVERHEAD = REQUEST_HEADER.size - LENGTH.size    # bytes of `length` before the body
RESPONSE_OVERHEAD = RESPONSE_HEADER.size - LENGTH.size
MAX_REQUEST_ID = 0xFFFFFFFF
MAX_TIMEOUT_MS = 0xFFFFFFFF

# Response status: OK carries the method's response message; the others a UTF-8 text.
STATUS_OK = 0
STATUS_UNKNOWN_METHOD = 1   # not processed
STATUS_TOO_LARGE = 2        # body above the server's max_request_size; not processed
STATUS_SHUTTING_DOWN = 3    # the server is stopping; not processed (retry elsewhere)
STATUS_MALFORMED = 4        # request id 0: the byte stream is not frames; connection closed
# Request id 0 only; the server closes the connection after it:
STATUS_CLOSING = 5          # idle, or too many connections: no request still outstanding
                            # on it was processed (reconnect and send them again)
STATUS_FRAME_TIMEOUT = 6    # a request frame did not arrive whole in client_frame_timeout_s
# (STATUS_TOO_LARGE with request id 0: a frame far above max_request_size.)
STATUS_NAMES = {
    STATUS_UNKNOWN_METHOD: "unknown method",
    STATUS_TOO_LARGE: "request too large",
    STATUS_SHUTTING_DOWN: "server shutting down",
    STATUS_MALFORMED: "malformed frame",
    STATUS_CLOSING: "connection closed by the server",
    STATUS_FRAME_TIMEOUT: "request frame too slow",
}


def request_frame(method: int, request_id: int, timeout_ms: int, body: bytes) -> bytes:
    return REQUEST_HEADER.pack(len(body) + REQUEST_OVERHEAD, method, request_id,
                               timeout_ms) + body


def response_frame(request_id: int, status: int, body: bytes) -> bytes:
    return RESPONSE_HEADER.pack(len(body) + RESPONSE_OVERHEAD, request_id, status) + body


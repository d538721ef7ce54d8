"""Wire and disk formats (protobuf). Regenerate with `python tools/gen_proto.py`."""

from dengine.proto.client_pb2 import (
    Error,
    GetLeaderRequest,
    GetLeaderResponse,
    ReadConsistency,
    ReadRequest,
    ReadResponse,
    ReadResult,
    StatusRequest,
    StatusResponse,
    WriteRequest,
    WriteResponse,
    WriteResult,
)
from dengine.proto.common_pb2 import (
    Entry,
    EntryPayload,
    HardState,
    LogId,
    Member,
    Membership,
    Noop,
    SnapshotMetadata,
    WriteCommand,
)
from dengine.proto.raft_pb2 import Message, MessageType
from dengine.proto.transport_pb2 import Hello, MessageBatch, PeerFrame, SnapshotChunk

__all__ = [
    "Entry",
    "EntryPayload",
    "Error",
    "GetLeaderRequest",
    "GetLeaderResponse",
    "HardState",
    "Hello",
    "LogId",
    "Member",
    "Membership",
    "Message",
    "MessageBatch",
    "MessageType",
    "Noop",
    "PeerFrame",
    "ReadConsistency",
    "ReadRequest",
    "ReadResponse",
    "ReadResult",
    "SnapshotChunk",
    "SnapshotMetadata",
    "StatusRequest",
    "StatusResponse",
    "WriteCommand",
    "WriteRequest",
    "WriteResponse",
    "WriteResult",
]

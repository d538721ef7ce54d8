"""Wire and disk formats (protobuf). Regenerate with `python tools/gen_proto.py`.

The messages of the peer protocol and of the disk are re-exported here; the client API's
are in `dengine.proto.client_pb2`, the native client protocol's frames in
`dengine.proto.native`.
"""

from dengine.proto.common_pb2 import (
    AuthInfo,
    Entry,
    EntryPayload,
    HardState,
    LogId,
    Member,
    Membership,
    Noop,
    SnapshotMetadata,
    WriteBatch,
    WriteCommand,
)
from dengine.proto.raft_pb2 import Message, MessageType
from dengine.proto.transport_pb2 import Hello, MessageBatch, PeerFrame, SnapshotAck, SnapshotChunk

__all__ = [
    "AuthInfo",
    "Entry",
    "EntryPayload",
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
    "SnapshotAck",
    "SnapshotChunk",
    "SnapshotMetadata",
    "WriteBatch",
    "WriteCommand",
]

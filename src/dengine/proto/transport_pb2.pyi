from dengine.proto import common_pb2 as _common_pb2
from dengine.proto import raft_pb2 as _raft_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Hello(_message.Message):
    __slots__ = ("cluster_id", "node_id", "client_address", "to_id", "peer_address", "removed", "log_format")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TO_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    LOG_FORMAT_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    node_id: int
    client_address: str
    to_id: int
    peer_address: str
    removed: bool
    log_format: int
    def __init__(self, cluster_id: _Optional[str] = ..., node_id: _Optional[int] = ..., client_address: _Optional[str] = ..., to_id: _Optional[int] = ..., peer_address: _Optional[str] = ..., removed: _Optional[bool] = ..., log_format: _Optional[int] = ...) -> None: ...

class MessageBatch(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_raft_pb2.Message]
    def __init__(self, messages: _Optional[_Iterable[_Union[_raft_pb2.Message, _Mapping]]] = ...) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("metadata", "offset", "data", "done", "term", "crc32c", "total_size", "attempt")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    CRC32C_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    metadata: _common_pb2.SnapshotMetadata
    offset: int
    data: bytes
    done: bool
    term: int
    crc32c: int
    total_size: int
    attempt: int
    def __init__(self, metadata: _Optional[_Union[_common_pb2.SnapshotMetadata, _Mapping]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., done: _Optional[bool] = ..., term: _Optional[int] = ..., crc32c: _Optional[int] = ..., total_size: _Optional[int] = ..., attempt: _Optional[int] = ...) -> None: ...

class SnapshotAck(_message.Message):
    __slots__ = ("last_included", "checksum", "offset", "mismatch", "done", "error", "attempt")
    LAST_INCLUDED_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    MISMATCH_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    last_included: _common_pb2.LogId
    checksum: bytes
    offset: int
    mismatch: bool
    done: bool
    error: str
    attempt: int
    def __init__(self, last_included: _Optional[_Union[_common_pb2.LogId, _Mapping]] = ..., checksum: _Optional[bytes] = ..., offset: _Optional[int] = ..., mismatch: _Optional[bool] = ..., done: _Optional[bool] = ..., error: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class PeerFrame(_message.Message):
    __slots__ = ("hello", "messages", "snapshot_chunk", "snapshot_ack")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_CHUNK_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ACK_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    messages: MessageBatch
    snapshot_chunk: SnapshotChunk
    snapshot_ack: SnapshotAck
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., messages: _Optional[_Union[MessageBatch, _Mapping]] = ..., snapshot_chunk: _Optional[_Union[SnapshotChunk, _Mapping]] = ..., snapshot_ack: _Optional[_Union[SnapshotAck, _Mapping]] = ...) -> None: ...

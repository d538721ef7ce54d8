from dengine.proto import common_pb2 as _common_pb2
from dengine.proto import raft_pb2 as _raft_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Hello(_message.Message):
    __slots__ = ("cluster_id", "node_id", "client_address", "to_id")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TO_ID_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    node_id: int
    client_address: str
    to_id: int
    def __init__(self, cluster_id: _Optional[str] = ..., node_id: _Optional[int] = ..., client_address: _Optional[str] = ..., to_id: _Optional[int] = ...) -> None: ...

class MessageBatch(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_raft_pb2.Message]
    def __init__(self, messages: _Optional[_Iterable[_Union[_raft_pb2.Message, _Mapping]]] = ...) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("metadata", "offset", "data", "done")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    metadata: _common_pb2.SnapshotMetadata
    offset: int
    data: bytes
    done: bool
    def __init__(self, metadata: _Optional[_Union[_common_pb2.SnapshotMetadata, _Mapping]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., done: _Optional[bool] = ...) -> None: ...

class PeerFrame(_message.Message):
    __slots__ = ("hello", "messages", "snapshot_chunk")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_CHUNK_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    messages: MessageBatch
    snapshot_chunk: SnapshotChunk
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., messages: _Optional[_Union[MessageBatch, _Mapping]] = ..., snapshot_chunk: _Optional[_Union[SnapshotChunk, _Mapping]] = ...) -> None: ...

from dengine.proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MessageType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MSG_NONE: _ClassVar[MessageType]
    MSG_APPEND: _ClassVar[MessageType]
    MSG_APPEND_RESPONSE: _ClassVar[MessageType]
    MSG_VOTE: _ClassVar[MessageType]
    MSG_VOTE_RESPONSE: _ClassVar[MessageType]
    MSG_PRE_VOTE: _ClassVar[MessageType]
    MSG_PRE_VOTE_RESPONSE: _ClassVar[MessageType]
    MSG_HEARTBEAT: _ClassVar[MessageType]
    MSG_HEARTBEAT_RESPONSE: _ClassVar[MessageType]
    MSG_SNAPSHOT: _ClassVar[MessageType]
    MSG_TIMEOUT_NOW: _ClassVar[MessageType]
    MSG_READ_INDEX: _ClassVar[MessageType]
    MSG_READ_INDEX_RESPONSE: _ClassVar[MessageType]
    MSG_TRANSFER_LEADER: _ClassVar[MessageType]
MSG_NONE: MessageType
MSG_APPEND: MessageType
MSG_APPEND_RESPONSE: MessageType
MSG_VOTE: MessageType
MSG_VOTE_RESPONSE: MessageType
MSG_PRE_VOTE: MessageType
MSG_PRE_VOTE_RESPONSE: MessageType
MSG_HEARTBEAT: MessageType
MSG_HEARTBEAT_RESPONSE: MessageType
MSG_SNAPSHOT: MessageType
MSG_TIMEOUT_NOW: MessageType
MSG_READ_INDEX: MessageType
MSG_READ_INDEX_RESPONSE: MessageType
MSG_TRANSFER_LEADER: MessageType

class Message(_message.Message):
    __slots__ = ("type", "to_id", "from_id", "term", "log_term", "index", "entries", "commit", "reject", "reject_hint", "hint_term", "context", "snapshot")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TO_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_ID_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    LOG_TERM_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    REJECT_HINT_FIELD_NUMBER: _ClassVar[int]
    HINT_TERM_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    type: MessageType
    to_id: int
    from_id: int
    term: int
    log_term: int
    index: int
    entries: _containers.RepeatedCompositeFieldContainer[_common_pb2.Entry]
    commit: int
    reject: bool
    reject_hint: int
    hint_term: int
    context: bytes
    snapshot: _common_pb2.SnapshotMetadata
    def __init__(self, type: _Optional[_Union[MessageType, str]] = ..., to_id: _Optional[int] = ..., from_id: _Optional[int] = ..., term: _Optional[int] = ..., log_term: _Optional[int] = ..., index: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[_common_pb2.Entry, _Mapping]]] = ..., commit: _Optional[int] = ..., reject: _Optional[bool] = ..., reject_hint: _Optional[int] = ..., hint_term: _Optional[int] = ..., context: _Optional[bytes] = ..., snapshot: _Optional[_Union[_common_pb2.SnapshotMetadata, _Mapping]] = ...) -> None: ...

from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LogId(_message.Message):
    __slots__ = ("term", "index")
    TERM_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    term: int
    index: int
    def __init__(self, term: _Optional[int] = ..., index: _Optional[int] = ...) -> None: ...

class WriteCommand(_message.Message):
    __slots__ = ("insert", "delete", "put", "delete_range", "txn", "compaction", "lease_grant", "lease_revoke", "auth", "batch", "auth_info")
    class Insert(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: bytes
        value: bytes
        def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...
    class Delete(_message.Message):
        __slots__ = ("key",)
        KEY_FIELD_NUMBER: _ClassVar[int]
        key: bytes
        def __init__(self, key: _Optional[bytes] = ...) -> None: ...
    INSERT_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    DELETE_RANGE_FIELD_NUMBER: _ClassVar[int]
    TXN_FIELD_NUMBER: _ClassVar[int]
    COMPACTION_FIELD_NUMBER: _ClassVar[int]
    LEASE_GRANT_FIELD_NUMBER: _ClassVar[int]
    LEASE_REVOKE_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    AUTH_INFO_FIELD_NUMBER: _ClassVar[int]
    insert: WriteCommand.Insert
    delete: WriteCommand.Delete
    put: bytes
    delete_range: bytes
    txn: bytes
    compaction: bytes
    lease_grant: bytes
    lease_revoke: bytes
    auth: bytes
    batch: bytes
    auth_info: AuthInfo
    def __init__(self, insert: _Optional[_Union[WriteCommand.Insert, _Mapping]] = ..., delete: _Optional[_Union[WriteCommand.Delete, _Mapping]] = ..., put: _Optional[bytes] = ..., delete_range: _Optional[bytes] = ..., txn: _Optional[bytes] = ..., compaction: _Optional[bytes] = ..., lease_grant: _Optional[bytes] = ..., lease_revoke: _Optional[bytes] = ..., auth: _Optional[bytes] = ..., batch: _Optional[bytes] = ..., auth_info: _Optional[_Union[AuthInfo, _Mapping]] = ...) -> None: ...

class WriteBatch(_message.Message):
    __slots__ = ("commands",)
    COMMANDS_FIELD_NUMBER: _ClassVar[int]
    commands: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, commands: _Optional[_Iterable[bytes]] = ...) -> None: ...

class AuthInfo(_message.Message):
    __slots__ = ("username", "revision")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    username: str
    revision: int
    def __init__(self, username: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class Noop(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Member(_message.Message):
    __slots__ = ("id", "address", "promote")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PROMOTE_FIELD_NUMBER: _ClassVar[int]
    id: int
    address: str
    promote: bool
    def __init__(self, id: _Optional[int] = ..., address: _Optional[str] = ..., promote: _Optional[bool] = ...) -> None: ...

class Membership(_message.Message):
    __slots__ = ("voters", "learners")
    VOTERS_FIELD_NUMBER: _ClassVar[int]
    LEARNERS_FIELD_NUMBER: _ClassVar[int]
    voters: _containers.RepeatedCompositeFieldContainer[Member]
    learners: _containers.RepeatedCompositeFieldContainer[Member]
    def __init__(self, voters: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., learners: _Optional[_Iterable[_Union[Member, _Mapping]]] = ...) -> None: ...

class EntryPayload(_message.Message):
    __slots__ = ("noop", "command", "config")
    NOOP_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    noop: Noop
    command: bytes
    config: Membership
    def __init__(self, noop: _Optional[_Union[Noop, _Mapping]] = ..., command: _Optional[bytes] = ..., config: _Optional[_Union[Membership, _Mapping]] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("index", "term", "payload")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    index: int
    term: int
    payload: EntryPayload
    def __init__(self, index: _Optional[int] = ..., term: _Optional[int] = ..., payload: _Optional[_Union[EntryPayload, _Mapping]] = ...) -> None: ...

class HardState(_message.Message):
    __slots__ = ("term", "voted_for", "commit")
    TERM_FIELD_NUMBER: _ClassVar[int]
    VOTED_FOR_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    term: int
    voted_for: int
    commit: int
    def __init__(self, term: _Optional[int] = ..., voted_for: _Optional[int] = ..., commit: _Optional[int] = ...) -> None: ...

class SnapshotMetadata(_message.Message):
    __slots__ = ("last_included", "checksum", "membership")
    LAST_INCLUDED_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_FIELD_NUMBER: _ClassVar[int]
    last_included: LogId
    checksum: bytes
    membership: Membership
    def __init__(self, last_included: _Optional[_Union[LogId, _Mapping]] = ..., checksum: _Optional[bytes] = ..., membership: _Optional[_Union[Membership, _Mapping]] = ...) -> None: ...

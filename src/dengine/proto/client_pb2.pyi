from dengine.proto import common_pb2 as _common_pb2
from dengine.proto.etcd import kv_pb2 as _kv_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReadConsistency(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    READ_CONSISTENCY_LINEARIZABLE: _ClassVar[ReadConsistency]
    READ_CONSISTENCY_LEASE: _ClassVar[ReadConsistency]
    READ_CONSISTENCY_EVENTUAL: _ClassVar[ReadConsistency]
READ_CONSISTENCY_LINEARIZABLE: ReadConsistency
READ_CONSISTENCY_LEASE: ReadConsistency
READ_CONSISTENCY_EVENTUAL: ReadConsistency

class Error(_message.Message):
    __slots__ = ("code", "message", "leader_id", "leader_address", "grpc_code")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    GRPC_CODE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    leader_id: int
    leader_address: str
    grpc_code: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., leader_id: _Optional[int] = ..., leader_address: _Optional[str] = ..., grpc_code: _Optional[str] = ...) -> None: ...

class WriteRequest(_message.Message):
    __slots__ = ("commands",)
    COMMANDS_FIELD_NUMBER: _ClassVar[int]
    commands: _containers.RepeatedCompositeFieldContainer[_common_pb2.WriteCommand]
    def __init__(self, commands: _Optional[_Iterable[_Union[_common_pb2.WriteCommand, _Mapping]]] = ...) -> None: ...

class WriteResult(_message.Message):
    __slots__ = ("index", "succeeded", "value", "revision", "response", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    succeeded: bool
    value: bytes
    revision: int
    response: bytes
    error: Error
    def __init__(self, index: _Optional[int] = ..., succeeded: _Optional[bool] = ..., value: _Optional[bytes] = ..., revision: _Optional[int] = ..., response: _Optional[bytes] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class WriteResponse(_message.Message):
    __slots__ = ("error", "results", "cluster_id", "member_id", "raft_term")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    RAFT_TERM_FIELD_NUMBER: _ClassVar[int]
    error: Error
    results: _containers.RepeatedCompositeFieldContainer[WriteResult]
    cluster_id: int
    member_id: int
    raft_term: int
    def __init__(self, error: _Optional[_Union[Error, _Mapping]] = ..., results: _Optional[_Iterable[_Union[WriteResult, _Mapping]]] = ..., cluster_id: _Optional[int] = ..., member_id: _Optional[int] = ..., raft_term: _Optional[int] = ...) -> None: ...

class ReadRequest(_message.Message):
    __slots__ = ("keys", "consistency")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    consistency: ReadConsistency
    def __init__(self, keys: _Optional[_Iterable[bytes]] = ..., consistency: _Optional[_Union[ReadConsistency, str]] = ...) -> None: ...

class ReadResult(_message.Message):
    __slots__ = ("found", "value")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    found: bool
    value: bytes
    def __init__(self, found: _Optional[bool] = ..., value: _Optional[bytes] = ...) -> None: ...

class ReadResponse(_message.Message):
    __slots__ = ("error", "results")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    error: Error
    results: _containers.RepeatedCompositeFieldContainer[ReadResult]
    def __init__(self, error: _Optional[_Union[Error, _Mapping]] = ..., results: _Optional[_Iterable[_Union[ReadResult, _Mapping]]] = ...) -> None: ...

class KvReadRequest(_message.Message):
    __slots__ = ("ranges", "consistency", "txns")
    RANGES_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    TXNS_FIELD_NUMBER: _ClassVar[int]
    ranges: _containers.RepeatedScalarFieldContainer[bytes]
    consistency: ReadConsistency
    txns: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, ranges: _Optional[_Iterable[bytes]] = ..., consistency: _Optional[_Union[ReadConsistency, str]] = ..., txns: _Optional[_Iterable[bytes]] = ...) -> None: ...

class KvResult(_message.Message):
    __slots__ = ("response", "error")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    response: bytes
    error: Error
    def __init__(self, response: _Optional[bytes] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class KvReadResponse(_message.Message):
    __slots__ = ("error", "results")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    error: Error
    results: _containers.RepeatedCompositeFieldContainer[KvResult]
    def __init__(self, error: _Optional[_Union[Error, _Mapping]] = ..., results: _Optional[_Iterable[_Union[KvResult, _Mapping]]] = ...) -> None: ...

class LeaseRequest(_message.Message):
    __slots__ = ("grant", "revoke", "time_to_live", "leases")
    GRANT_FIELD_NUMBER: _ClassVar[int]
    REVOKE_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_LIVE_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    grant: bytes
    revoke: bytes
    time_to_live: bytes
    leases: bytes
    def __init__(self, grant: _Optional[bytes] = ..., revoke: _Optional[bytes] = ..., time_to_live: _Optional[bytes] = ..., leases: _Optional[bytes] = ...) -> None: ...

class LeaseResponse(_message.Message):
    __slots__ = ("error", "response")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    error: Error
    response: bytes
    def __init__(self, error: _Optional[_Union[Error, _Mapping]] = ..., response: _Optional[bytes] = ...) -> None: ...

class AuthenticateResponse(_message.Message):
    __slots__ = ("error", "response")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    error: Error
    response: bytes
    def __init__(self, error: _Optional[_Union[Error, _Mapping]] = ..., response: _Optional[bytes] = ...) -> None: ...

class LeaseKeepAliveBatchRequest(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class LeaseKeepAliveBatchResponse(_message.Message):
    __slots__ = ("error", "ttls")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TTLS_FIELD_NUMBER: _ClassVar[int]
    error: Error
    ttls: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, error: _Optional[_Union[Error, _Mapping]] = ..., ttls: _Optional[_Iterable[int]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("error", "node_id", "cluster_id", "role", "term", "leader_id", "leader_address", "commit_index", "applied_index", "first_log_index", "last_log_index", "voters", "learners", "client_address", "snapshot_index", "native_address")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    FIRST_LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    LAST_LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    VOTERS_FIELD_NUMBER: _ClassVar[int]
    LEARNERS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_INDEX_FIELD_NUMBER: _ClassVar[int]
    NATIVE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    error: Error
    node_id: int
    cluster_id: str
    role: str
    term: int
    leader_id: int
    leader_address: str
    commit_index: int
    applied_index: int
    first_log_index: int
    last_log_index: int
    voters: _containers.RepeatedCompositeFieldContainer[_common_pb2.Member]
    learners: _containers.RepeatedCompositeFieldContainer[_common_pb2.Member]
    client_address: str
    snapshot_index: int
    native_address: str
    def __init__(self, error: _Optional[_Union[Error, _Mapping]] = ..., node_id: _Optional[int] = ..., cluster_id: _Optional[str] = ..., role: _Optional[str] = ..., term: _Optional[int] = ..., leader_id: _Optional[int] = ..., leader_address: _Optional[str] = ..., commit_index: _Optional[int] = ..., applied_index: _Optional[int] = ..., first_log_index: _Optional[int] = ..., last_log_index: _Optional[int] = ..., voters: _Optional[_Iterable[_Union[_common_pb2.Member, _Mapping]]] = ..., learners: _Optional[_Iterable[_Union[_common_pb2.Member, _Mapping]]] = ..., client_address: _Optional[str] = ..., snapshot_index: _Optional[int] = ..., native_address: _Optional[str] = ...) -> None: ...

class GetLeaderRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetLeaderResponse(_message.Message):
    __slots__ = ("error", "leader_id", "leader_address", "term")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    error: Error
    leader_id: int
    leader_address: str
    term: int
    def __init__(self, error: _Optional[_Union[Error, _Mapping]] = ..., leader_id: _Optional[int] = ..., leader_address: _Optional[str] = ..., term: _Optional[int] = ...) -> None: ...

class MemberStatus(_message.Message):
    __slots__ = ("id", "address", "client_address", "role", "match_index", "is_leader")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    MATCH_INDEX_FIELD_NUMBER: _ClassVar[int]
    IS_LEADER_FIELD_NUMBER: _ClassVar[int]
    id: int
    address: str
    client_address: str
    role: str
    match_index: int
    is_leader: bool
    def __init__(self, id: _Optional[int] = ..., address: _Optional[str] = ..., client_address: _Optional[str] = ..., role: _Optional[str] = ..., match_index: _Optional[int] = ..., is_leader: _Optional[bool] = ...) -> None: ...

class MemberListRequest(_message.Message):
    __slots__ = ("leader_only",)
    LEADER_ONLY_FIELD_NUMBER: _ClassVar[int]
    leader_only: bool
    def __init__(self, leader_only: _Optional[bool] = ...) -> None: ...

class MemberListResponse(_message.Message):
    __slots__ = ("error", "members", "leader_id", "term")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    error: Error
    members: _containers.RepeatedCompositeFieldContainer[MemberStatus]
    leader_id: int
    term: int
    def __init__(self, error: _Optional[_Union[Error, _Mapping]] = ..., members: _Optional[_Iterable[_Union[MemberStatus, _Mapping]]] = ..., leader_id: _Optional[int] = ..., term: _Optional[int] = ...) -> None: ...

class AddMemberRequest(_message.Message):
    __slots__ = ("node_id", "address", "promote_when_caught_up")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PROMOTE_WHEN_CAUGHT_UP_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    address: str
    promote_when_caught_up: bool
    def __init__(self, node_id: _Optional[int] = ..., address: _Optional[str] = ..., promote_when_caught_up: _Optional[bool] = ...) -> None: ...

class PromoteMemberRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    def __init__(self, node_id: _Optional[int] = ...) -> None: ...

class RemoveMemberRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    def __init__(self, node_id: _Optional[int] = ...) -> None: ...

class MemberChangeResponse(_message.Message):
    __slots__ = ("error", "members")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    error: Error
    members: _containers.RepeatedCompositeFieldContainer[MemberStatus]
    def __init__(self, error: _Optional[_Union[Error, _Mapping]] = ..., members: _Optional[_Iterable[_Union[MemberStatus, _Mapping]]] = ...) -> None: ...

class EventsRequest(_message.Message):
    __slots__ = ("kind", "known", "leader_id", "term", "voters", "learners", "wait_ms")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        LEADER: _ClassVar[EventsRequest.Kind]
        MEMBERS: _ClassVar[EventsRequest.Kind]
    LEADER: EventsRequest.Kind
    MEMBERS: EventsRequest.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    VOTERS_FIELD_NUMBER: _ClassVar[int]
    LEARNERS_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    kind: EventsRequest.Kind
    known: bool
    leader_id: int
    term: int
    voters: _containers.RepeatedCompositeFieldContainer[_common_pb2.Member]
    learners: _containers.RepeatedCompositeFieldContainer[_common_pb2.Member]
    wait_ms: int
    def __init__(self, kind: _Optional[_Union[EventsRequest.Kind, str]] = ..., known: _Optional[bool] = ..., leader_id: _Optional[int] = ..., term: _Optional[int] = ..., voters: _Optional[_Iterable[_Union[_common_pb2.Member, _Mapping]]] = ..., learners: _Optional[_Iterable[_Union[_common_pb2.Member, _Mapping]]] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class EventsResponse(_message.Message):
    __slots__ = ("error", "leader_id", "leader_address", "term", "voters", "learners")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    VOTERS_FIELD_NUMBER: _ClassVar[int]
    LEARNERS_FIELD_NUMBER: _ClassVar[int]
    error: Error
    leader_id: int
    leader_address: str
    term: int
    voters: _containers.RepeatedCompositeFieldContainer[_common_pb2.Member]
    learners: _containers.RepeatedCompositeFieldContainer[_common_pb2.Member]
    def __init__(self, error: _Optional[_Union[Error, _Mapping]] = ..., leader_id: _Optional[int] = ..., leader_address: _Optional[str] = ..., term: _Optional[int] = ..., voters: _Optional[_Iterable[_Union[_common_pb2.Member, _Mapping]]] = ..., learners: _Optional[_Iterable[_Union[_common_pb2.Member, _Mapping]]] = ...) -> None: ...

class WatchPollRequest(_message.Message):
    __slots__ = ("key", "range_end", "after_revision", "prev_kv", "noput", "nodelete", "wait_ms", "max_events", "require_leader")
    KEY_FIELD_NUMBER: _ClassVar[int]
    RANGE_END_FIELD_NUMBER: _ClassVar[int]
    AFTER_REVISION_FIELD_NUMBER: _ClassVar[int]
    PREV_KV_FIELD_NUMBER: _ClassVar[int]
    NOPUT_FIELD_NUMBER: _ClassVar[int]
    NODELETE_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_EVENTS_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_LEADER_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    range_end: bytes
    after_revision: int
    prev_kv: bool
    noput: bool
    nodelete: bool
    wait_ms: int
    max_events: int
    require_leader: bool
    def __init__(self, key: _Optional[bytes] = ..., range_end: _Optional[bytes] = ..., after_revision: _Optional[int] = ..., prev_kv: _Optional[bool] = ..., noput: _Optional[bool] = ..., nodelete: _Optional[bool] = ..., wait_ms: _Optional[int] = ..., max_events: _Optional[int] = ..., require_leader: _Optional[bool] = ...) -> None: ...

class WatchPollResponse(_message.Message):
    __slots__ = ("error", "events", "revision", "compact_revision", "header_revision", "member_id")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    COMPACT_REVISION_FIELD_NUMBER: _ClassVar[int]
    HEADER_REVISION_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    error: Error
    events: _containers.RepeatedCompositeFieldContainer[_kv_pb2.Event]
    revision: int
    compact_revision: int
    header_revision: int
    member_id: int
    def __init__(self, error: _Optional[_Union[Error, _Mapping]] = ..., events: _Optional[_Iterable[_Union[_kv_pb2.Event, _Mapping]]] = ..., revision: _Optional[int] = ..., compact_revision: _Optional[int] = ..., header_revision: _Optional[int] = ..., member_id: _Optional[int] = ...) -> None: ...

"""Permission checks of the native protocol's and dengine's own gRPC service's requests
under etcd's auth (docs/auth.md): each method's request read as the etcd requests it
amounts to, and checked by `server.etcd.gate` as etcd checks those."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError

from dengine.kv.codec import (
    OP_DELETE,
    OP_DELETE_RANGE,
    OP_INSERT,
    OP_PUT,
    OP_TXN,
    decode_any_command,
    split_write_request,
)
from dengine.proto.client_pb2 import (
    READ_CONSISTENCY_EVENTUAL,
    KvReadRequest,
    KvReadResponse,
    LeaseKeepAliveBatchResponse,
    LeaseRequest,
    LeaseResponse,
    MemberChangeResponse,
    ReadRequest,
    ReadResponse,
    WatchPollRequest,
    WatchPollResponse,
    WriteRequest,
    WriteResponse,
)
from dengine.proto.etcd import rpc_pb2
from dengine.proto.etcd.rpc_pb2 import RangeRequest, TxnRequest
from dengine.server.etcd.gate import FORWARDED_METADATA, Check, check_kv_write, keys_of


def _check_write(request: bytes) -> Check:
    """A Write's commands as etcd's requests: a plain insert is a put of its key, a plain
    delete a delete of its key (commands that do not decode are refused by the engine)."""
    def check(auth: Any, user: str, store: Any) -> None:
        commands = split_write_request(request)
        if commands is None:
            commands = [c.SerializeToString() for c in WriteRequest.FromString(request).commands]
        for data in commands:
            op, key, value = decode_any_command(data)
            try:
                if op == OP_INSERT:
                    check_kv_write("Put", rpc_pb2.PutRequest(key=key))(auth, user, store)
                elif op == OP_DELETE:
                    auth.check_delete_range(user, rpc_pb2.DeleteRangeRequest(key=key))
                elif op in _ETCD_WRITES:
                    method, cls = _ETCD_WRITES[op]
                    check_kv_write(method, cls.FromString(value))(auth, user, store)
            except DecodeError:
                continue
    return check


_ETCD_WRITES: dict[int, tuple[str, Any]] = {
    OP_PUT: ("Put", rpc_pb2.PutRequest), OP_DELETE_RANGE: ("DeleteRange",
                                                           rpc_pb2.DeleteRangeRequest),
    OP_TXN: ("Txn", TxnRequest),
}


def _check_read(request: bytes) -> Check:
    """A Read: a range of each key."""
    def check(auth: Any, user: str, store: Any) -> None:
        for key in ReadRequest.FromString(request).keys:
            auth.check_range(user, key, b"")
    return check


def _check_kv_read(request: bytes) -> Check:
    def check(auth: Any, user: str, store: Any) -> None:
        req = KvReadRequest.FromString(request)
        for data in req.ranges:
            r = RangeRequest.FromString(data)
            auth.check_range(user, r.key, r.range_end)
        for data in req.txns:
            check_kv_write("Txn", TxnRequest.FromString(data))(auth, user, store)
    return check


def _check_watch(request: bytes) -> Check:
    def check(auth: Any, user: str, store: Any) -> None:
        req = WatchPollRequest.FromString(request)
        auth.check_range(user, req.key, req.range_end)
    return check


def _check_lease(request: bytes) -> Check:
    """A revoke needs write on the lease's keys; the other lease calls a valid token."""
    def check(auth: Any, user: str, store: Any) -> None:
        req = LeaseRequest.FromString(request)
        if req.WhichOneof("request") == "revoke":
            lease_id = rpc_pb2.LeaseRevokeRequest.FromString(req.revoke).ID
            auth.check_lease_keys(user, keys_of(store, lease_id))
    return check


def _check_admin(request: bytes) -> Check:
    return lambda auth, user, store: auth.check_admin(user)


def _check_token(request: bytes) -> Check | None:
    return None


# The methods that read or change data: their responses and permission checks, as etcd's
# for the same requests (docs/auth.md). Status, GetLeader, MemberList, Events and
# Authenticate are open.
CHECKS: dict[str, tuple[Any, Callable[[bytes], Check | None]]] = {
    "Write": (WriteResponse, _check_write), "ForwardWrite": (WriteResponse, _check_write),
    "Read": (ReadResponse, _check_read), "KvRead": (KvReadResponse, _check_kv_read),
    "Lease": (LeaseResponse, _check_lease),
    "LeaseKeepAlive": (LeaseKeepAliveBatchResponse, _check_token),
    "WatchPoll": (WatchPollResponse, _check_watch),
    "AddMember": (MemberChangeResponse, _check_admin),
    "PromoteMember": (MemberChangeResponse, _check_admin),
    "RemoveMember": (MemberChangeResponse, _check_admin),
}


def linearizable(method: str, request: bytes) -> Callable[[], bool] | None:
    """For a read: whether it is a linearizable (or lease) one, whose permissions are
    checked on the state it is served from, after a ReadIndex round (etcd's order; a
    serializable read is checked on the member's applied state, as etcd's)."""
    message = _READS.get(method)
    if message is None:
        return None
    return lambda: message.FromString(request).consistency != READ_CONSISTENCY_EVENTUAL


_READS: dict[str, Any] = {"Read": ReadRequest, "KvRead": KvReadRequest}


class WithToken:
    """A request context that carries `token` as gRPC's `token` metadata would."""

    def __init__(self, token: str, context: Any) -> None:
        self._token = token
        self._context = context

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("token", self._token),)


class _Forwarded:
    """A ForwardWrite's context: a follower's (from a member's connection, it acts for no
    client certificate's user, `Gate`)."""

    def __init__(self, context: Any) -> None:
        self._context = context

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (*(self._context.invocation_metadata() or ()), (FORWARDED_METADATA, "1"))

    def auth_context(self) -> Any:
        auth_context = getattr(self._context, "auth_context", None)
        return auth_context() if auth_context is not None else {}


async def check_request(gate: Any, method: str, check: Check | None, request: bytes,
                        context: Any) -> bytes:
    """The permission check of a method's request (CHECKS); for a Write or ForwardWrite
    while auth is on, the stamp its commands are proposed with (`Gate.check_write`:
    checked again as they apply), else b""."""
    if method in ("Write", "ForwardWrite"):
        return (await gate.check_write(as_checked(method, context), check))[1]
    await gate.check(as_checked(method, context), check, fresh=linearizable(method, request))
    return b""


def as_checked(method: str, context: Any) -> Any:
    """The context a method's permission check sees."""
    return _Forwarded(context) if method == "ForwardWrite" else context

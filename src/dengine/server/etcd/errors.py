"""etcd's errors on the wire: the gRPC status codes and exact messages of etcd's `rpctypes`
(clients match on both), and how dengine's errors map to them."""

from __future__ import annotations

import logging

import grpc

from dengine.errors import (
    DengineError,
    InvalidRequest,
    KvError,
    LeadershipLost,
    NotLeader,
    Overloaded,
    StorageError,
    Timeout,
    Unavailable,
)
from dengine.kv.etcd_check import TOO_MANY_REQUESTS

log = logging.getLogger("dengine.server.etcd")

NO_LEADER = "etcdserver: no leader"
TIMED_OUT = "etcdserver: request timed out"
TIMED_OUT_LEADER_FAIL = "etcdserver: request timed out, possibly due to previous leader failure"
TIMED_OUT_CONNECTION_LOST = "etcdserver: request timed out, possibly due to connection lost"
LEADER_CHANGED = "etcdserver: leader changed"
STOPPED = "etcdserver: server stopped"


def etcd_status(exc: BaseException, *, leader_known: bool, running: bool
                ) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and etcd message of an error met serving a request
    (`leader_known`, `running`: this member's state now, which tells etcd's Unavailable
    messages apart)."""
    if isinstance(exc, KvError):  # etcd's own error already
        return grpc.StatusCode[exc.grpc_code], exc.message
    unavailable = grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, LeadershipLost):
        return unavailable, TIMED_OUT_LEADER_FAIL
    if isinstance(exc, Timeout):
        return unavailable, TIMED_OUT
    if isinstance(exc, Overloaded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, TOO_MANY_REQUESTS
    if isinstance(exc, StorageError):
        return unavailable, STOPPED
    if isinstance(exc, NotLeader | Unavailable):
        if not running:
            return unavailable, STOPPED
        if (isinstance(exc, NotLeader) and not exc.leader_id) or not leader_known:
            return unavailable, NO_LEADER
        return unavailable, LEADER_CHANGED
    if isinstance(exc, InvalidRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, exc.message
    if isinstance(exc, DengineError):
        return grpc.StatusCode.UNKNOWN, exc.message
    log.error("etcd API: unexpected error", exc_info=exc)
    return grpc.StatusCode.UNKNOWN, f"internal error: {exc!r}"

"""A request of etcd's KV API decoded once and checked as etcd checks it before proposing
(`kv.etcd_check`: etcd's errors)."""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError

from dengine.config import NodeConfig
from dengine.errors import KvError
from dengine.kv import etcd_check
from dengine.node.engine import KV_COMPACTION, KV_DELETE_RANGE, KV_PUT, KV_TXN
from dengine.proto.etcd import rpc_pb2

_MESSAGES: dict[int, Any] = {
    KV_PUT: rpc_pb2.PutRequest,
    KV_DELETE_RANGE: rpc_pb2.DeleteRangeRequest,
    KV_TXN: rpc_pb2.TxnRequest,
    KV_COMPACTION: rpc_pb2.CompactionRequest,
}


# etcd's gRPC server takes messages up to its max request bytes plus this much (its
# grpcOverheadBytes); larger ones are refused by gRPC itself.
ETCD_GRPC_OVERHEAD = 512 * 1024


def check_message_size(size: int, config: NodeConfig) -> None:
    """etcd's answer to a message above its gRPC server's limit (max_request_bytes + 512
    KiB): ResourceExhausted, in Go gRPC's words. This node's gRPC server also serves
    dengine's own service, whose limit (max_request_size) may be higher, so the etcd
    handlers check the size of what they got themselves."""
    limit = config.max_request_bytes + ETCD_GRPC_OVERHEAD
    if size > limit:
        raise KvError("RESOURCE_EXHAUSTED",
                      f"grpc: received message larger than max ({size} vs. {limit})")


def decode(cls: Any, data: bytes) -> Any:
    """`data` as a `cls`; etcd's answer (Internal, "grpc: error unmarshalling request")
    when it is not one."""
    try:
        return cls.FromString(data)
    except DecodeError as e:
        raise KvError("INTERNAL", f"grpc: error unmarshalling request: {e}") from None


def range_request(data: bytes, config: NodeConfig) -> rpc_pb2.RangeRequest:
    # No "request is too large" for reads: etcd checks that of proposals only.
    check_message_size(len(data), config)
    req = decode(rpc_pb2.RangeRequest, data)
    etcd_check.check_range(req)
    return req


def check_write(field: int, data: bytes, config: NodeConfig) -> Any:
    """The request in `data`, decoded; KvError (etcd's) unless it may be proposed (or,
    a read-only txn, served as a read). In etcd's order: the request's own checks, then
    the size of a proposal (a read-only txn is none)."""
    check_message_size(len(data), config)
    req = decode(_MESSAGES[field], data)
    if field == KV_PUT:
        etcd_check.check_put(req)
    elif field == KV_DELETE_RANGE:
        etcd_check.check_delete_range(req)
    elif field == KV_TXN:
        etcd_check.check_txn(req, config.max_txn_ops)
        if etcd_check.is_txn_readonly(req):
            return req
    etcd_check.check_request_size(len(data), config.max_request_bytes)
    return req

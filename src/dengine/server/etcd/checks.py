"""A request of etcd's KV API decoded once and checked as etcd checks it before proposing
(`kv.etcd_check`: etcd's errors)."""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError

from dengine.config import NodeConfig
from dengine.kv import etcd_check
from dengine.node.engine import KV_COMPACTION, KV_DELETE_RANGE, KV_PUT, KV_TXN
from dengine.proto.etcd import rpc_pb2

_MESSAGES: dict[int, Any] = {
    KV_PUT: rpc_pb2.PutRequest,
    KV_DELETE_RANGE: rpc_pb2.DeleteRangeRequest,
    KV_TXN: rpc_pb2.TxnRequest,
    KV_COMPACTION: rpc_pb2.CompactionRequest,
}


def decode(cls: Any, data: bytes) -> Any:
    """`data` as a `cls`; InvalidArgument when it is not one."""
    try:
        return cls.FromString(data)
    except DecodeError as e:
        raise etcd_check.invalid(f"dengine: malformed {cls.__name__}: {e}") from None


def range_request(data: bytes, config: NodeConfig) -> rpc_pb2.RangeRequest:
    etcd_check.check_request_size(len(data), config.max_request_bytes)
    req = decode(rpc_pb2.RangeRequest, data)
    etcd_check.check_range(req)
    return req


def check_write(field: int, data: bytes, config: NodeConfig) -> Any:
    """The request in `data`, decoded; KvError (etcd's) unless it may be proposed."""
    etcd_check.check_request_size(len(data), config.max_request_bytes)
    req = decode(_MESSAGES[field], data)
    if field == KV_PUT:
        etcd_check.check_put(req)
    elif field == KV_DELETE_RANGE:
        etcd_check.check_delete_range(req)
    elif field == KV_TXN:
        etcd_check.check_txn(req, config.max_txn_ops)
    return req

"""etcd's `etcdserverpb.KV` service on a node: Range, Put, DeleteRange, Txn, Compact.

Writes are proposed as the request bytes the client sent (checked by `kv.etcd_check`,
which decodes them once, with etcd's errors), wrapped in a log command without being
encoded again (`Engine.kv_request`); a follower forwards them to the leader over the
native protocol (`forward.py`). Ranges are served by this member: after a ReadIndex
round of its own (linearizable), or from its applied state (`serializable`). Every
answer carries the response header: cluster id, this member's id, the Raft term and the
store revision.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import grpc
from google.protobuf.message import Message as ProtoMessage

from dengine.config import NodeConfig
from dengine.errors import NotLeader, Overloaded
from dengine.kv import EVENTUAL, LINEARIZABLE, etcd_check
from dengine.node.engine import (
    DEFAULT_TIMEOUT,
    KV_COMPACTION,
    KV_DELETE_RANGE,
    KV_PUT,
    KV_TXN,
    Engine,
    wrap_kv_request,
)
from dengine.proto.etcd import rpc_pb2
from dengine.server.etcd import checks
from dengine.server.etcd.errors import etcd_status
from dengine.server.etcd.forward import APPLIED_INDEX, Forwarder, KvForwarder, forwarded
from dengine.server.etcd.gate import Gate, check_kv_write

log = logging.getLogger("dengine.server.etcd")

SERVICE = "etcdserverpb.KV"
# Leave the engine this much of the gRPC deadline to answer with its own timeout.
_DEADLINE_MARGIN = 0.05

# method -> (WriteCommand field, response message)
_WRITES: dict[str, tuple[int, type[ProtoMessage]]] = {
    "Put": (KV_PUT, rpc_pb2.PutResponse),
    "DeleteRange": (KV_DELETE_RANGE, rpc_pb2.DeleteRangeResponse),
    "Txn": (KV_TXN, rpc_pb2.TxnResponse),
    "Compact": (KV_COMPACTION, rpc_pb2.CompactionResponse),
}
_METHODS = {field: method for method, (field, _) in _WRITES.items()}


class CallMetadata:
    """A call's context whose request metadata is read once: grpc.aio builds the tuple
    again at every `invocation_metadata()`, and a write asks for it up to three times
    (its token for the gate, whether it was forwarded, its token to forward)."""

    __slots__ = ("_context", "_metadata")

    def __init__(self, context: Any) -> None:
        self._context = context
        self._metadata = tuple(context.invocation_metadata() or ())

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()

    def __getattr__(self, name: str) -> Any:  # auth_context, peer, ...: the call's own
        return getattr(self._context, name)


def timeout_of(context: Any) -> float | None:
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return max(0.001, remaining - _DEADLINE_MARGIN)


class EtcdBase:
    """What the etcd services share: the engine, the header, errors as etcd's statuses,
    the auth gate (one per node: EtcdApi gives every service the same)."""

    def __init__(self, engine: Engine, config: NodeConfig) -> None:
        self._engine = engine
        self._config = config
        self.gate = Gate(engine)

    def stamp(self, header: Any, revision: int | None = None) -> None:
        """Fill a response header with this member's ids and term (and `revision`)."""
        ids = self._engine.header_ids()
        header.cluster_id = ids.cluster_id
        header.member_id = ids.member_id
        header.raft_term = ids.raft_term
        if revision is not None:
            header.revision = revision

    async def fail(self, context: Any, exc: BaseException) -> NoReturn:
        """Answer with the etcd status of `exc` (grpc.aio's abort raises)."""
        engine = self._engine
        code, message = etcd_status(exc, leader_known=bool(engine.leader_id),
                                    running=engine.running)
        await context.abort(code, message)
        raise AssertionError("context.abort returned")


class KvService(EtcdBase):
    """Handlers of `etcdserverpb.KV` over an Engine."""

    def __init__(self, engine: Engine, config: NodeConfig, forwarder: KvForwarder,
                 token_forwarder: Forwarder | None = None) -> None:
        super().__init__(engine, config)
        self._token_forwarder = token_forwarder
        self._forwarder = forwarder
        self.pending_writes = 0
        self.pending_write_bytes = 0

    def handlers(self) -> dict[str, Callable[[bytes, Any], Awaitable[bytes]]]:
        out: dict[str, Callable[[bytes, Any], Awaitable[bytes]]] = {"Range": self.range}
        for method, (field, response) in _WRITES.items():
            out[method] = self._writer(method, field, response)
        return out

    def generic_handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            name: grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=None, response_serializer=None)
            for name, fn in self.handlers().items()
        })

    async def range(self, request: bytes, context: Any) -> bytes:
        try:
            req = checks.range_request(request, self._config)
            mode = EVENTUAL if req.serializable else LINEARIZABLE
            limit = self._config.max_response_bytes
            resp = await self.gate.read(
                context, lambda auth, user, store: auth.check_range(user, req.key, req.range_end),
                lambda store: store.range(req, limit), mode, timeout_of(context))
            self.stamp(resp.header)
            return bytes(resp.SerializeToString())
        except Exception as exc:
            await self.fail(context, exc)

    async def _read_txn(self, req: rpc_pb2.TxnRequest, context: Any) -> bytes:
        """A txn of ranges only is a read, as etcd serves it: no log entry, linearizable
        unless every range is serializable."""
        mode = EVENTUAL if etcd_check.is_txn_serializable(req) else LINEARIZABLE
        limit = self._config.max_response_bytes
        resp = await self.gate.read(
            context, check_kv_write("Txn", req), lambda store: store.read_txn(req, limit),
            mode, timeout_of(context))
        self.stamp(resp.header)
        return bytes(resp.SerializeToString())

    def _writer(
        self, method: str, field: int, response: type[ProtoMessage]
    ) -> Callable[[bytes, Any], Awaitable[bytes]]:

        async def write(request: bytes, context: Any) -> bytes:
            size = len(request)
            call = CallMetadata(context)
            try:
                self._admit(size)
                req = checks.check_write(field, request, self._config)
                if field == KV_TXN and etcd_check.is_txn_readonly(req):
                    return await self._read_txn(req, context)
                if field == KV_COMPACTION:  # a valid token only (etcd 3.4), not stamped
                    user, stamp = await self.gate.check(call), b""
                else:
                    user, stamp = await self.gate.check_write(
                        call, check_kv_write(method, req))
            except Exception as exc:
                await self.fail(context, exc)
            self.pending_writes += 1
            self.pending_write_bytes += size
            try:
                return await self._write(field, request, response, context, call, user,
                                         stamp)
            except Exception as exc:
                await self.fail(context, exc)
            finally:
                self.pending_writes -= 1
                self.pending_write_bytes -= size

        write.__name__ = method
        return write

    async def _write(
        self, field: int, request: bytes, response: type[ProtoMessage], context: Any,
        call: CallMetadata, user: str | None = None, stamp: bytes = b"",
    ) -> bytes:
        engine = self._engine
        sent_on = forwarded(call)
        address = "" if sent_on else engine.leader_elsewhere()
        if address:
            # A follower that knows its leader: a proposal here would fail (NotLeader).
            # The checks before proposing, then sent on.
            command = engine.kv_command(field, request, stamp)
            if field == KV_TXN:
                await engine.probe_txn_answer(request)
            return await self._forward(address, field, request, response, context, call,
                                       user, b"" if stamp else command)
        try:
            result = await engine.kv_request(field, request, timeout=timeout_of(context),
                                             forwarded=sent_on, auth_info=stamp)
        except NotLeader as e:
            address = e.leader_address or engine.leader_address()
            if not e.leader_id or not address or sent_on:
                raise
            return await self._forward(address, field, request, response, context, call,
                                       user)
        out = result.response
        if isinstance(out, BaseException):
            raise out
        assert out is not None  # an etcd request's result carries its response
        self.stamp(out.header)
        if sent_on:
            context.set_trailing_metadata(((APPLIED_INDEX, str(result.index)),))
        return bytes(out.SerializeToString())

    async def _forward(
        self, address: str, field: int, request: bytes, response: type[ProtoMessage],
        context: Any, call: CallMetadata, user: str | None, command: bytes = b"",
    ) -> bytes:
        """Not proposed here: sent to the leader (as etcd's followers do), once; a request
        forwarded already is never sent on. Answered after this node's own apply of it.
        `command`: the request wrapped already (`Engine.kv_command`, without a stamp)."""
        identity = self.gate.identity(call, user)
        if identity and self._token_forwarder is not None:
            # Auth in use: the etcd method itself, with the client's token or its
            # certificate's user (the leader checks it again; the native ForwardWrite
            # acts for no user).
            raw, index = await self._token_forwarder.call(
                address, f"/{SERVICE}/{_METHODS[field]}", request, timeout_of(context),
                identity=identity)
            if index:
                await self._engine.wait_applied(index, timeout=timeout_of(context))
            resp = response.FromString(raw)
        else:  # the forwarder answers once the write is applied here
            answer = await self._forwarder.write(
                address, command or wrap_kv_request(field, request),
                timeout_of(context) or DEFAULT_TIMEOUT)
            resp = response.FromString(answer.response)
        self.stamp(resp.header)  # type: ignore[attr-defined]
        return bytes(resp.SerializeToString())

    def _admit(self, size: int) -> None:
        """Overloaded when one more write of `size` bytes would pass the pending limits."""
        cfg = self._config
        if self.pending_writes and (
            self.pending_writes >= cfg.max_pending_writes
            or self.pending_write_bytes + size > cfg.max_pending_write_bytes
        ):
            raise Overloaded(f"node {cfg.node_id} is overloaded")

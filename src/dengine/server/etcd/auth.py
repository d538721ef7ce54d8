"""etcd's `etcdserverpb.Auth` service, and the `Gate` every etcd service asks who a request
acts for and whether it may (docs/auth.md).

The auth state is the store's (`kv/auth.py`); changes are log commands proposed by the
leader (a follower forwards the request, with the client's token, once). Passwords are
hashed and checked here, in worker threads, at most `HASH_THREADS` at a time: a flood of
logins queues for them (and past `MAX_WAITING_LOGINS` is refused at once) while the event
loop keeps serving everything else.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import string
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message as ProtoMessage

from dengine.config import NodeConfig
from dengine.errors import NotLeader, Overloaded
from dengine.kv import LINEARIZABLE
from dengine.kv import auth as kvauth
from dengine.kv.auth import AuthStore
from dengine.kv.etcd_check import TOO_MANY_REQUESTS
from dengine.node.engine import KV_AUTH, Engine
from dengine.proto.auth_pb2 import AuthCommand, AuthToken
from dengine.proto.etcd import rpc_pb2
from dengine.server.etcd.checks import check_message_size, decode
from dengine.server.etcd.forward import APPLIED_INDEX, Forwarder, forwarded
from dengine.server.etcd.gate import Gate
from dengine.server.etcd.kv import EtcdBase, timeout_of

SERVICE = "etcdserverpb.Auth"
# password hashes and checks running at once on a member: half the cores (the loop and
# the node's threads keep the rest)
HASH_THREADS = max(1, (os.cpu_count() or 2) // 2)
MAX_WAITING_LOGINS = 64  # more waiting for a hash thread: "too many requests" at once
_LETTERS = string.ascii_letters
# A hash to check unknown users against, so that a wrong name costs what a wrong
# password costs (no user enumeration by timing).
_DUMMY_HASH = kvauth.hash_password("", b"dengine-no-user!").encode()

# method -> (request message, AuthCommand field) of the changes (log commands)
_CHANGES: dict[str, tuple[Any, str]] = {
    "AuthEnable": (rpc_pb2.AuthEnableRequest, "auth_enable"),
    "AuthDisable": (rpc_pb2.AuthDisableRequest, "auth_disable"),
    "UserAdd": (rpc_pb2.AuthUserAddRequest, "user_add"),
    "UserDelete": (rpc_pb2.AuthUserDeleteRequest, "user_delete"),
    "UserChangePassword": (rpc_pb2.AuthUserChangePasswordRequest, "user_change_password"),
    "UserGrantRole": (rpc_pb2.AuthUserGrantRoleRequest, "user_grant_role"),
    "UserRevokeRole": (rpc_pb2.AuthUserRevokeRoleRequest, "user_revoke_role"),
    "RoleAdd": (rpc_pb2.AuthRoleAddRequest, "role_add"),
    "RoleDelete": (rpc_pb2.AuthRoleDeleteRequest, "role_delete"),
    "RoleGrantPermission": (rpc_pb2.AuthRoleGrantPermissionRequest, "role_grant_permission"),
    "RoleRevokePermission": (rpc_pb2.AuthRoleRevokePermissionRequest,
                             "role_revoke_permission"),
}

# method -> (request message, the read on the auth state: (auth, user, request) -> response)
_READS: dict[str, tuple[Any, Callable[[AuthStore, str | None, Any], ProtoMessage]]] = {
    "UserGet": (rpc_pb2.AuthUserGetRequest, lambda a, u, r: a.user_get(u, r.name)),
    "UserList": (rpc_pb2.AuthUserListRequest, lambda a, u, r: a.user_list(u)),
    "RoleGet": (rpc_pb2.AuthRoleGetRequest, lambda a, u, r: a.role_get(u, r.role)),
    "RoleList": (rpc_pb2.AuthRoleListRequest, lambda a, u, r: a.role_list(u)),
}


class AuthService(EtcdBase):
    """Handlers of `etcdserverpb.Auth` over an Engine."""

    def __init__(self, engine: Engine, config: NodeConfig, forwarder: Forwarder,
                 gate: Gate) -> None:
        super().__init__(engine, config)
        self._forwarder = forwarder
        self._gate = gate
        self._hashing = asyncio.Semaphore(HASH_THREADS)
        self._waiting = 0
        self._issued = itertools.count(1)

    def generic_handler(self) -> grpc.GenericRpcHandler:
        def unary(fn: Callable[[bytes, Any], Awaitable[bytes]]) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=None, response_serializer=None)

        handlers = {"Authenticate": unary(self.authenticate)}
        for method in _CHANGES:
            handlers[method] = unary(self._changer(method))
        for method in _READS:
            handlers[method] = unary(self._reader(method))
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    async def _slow(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` (a password hash or check) in a worker thread, a few at a time."""
        if self._waiting >= MAX_WAITING_LOGINS:
            raise Overloaded(f"{TOO_MANY_REQUESTS}: {self._waiting} password checks waiting")
        self._waiting += 1
        try:
            async with self._hashing:
                return await asyncio.to_thread(fn, *args)
        finally:
            self._waiting -= 1

    async def authenticate(self, request: bytes, context: Any) -> bytes:
        try:
            return await self.login(request, context)
        except Exception as exc:
            await self.fail(context, exc)

    async def login(self, request: bytes, context: Any) -> bytes:
        """etcd's Authenticate with a simple token (an encoded AuthenticateResponse; raises
        etcd's errors): the password checked here, the token proposed so that every member
        knows it. The native protocol's Authenticate is this too."""
        check_message_size(len(request), self._config)
        req = decode(rpc_pb2.AuthenticateRequest, request)
        if not self._engine.is_leader:
            return await self._forward("Authenticate", request, context)
        if not self._engine.query_local(lambda s: s.auth.enabled):
            raise kvauth.error(kvauth.NOT_ENABLED)
        stored = self._engine.query_local(lambda s: s.auth.password_of(req.name))
        matches = await self._slow(kvauth.password_matches, stored or _DUMMY_HASH,
                                   req.password)
        if stored is None or not matches:
            raise kvauth.error(kvauth.AUTH_FAILED)
        token = "".join(secrets.choice(_LETTERS) for _ in range(16))
        command = AuthCommand(authenticate=AuthToken(
            name=req.name, token=f"{token}.{next(self._issued)}"))
        return await self._propose("Authenticate", request, command, context)

    def _changer(self, method: str) -> Callable[[bytes, Any], Awaitable[bytes]]:
        request_cls, field = _CHANGES[method]

        async def change(request: bytes, context: Any) -> bytes:
            try:
                check_message_size(len(request), self._config)
                req = decode(request_cls, request)
                if not self._engine.is_leader:
                    return await self._forward(method, request, context)
                user = await self._gate.check(context)
                if method in ("UserAdd", "UserChangePassword") and not (
                        method == "UserAdd" and req.options.no_password):
                    req.password = await self._slow(kvauth.hash_password, req.password,
                                                    os.urandom(16))
                command = AuthCommand(user=user or "", **{field: req})
                return await self._propose(method, request, command, context)
            except Exception as exc:
                await self.fail(context, exc)

        change.__name__ = method
        return change

    def _reader(self, method: str) -> Callable[[bytes, Any], Awaitable[bytes]]:
        request_cls, read = _READS[method]

        async def serve(request: bytes, context: Any) -> bytes:
            try:
                check_message_size(len(request), self._config)
                req = decode(request_cls, request)
                user = await self._gate.check(context)
                resp, revision = await self._engine.read_query(
                    lambda s: (read(s.auth, user, req), s.revision), LINEARIZABLE,
                    timeout=timeout_of(context))
                self.stamp(resp.header, revision)
                return bytes(resp.SerializeToString())
            except Exception as exc:
                await self.fail(context, exc)

        serve.__name__ = method
        return serve

    async def _propose(self, method: str, request: bytes, command: AuthCommand,
                       context: Any) -> bytes:
        sent_on = forwarded(context)
        try:
            result = await self._engine.kv_request(
                KV_AUTH, command.SerializeToString(), timeout=timeout_of(context),
                forwarded=sent_on)
        except NotLeader:
            if sent_on:
                raise
            return await self._forward(method, request, context)
        out = result.response
        if isinstance(out, BaseException):
            raise out
        assert out is not None
        self.stamp(out.header)
        if sent_on:
            context.set_trailing_metadata(((APPLIED_INDEX, str(result.index)),))
        return bytes(out.SerializeToString())

    async def _forward(self, method: str, request: bytes, context: Any) -> bytes:
        """The leader's answer (once: a request forwarded already is not sent on); this
        member answers after applying the change itself."""
        engine = self._engine
        address = engine.leader_address()
        if not engine.leader_id or not address or forwarded(context):
            raise NotLeader("not the leader", leader_id=engine.leader_id)
        answer, index = await self._forwarder.call(
            address, f"/{SERVICE}/{method}", request, timeout_of(context),
            identity=await self._gate.forward_identity(context))
        if index:
            await engine.wait_applied(index, timeout=timeout_of(context))
        return answer

"""etcd's `etcdserverpb.Auth` service from Python: users, roles, permissions, enabling auth
(docs/auth.md). Spoken over etcd's gRPC API of the nodes' client ports, with a token from
`Authenticate` sent as etcd's `token` metadata, so it works whether auth is on or off.
"""

from __future__ import annotations

from typing import Any

import grpc

from dengine.errors import KvError, Unavailable
from dengine.proto.etcd import rpc_pb2 as pb
from dengine.tls import ClientTls

SERVICE = "etcdserverpb.Auth"
_NOT_ENABLED = "etcdserver: authentication is not enabled"

# method -> response message
RESPONSES: dict[str, Any] = {
    "AuthEnable": pb.AuthEnableResponse, "AuthDisable": pb.AuthDisableResponse,
    "Authenticate": pb.AuthenticateResponse, "UserAdd": pb.AuthUserAddResponse,
    "UserGet": pb.AuthUserGetResponse, "UserList": pb.AuthUserListResponse,
    "UserDelete": pb.AuthUserDeleteResponse,
    "UserChangePassword": pb.AuthUserChangePasswordResponse,
    "UserGrantRole": pb.AuthUserGrantRoleResponse,
    "UserRevokeRole": pb.AuthUserRevokeRoleResponse, "RoleAdd": pb.AuthRoleAddResponse,
    "RoleGet": pb.AuthRoleGetResponse, "RoleList": pb.AuthRoleListResponse,
    "RoleDelete": pb.AuthRoleDeleteResponse,
    "RoleGrantPermission": pb.AuthRoleGrantPermissionResponse,
    "RoleRevokePermission": pb.AuthRoleRevokePermissionResponse,
}


class AuthClient:
    """Calls of etcd's Auth service on the first endpoint that answers, as `user` (None:
    no token; with a user, `authenticate` first, as etcd's clients do)."""

    def __init__(self, endpoints: list[str], *, timeout: float = 5.0,
                 tls: ClientTls | None = None) -> None:
        self._endpoints = [e.split("://", 1)[-1] for e in endpoints]
        self._timeout = timeout
        self._credentials = tls.grpc_credentials() if tls is not None else None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.token: str | None = None

    def _channel(self, endpoint: str) -> grpc.aio.Channel:
        if endpoint not in self._channels:
            self._channels[endpoint] = (
                grpc.aio.secure_channel(endpoint, self._credentials)
                if self._credentials is not None else grpc.aio.insecure_channel(endpoint))
        return self._channels[endpoint]

    async def authenticate(self, name: str, password: str) -> None:
        """Get a token for `name` (none needed while auth is off: etcd's clients ignore
        "authentication is not enabled" too)."""
        try:
            resp = await self.call("Authenticate",
                                   pb.AuthenticateRequest(name=name, password=password))
        except KvError as e:
            if e.message == _NOT_ENABLED:
                return
            raise
        self.token = resp.token

    async def call(self, method: str, request: Any) -> Any:
        """The response of `method`; etcd's error as KvError; Unavailable when no
        endpoint answers."""
        why = ""
        metadata = (("token", self.token),) if self.token else None
        for endpoint in self._endpoints:
            stub = self._channel(endpoint).unary_unary(
                f"/{SERVICE}/{method}", request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=RESPONSES[method].FromString)
            try:
                return await stub(request, timeout=self._timeout, metadata=metadata)
            except grpc.aio.AioRpcError as e:
                code, details = e.code(), e.details() or ""
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) \
                        and not details.startswith("etcdserver: "):
                    why = f"{endpoint}: {details or code.name}"
                    continue
                raise KvError(code.name, details) from None
        raise Unavailable(f"no endpoint answered ({why})")

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    async def __aenter__(self) -> AuthClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

"""etcd 3.4's authentication and authorization state (docs/auth.md), pure and deterministic.

Users (salted scrypt hashes of their passwords, never the passwords), roles (key
permissions READ / WRITE / READWRITE on a key, a range [key, range_end) or every key from
key on), the `root` user and role, the enabled flag and the auth revision are replicated
state: changed only by `AuthCommand`s applied from the log (`AuthStore.apply`), saved in
checkpoints and snapshots (`image`, `from_image`). A password is hashed once, with a random
salt, on the member that takes the request, before it proposes; replicas store the hash
the command carries.

Issued simple tokens (`token -> user`) are applied from the log too, so every member knows
every token, but they are not persisted (a restarted member forgets them; the client
authenticates again) and how long one lives is each member's own clock's business
(server/etcd/auth.py).

The checks are etcd's (`auth/store.go`, `etcdserver/apply_auth.go`), with its error texts
and gRPC codes (checked against etcd 3.4 by tests/etcd).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from google.protobuf.message import DecodeError, Message

from dengine.errors import KvError
from dengine.proto.auth_pb2 import AuthCommand, AuthState
from dengine.proto.etcd import rpc_pb2 as pb
from dengine.proto.etcd.auth_pb2 import Permission, Role, User

ROOT = "root"
READ, WRITE, READWRITE = Permission.READ, Permission.WRITE, Permission.READWRITE
MAX_TOKENS = 65536  # issued tokens a member remembers (the oldest go first)

# etcd's messages (rpctypes) and gRPC codes, as etcd 3.4 answers them.
PERMISSION_DENIED = ("PERMISSION_DENIED", "etcdserver: permission denied")
USER_EMPTY = ("INVALID_ARGUMENT", "etcdserver: user name is empty")
ROLE_EMPTY = ("INVALID_ARGUMENT", "etcdserver: role name is empty")
AUTH_FAILED = ("INVALID_ARGUMENT",
               "etcdserver: authentication failed, invalid user ID or password")
INVALID_TOKEN = ("UNAUTHENTICATED", "etcdserver: invalid auth token")
ROOT_USER_MISSING = ("FAILED_PRECONDITION", "etcdserver: root user does not exist")
ROOT_ROLE_MISSING = ("FAILED_PRECONDITION", "etcdserver: root user does not have root role")
USER_EXISTS = ("FAILED_PRECONDITION", "etcdserver: user name already exists")
USER_NOT_FOUND = ("FAILED_PRECONDITION", "etcdserver: user name not found")
ROLE_EXISTS = ("FAILED_PRECONDITION", "etcdserver: role name already exists")
ROLE_NOT_FOUND = ("FAILED_PRECONDITION", "etcdserver: role name not found")
ROLE_NOT_GRANTED = ("FAILED_PRECONDITION", "etcdserver: role is not granted to the user")
PERMISSION_NOT_GRANTED = ("FAILED_PRECONDITION",
                          "etcdserver: permission is not granted to the role")
NOT_ENABLED = ("FAILED_PRECONDITION", "etcdserver: authentication is not enabled")
INVALID_MGMT = ("INVALID_ARGUMENT", "etcdserver: invalid auth management")
# A write stamped at an auth revision older than the store's as it applies (etcd's
# ErrAuthOldRevision, whatever the permission is by then)
AUTH_OLD_REVISION = ("INVALID_ARGUMENT", "etcdserver: revision of auth store is old")
# etcd's auth store error, passed through untranslated (etcd 3.4 answers it so)
NO_PASSWORD_USER = ("UNKNOWN",
                    "auth: authentication failed, password was given for no password user")


# Every text above: the auth errors the CLI prints as etcdctl does ("Error: ...").
MESSAGES = frozenset(text for _, text in (
    PERMISSION_DENIED, USER_EMPTY, ROLE_EMPTY, AUTH_FAILED, INVALID_TOKEN, ROOT_USER_MISSING,
    ROOT_ROLE_MISSING, USER_EXISTS, USER_NOT_FOUND, ROLE_EXISTS, ROLE_NOT_FOUND,
    ROLE_NOT_GRANTED, PERMISSION_NOT_GRANTED, NOT_ENABLED, INVALID_MGMT, NO_PASSWORD_USER,
    AUTH_OLD_REVISION))


def error(which: tuple[str, str]) -> KvError:
    return KvError(*which)


# ---------------------------------------------------------------- passwords

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 1 << 14, 8, 1  # ~16 MiB and tens of ms per hash


def hash_password(password: str, salt: bytes) -> str:
    """The stored form of `password`: scrypt with `salt` (16 random bytes, drawn by the
    caller), `scrypt$N$r$p$salt$hash` (base64). Slow on purpose: call it off the loop."""
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R,
                            p=_SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def password_matches(stored: bytes, password: str) -> bool:
    """Whether `password` hashes to `stored` (hash_password's form); False for anything
    else (no password, a malformed hash). Slow: call it off the loop."""
    try:
        kind, n, r, p, salt, digest = stored.decode().split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(digest, validate=True)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt, validate=True),
                             n=int(n), r=int(r), p=int(p), dklen=len(expected))
    except (ValueError, UnicodeDecodeError):
        return False
    return hmac.compare_digest(got, expected)


# ---------------------------------------------------------------- permissions

def _interval(key: bytes, range_end: bytes) -> tuple[bytes, bytes | None]:
    """A permission's or request's keys as [start, end) (end None: no upper bound): an
    empty range_end is the one key, b"\\0" every key from key on (etcd's rules)."""
    if not range_end:
        return key, key + b"\0"
    if range_end == b"\0":
        return key, None
    return key, range_end


class _Cover:
    """The union of permission intervals, merged: containment by bisection (etcd's
    interval tree `Contains`/`Intersects`)."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, intervals: Iterable[tuple[bytes, bytes | None]]) -> None:
        merged: list[list[Any]] = []
        for start, end in sorted(intervals, key=lambda iv: iv[0]):
            if end is not None and end <= start:
                continue
            if merged and (merged[-1][1] is None or start <= merged[-1][1]):
                last = merged[-1]
                if last[1] is not None and (end is None or end > last[1]):
                    last[1] = end
            else:
                merged.append([start, end])
        self._starts = [m[0] for m in merged]
        self._ends: list[bytes | None] = [m[1] for m in merged]

    def contains(self, start: bytes, end: bytes | None) -> bool:
        i = bisect_right(self._starts, start) - 1
        if i < 0:
            return False
        cover_end = self._ends[i]
        if cover_end is None:
            return True
        if end is None:
            return False
        return start < cover_end and end <= cover_end


class AuthStore:
    """The auth state of one replica. `apply` is the only way it changes (but for
    `forget_token`, a member's own expiry of a token it issued or learnt)."""

    __slots__ = ("_perm_cache", "enabled", "revision", "roles", "tokens", "users")

    def __init__(self) -> None:
        self.enabled = False
        self.revision = 0  # etcd's auth revision: +1 per change (1 once anything changed)
        self.users: dict[str, User] = {}
        self.roles: dict[str, Role] = {}
        self.tokens: OrderedDict[str, str] = OrderedDict()
        self._perm_cache: dict[str, tuple[_Cover, _Cover]] = {}

    # ------------------------------------------------------------ persistence

    def image(self) -> bytes:
        """The persisted state (b"" for a store that never had an auth change)."""
        if not self.revision and not self.enabled:
            return b""
        return bytes(AuthState(
            enabled=self.enabled, revision=self.revision,
            users=[self.users[n] for n in sorted(self.users)],
            roles=[self.roles[n] for n in sorted(self.roles)]).SerializeToString())

    @classmethod
    def from_image(cls, data: bytes) -> AuthStore:
        """The state `image` gave (DecodeError if it is not one)."""
        store = cls()
        if data:
            state = AuthState.FromString(data)
            store.enabled = state.enabled
            store.revision = state.revision
            store.users = {u.name.decode(errors="replace"): u for u in state.users}
            store.roles = {r.name.decode(errors="replace"): r for r in state.roles}
        return store

    # ------------------------------------------------------------ tokens

    def user_of(self, token: str | None) -> str | None:
        """Who a request with `token` acts for: None when auth is off (nothing is
        checked), "" without a token; KvError (invalid auth token) for an unknown one."""
        if not self.enabled:
            return None
        if not token:
            return ""
        user = self.tokens.get(token)
        if user is None:
            raise error(INVALID_TOKEN)
        return user

    def forget_token(self, token: str) -> None:
        self.tokens.pop(token, None)

    def _drop_tokens_of(self, name: str) -> None:
        for token in [t for t, user in self.tokens.items() if user == name]:
            del self.tokens[token]

    # ------------------------------------------------------------ checks

    def check_admin(self, user: str | None) -> None:
        """etcd's IsAdminPermitted: anyone while auth is off; else a user with the root
        role."""
        if user is None or not self.enabled:
            return
        if not user:
            raise error(USER_EMPTY)
        found = self.users.get(user)
        if found is None:
            raise error(USER_NOT_FOUND)
        if ROOT not in found.roles:
            raise error(PERMISSION_DENIED)

    def _permitted(self, user: str | None, key: bytes, range_end: bytes, write: bool,
                   revision: int | None = None) -> None:
        """etcd's isOpPermitted: the user's roles cover the key (or the whole range).
        `revision`: the auth revision a write was stamped with when proposed (its check
        as it applies): 0 is no user, one older than the store's is refused whatever the
        permission is now (etcd's order of checks)."""
        if user is None or not self.enabled:
            return
        if revision is not None:
            if not revision:
                raise error(USER_EMPTY)
            if revision < self.revision:
                raise error(AUTH_OLD_REVISION)
        if not user:
            raise error(USER_EMPTY)
        found = self.users.get(user)
        if found is None:
            raise error(PERMISSION_DENIED)
        if ROOT in found.roles:
            return
        covers = self._perm_cache.get(user)
        if covers is None:
            covers = self._perm_cache[user] = self._covers(found)
        cover = covers[1] if write else covers[0]
        start, end = _interval(key, range_end)
        if not cover.contains(start, end):
            raise error(PERMISSION_DENIED)

    def _covers(self, user: User) -> tuple[_Cover, _Cover]:
        reads: list[tuple[bytes, bytes | None]] = []
        writes: list[tuple[bytes, bytes | None]] = []
        for name in user.roles:
            role = self.roles.get(name)
            for perm in role.keyPermission if role is not None else ():
                interval = _interval(perm.key, perm.range_end)
                if perm.permType in (READ, READWRITE):
                    reads.append(interval)
                if perm.permType in (WRITE, READWRITE):
                    writes.append(interval)
        return _Cover(reads), _Cover(writes)

    # The checks of a request: before it is proposed (`revision` None), and as it applies
    # (`revision`: the auth revision it was stamped with; kv/mvcc.py).

    def check_range(self, user: str | None, key: bytes, range_end: bytes) -> None:
        self._permitted(user, key, range_end, False)

    def check_put(self, user: str | None, req: pb.PutRequest,
                  lease_keys: Callable[[int], Iterable[bytes]],
                  revision: int | None = None) -> None:
        """etcd's Put: write on the key, write on every key of its lease (else the user
        could revoke them), read on the key for prev_kv."""
        self._permitted(user, req.key, b"", True, revision)
        if req.lease:
            self.check_lease_keys(user, lease_keys(req.lease), revision)
        if req.prev_kv:
            self._permitted(user, req.key, b"", False, revision)

    def check_delete_range(self, user: str | None, req: pb.DeleteRangeRequest,
                           revision: int | None = None) -> None:
        if req.prev_kv:
            self._permitted(user, req.key, req.range_end, False, revision)
        self._permitted(user, req.key, req.range_end, True, revision)

    def check_txn(self, user: str | None, req: pb.TxnRequest,
                  lease_keys: Callable[[int], Iterable[bytes]],
                  revision: int | None = None) -> None:
        """etcd's checkTxnAuth: read on every compare, and every op of both branches
        permitted (a txn with any forbidden op is refused whole)."""
        if user is None or not self.enabled:
            return
        for compare in req.compare:
            self._permitted(user, compare.key, compare.range_end, False, revision)
        for op in (*req.success, *req.failure):
            which = op.WhichOneof("request")
            if which == "request_range":
                self._permitted(user, op.request_range.key, op.request_range.range_end,
                                False, revision)
            elif which == "request_put":
                self.check_put(user, op.request_put, lease_keys, revision)
            elif which == "request_delete_range":
                self.check_delete_range(user, op.request_delete_range, revision)
            elif which == "request_txn":
                self.check_txn(user, op.request_txn, lease_keys, revision)

    def check_lease_keys(self, user: str | None, keys: Iterable[bytes],
                         revision: int | None = None) -> None:
        """etcd's checkLeasePuts (LeaseRevoke, and a put to a lease): write on every key
        attached to the lease."""
        for key in keys:
            self._permitted(user, key, b"", True, revision)

    # ------------------------------------------------------------ reads (Auth service)

    def user_get(self, user: str | None, name: str) -> pb.AuthUserGetResponse:
        """etcd's UserGet: root, or the user about itself."""
        if user != name:
            self.check_admin(user)
        found = self.users.get(name)
        if found is None:
            raise error(USER_NOT_FOUND)
        return pb.AuthUserGetResponse(roles=found.roles)

    def role_get(self, user: str | None, name: str) -> pb.AuthRoleGetResponse:
        """etcd's RoleGet: root, or a user with that role."""
        try:
            self.check_admin(user)
        except KvError:
            owner = self.users.get(user or "")
            if owner is None or name not in owner.roles:
                raise
        found = self.roles.get(name)
        if found is None:
            raise error(ROLE_NOT_FOUND)
        return pb.AuthRoleGetResponse(perm=found.keyPermission)

    def user_list(self, user: str | None) -> pb.AuthUserListResponse:
        self.check_admin(user)
        return pb.AuthUserListResponse(users=sorted(self.users))

    def role_list(self, user: str | None) -> pb.AuthRoleListResponse:
        self.check_admin(user)
        return pb.AuthRoleListResponse(roles=sorted(self.roles))

    def password_of(self, name: str) -> bytes | None:
        """The stored hash of a user's password (None: no such user); KvError for a user
        without a password (etcd's own words)."""
        found = self.users.get(name)
        if found is None:
            return None
        if found.options.no_password:
            raise error(NO_PASSWORD_USER)
        return found.password

    # ------------------------------------------------------------ changes (the log)

    def apply(self, data: bytes) -> Message | KvError:
        """Apply one encoded AuthCommand: its etcd response (header not filled), or the
        KvError it failed with (the state unchanged). Never raises for input."""
        try:
            command = AuthCommand.FromString(data)
        except DecodeError:
            return KvError("INVALID_ARGUMENT", "dengine: the command holds no valid AuthCommand")
        which = command.WhichOneof("request")
        handler = _HANDLERS.get(which or "")
        if handler is None:
            return KvError("INVALID_ARGUMENT", "dengine: the command holds no valid AuthCommand")
        try:
            if which != "authenticate":
                self.check_admin(command.user)
            response, changed = handler(self, getattr(command, which))
        except KvError as e:
            return e
        if changed:
            self.revision += 1
            self._perm_cache.clear()
        return response

    def _enable(self, _: pb.AuthEnableRequest) -> tuple[Message, bool]:
        if self.enabled:
            return pb.AuthEnableResponse(), False
        root = self.users.get(ROOT)
        if root is None:
            raise error(ROOT_USER_MISSING)
        if ROOT not in root.roles:
            raise error(ROOT_ROLE_MISSING)
        self.enabled = True
        self.tokens.clear()
        return pb.AuthEnableResponse(), True

    def _disable(self, _: pb.AuthDisableRequest) -> tuple[Message, bool]:
        if not self.enabled:
            return pb.AuthDisableResponse(), False
        self.enabled = False
        self.tokens.clear()
        return pb.AuthDisableResponse(), True

    def _authenticate(self, req: Any) -> tuple[Message, bool]:
        """A token the proposing member issued after checking the password."""
        if not self.enabled:
            raise error(NOT_ENABLED)
        if req.name not in self.users:
            raise error(AUTH_FAILED)
        self.tokens[req.token] = req.name
        while len(self.tokens) > MAX_TOKENS:
            self.tokens.popitem(last=False)
        return pb.AuthenticateResponse(token=req.token), False

    def _user_add(self, req: pb.AuthUserAddRequest) -> tuple[Message, bool]:
        if not req.name:
            raise error(USER_EMPTY)
        if req.name in self.users:
            raise error(USER_EXISTS)
        no_password = req.options.no_password
        self.users[req.name] = User(
            name=req.name.encode(), password=b"" if no_password else req.password.encode(),
            options=req.options)
        return pb.AuthUserAddResponse(), True

    def _user_delete(self, req: pb.AuthUserDeleteRequest) -> tuple[Message, bool]:
        if self.enabled and req.name == ROOT:
            raise error(INVALID_MGMT)
        if self.users.pop(req.name, None) is None:
            raise error(USER_NOT_FOUND)
        self._drop_tokens_of(req.name)
        return pb.AuthUserDeleteResponse(), True

    def _user_change_password(self, req: pb.AuthUserChangePasswordRequest
                              ) -> tuple[Message, bool]:
        found = self.users.get(req.name)
        if found is None:
            raise error(USER_NOT_FOUND)
        found.password = req.password.encode()
        found.options.no_password = False
        self._drop_tokens_of(req.name)
        return pb.AuthUserChangePasswordResponse(), True

    def _user_grant_role(self, req: pb.AuthUserGrantRoleRequest) -> tuple[Message, bool]:
        found = self.users.get(req.user)
        if found is None:
            raise error(USER_NOT_FOUND)
        if req.role != ROOT and req.role not in self.roles:
            raise error(ROLE_NOT_FOUND)
        if req.role in found.roles:
            return pb.AuthUserGrantRoleResponse(), False
        roles = sorted((*found.roles, req.role))
        del found.roles[:]
        found.roles.extend(roles)
        return pb.AuthUserGrantRoleResponse(), True

    def _user_revoke_role(self, req: pb.AuthUserRevokeRoleRequest) -> tuple[Message, bool]:
        if self.enabled and req.name == ROOT and req.role == ROOT:
            raise error(INVALID_MGMT)
        found = self.users.get(req.name)
        if found is None:
            raise error(USER_NOT_FOUND)
        if req.role not in found.roles:
            raise error(ROLE_NOT_GRANTED)
        found.roles.remove(req.role)
        return pb.AuthUserRevokeRoleResponse(), True

    def _role_add(self, req: pb.AuthRoleAddRequest) -> tuple[Message, bool]:
        if not req.name:
            raise error(ROLE_EMPTY)
        if req.name in self.roles:
            raise error(ROLE_EXISTS)
        self.roles[req.name] = Role(name=req.name.encode())
        return pb.AuthRoleAddResponse(), True

    def _role_delete(self, req: pb.AuthRoleDeleteRequest) -> tuple[Message, bool]:
        if self.enabled and req.role == ROOT:
            raise error(INVALID_MGMT)
        if self.roles.pop(req.role, None) is None:
            raise error(ROLE_NOT_FOUND)
        for user in self.users.values():
            if req.role in user.roles:
                user.roles.remove(req.role)
        return pb.AuthRoleDeleteResponse(), True

    def _role_grant_permission(self, req: pb.AuthRoleGrantPermissionRequest
                               ) -> tuple[Message, bool]:
        role = self.roles.get(req.name)
        if role is None:
            raise error(ROLE_NOT_FOUND)
        perm = req.perm
        for existing in role.keyPermission:
            if existing.key == perm.key and existing.range_end == perm.range_end:
                existing.permType = perm.permType
                break
        else:
            perms = sorted((*role.keyPermission, perm), key=lambda p: p.key)
            del role.keyPermission[:]
            role.keyPermission.extend(perms)
        return pb.AuthRoleGrantPermissionResponse(), True

    def _role_revoke_permission(self, req: pb.AuthRoleRevokePermissionRequest
                                ) -> tuple[Message, bool]:
        role = self.roles.get(req.role)
        if role is None:
            raise error(ROLE_NOT_FOUND)
        for n, existing in enumerate(role.keyPermission):
            if existing.key == req.key and existing.range_end == req.range_end:
                del role.keyPermission[n]
                return pb.AuthRoleRevokePermissionResponse(), True
        raise error(PERMISSION_NOT_GRANTED)


_HANDLERS: dict[str, Callable[[AuthStore, Any], tuple[Message, bool]]] = {
    "auth_enable": AuthStore._enable,
    "auth_disable": AuthStore._disable,
    "authenticate": AuthStore._authenticate,
    "user_add": AuthStore._user_add,
    "user_delete": AuthStore._user_delete,
    "user_change_password": AuthStore._user_change_password,
    "user_grant_role": AuthStore._user_grant_role,
    "user_revoke_role": AuthStore._user_revoke_role,
    "role_add": AuthStore._role_add,
    "role_delete": AuthStore._role_delete,
    "role_grant_permission": AuthStore._role_grant_permission,
    "role_revoke_permission": AuthStore._role_revoke_permission,
}

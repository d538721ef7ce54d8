"""Who a request of etcd's API acts for (its `token` metadata, else with etcd's
--client-cert-auth the common name of its client certificate) and whether it may: the
`Gate` every etcd service asks before serving or proposing (docs/auth.md)."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

from dengine.errors import KvError
from dengine.kv import LINEARIZABLE
from dengine.kv import auth as kvauth
from dengine.kv.auth import AuthStore
from dengine.node.engine import Engine
from dengine.proto import AuthInfo
from dengine.tls import node_certificate_problem

TOKEN_METADATA = "token"  # etcd's clients send their token under this key
TOKEN_TTL_S = 300.0  # etcd's default simple-token TTL (--auth-token simple,ttl=300s)
# A follower forwarding the request of a client-certificate user (no token) names the
# user here; only a member (a node certificate, FORWARDED_METADATA) may.
USER_METADATA = "dengine-user"
FORWARDED_METADATA = "dengine-forwarded"  # request metadata: sent on by a follower
_MEMBER_CACHE = 64  # node certificates judged, remembered (PEM -> member or not)

Check = Callable[[AuthStore, str, Any], None]  # (auth state, user, store) -> raises KvError
Metadata = Sequence[tuple[str, str]]


def token_of(context: Any) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == TOKEN_METADATA:
            return str(value)
    return None


def _metadata(context: Any, name: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return str(value)
    return None


def _certificate(context: Any) -> tuple[str | None, bytes | None]:
    """The common name and PEM of the request's verified client certificate (gRPC's
    auth context; the native listener's contexts give the same)."""
    auth_context = getattr(context, "auth_context", None)
    found = auth_context() if auth_context is not None else None
    if not found:
        return None, None
    names, pems = found.get("x509_common_name"), found.get("x509_pem_cert")
    name = names[0].decode(errors="replace") if names else None
    return name, (pems[0] if pems else None)


_members: dict[bytes, bool] = {}


def is_node_certificate(pem: bytes | None) -> bool:
    """A node's certificate (serverAuth usage, as the peer port requires; clients'
    certificates have clientAuth only): the connection is a member's."""
    if not pem:
        return False
    member = _members.get(pem)
    if member is None:
        try:
            der = ssl.PEM_cert_to_DER_cert(pem.decode())
        except (ValueError, UnicodeDecodeError):
            return False
        member = node_certificate_problem(der) == ""
        if len(_members) >= _MEMBER_CACHE:
            _members.clear()
        _members[pem] = member
    return member


class Gate:
    """Who a request acts for (its `token` metadata) and whether it may: the checks run
    on this member's applied auth state, under the state machine's lock. A token unused
    on this member for `ttl` seconds expires here."""

    def __init__(self, engine: Engine, ttl: float = TOKEN_TTL_S,
                 clock: Callable[[], float] = time.monotonic, *,
                 cert_auth: bool = False) -> None:
        self._engine = engine
        self._cert_auth = cert_auth  # etcd's --client-cert-auth: a CN is a user
        self._ttl = ttl
        self._clock = clock
        self._last_use: dict[str, float] = {}

    async def check(self, context: Any, check: Check | None = None, *,
                    fresh: Callable[[], bool] | None = None) -> str | None:
        """The request's user (None: auth is off, nothing checked; "": no token) once
        `check` passed; KvError (etcd's) otherwise. A token this member does not know yet
        (issued by another, its entry not applied here yet) is looked up again after a
        ReadIndex round: the client got it once the entry was committed. `fresh()` true
        (a linearizable read served after): with auth on, checked again after a
        ReadIndex round, so that a permission change committed before the read began
        counts, as etcd checks it (`read` does it in one round)."""
        token = token_of(context)
        if token is None and not self._engine.query_local(auth_enabled):
            return None  # auth off: nothing to check (most requests, at once)
        now = self._clock()
        run, expired = self._runner(context, token, now, check)
        try:
            user = self._engine.query_local(run)
        except KvError as e:
            if e.message != kvauth.INVALID_TOKEN[1] or expired:
                raise
            user = await self._engine.read_query(run, LINEARIZABLE,
                                                 timeout=context.time_remaining())
        else:
            if user is not None and fresh is not None and fresh():  # auth on: judged on
                # the state a linearizable read will see
                user = await self._engine.read_query(run, LINEARIZABLE,
                                                     timeout=context.time_remaining())
        self._used(user, token, now)
        return user

    async def check_write(self, context: Any, check: Check | None
                          ) -> tuple[str | None, bytes]:
        """`check` (a write's, before it is proposed), and the stamp its command carries
        while auth is on: an encoded `AuthInfo`, the user and the auth revision the check
        ran at (b"" while auth is off: nothing is added). The store checks the permission
        again as the command applies, against that revision (kv/mvcc.py)."""
        if token_of(context) is None and not self._engine.query_local(auth_enabled):
            return None, b""  # auth off, as `check` answers (no closure, no coroutine)
        revisions: list[int] = []

        def stamped(auth: AuthStore, user: str, store: Any) -> None:
            if check is not None:
                check(auth, user, store)
            revisions.append(auth.revision)

        user = await self.check(context, stamped)
        if user is None or not revisions:
            return user, b""
        return user, AuthInfo(username=user, revision=revisions[-1]).SerializeToString()

    async def read(self, context: Any, check: Check, query: Callable[[Any], Any],
                   mode: str, timeout: float | None) -> Any:
        """`query(store)` (a read in `mode`) once `check` passed on the very state it
        reads: as etcd checks a linearizable read after its ReadIndex round, so that a
        permission granted or revoked before the read began counts."""
        token = token_of(context)
        now = self._clock()
        run, expired = self._runner(context, token, now, check)
        answer: list[Any] = []

        def checked(store: Any) -> str | None:
            user = run(store)
            answer.append(query(store))
            return user

        try:
            user = await self._engine.read_query(checked, mode, timeout=timeout)
        except KvError as e:  # a token not known yet here: after a ReadIndex round
            if e.message != kvauth.INVALID_TOKEN[1] or expired or mode == LINEARIZABLE:
                raise
            user = await self._engine.read_query(checked, LINEARIZABLE, timeout=timeout)
        self._used(user, token, now)
        return answer[-1]

    def _runner(self, context: Any, token: str | None, now: float, check: Check | None
                ) -> tuple[Callable[[Any], str | None], bool]:
        """The check on a store's state (-> the user), and whether the token expired."""
        last = self._last_use.get(token) if token else None
        expired = last is not None and now - last > self._ttl

        def run(store: Any) -> str | None:
            auth: AuthStore = store.auth
            if expired and token:
                auth.forget_token(token)
            user = auth.user_of(token)
            if user == "":
                user = self._certified(context)
            if user is not None and check is not None:
                check(auth, user, store)
            return user

        return run, expired

    def _used(self, user: str | None, token: str | None, now: float) -> None:
        if user and token:
            if len(self._last_use) > 2 * kvauth.MAX_TOKENS:
                self._last_use = {t: t_last for t, t_last in self._last_use.items()
                                  if now - t_last <= self._ttl}
            self._last_use[token] = now

    def _certified(self, context: Any) -> str:
        """Who a request without a token acts for (auth on): the user a member forwards
        it for; else, with --client-cert-auth, its certificate's common name (etcd's
        AuthInfoFromTLS); else nobody (""). A user named by anyone but a member is
        refused."""
        claimed = _metadata(context, USER_METADATA)
        name, pem = _certificate(context)
        if _metadata(context, FORWARDED_METADATA) is not None and is_node_certificate(pem):
            return claimed or ""
        if claimed is not None:
            raise kvauth.error(kvauth.PERMISSION_DENIED)
        return (name or "") if self._cert_auth else ""

    @staticmethod
    def identity(context: Any, user: str | None) -> Metadata:
        """How a follower names the request's user to the leader: the client's token;
        else (`user` from `check`, a client-certificate user) in USER_METADATA, which the
        leader takes from a member only."""
        token = token_of(context)
        if token is not None:
            return ((TOKEN_METADATA, token),)
        return ((USER_METADATA, user),) if user else ()

    async def forward_identity(self, context: Any) -> Metadata:
        """`identity` for a request not checked here yet."""
        if token_of(context) is not None:
            return self.identity(context, None)
        user = self._engine.query_local(
            lambda store: self._certified(context) if store.auth.enabled else None)
        return self.identity(context, user)

    async def admin(self, context: Any) -> str | None:
        """Only root may (member changes, backups, auth administration)."""
        return await self.check(context, lambda auth, user, store: auth.check_admin(user))

    async def maintenance_admin(self, context: Any) -> None:
        """`admin` for etcd 3.4's Maintenance Snapshot, HashKV and Defragment, whose
        server answers auth's own error untranslated: UNKNOWN "auth: permission denied"."""
        try:
            await self.admin(context)
        except KvError as e:
            raise KvError("UNKNOWN", "auth: permission denied") from e


    async def range(self, context: Any, key: bytes, range_end: bytes) -> None:
        await self.check(context, lambda auth, user, store: auth.check_range(user, key, range_end))

    async def lease_keys(self, context: Any, lease_id: int) -> bytes:
        """Write on every key of the lease (etcd's LeaseRevoke rule); the revoke's stamp
        (`check_write`)."""
        _, stamp = await self.check_write(context, lambda auth, user, store: (
            auth.check_lease_keys(user, keys_of(store, lease_id))))
        return stamp


def auth_enabled(store: Any) -> bool:
    return bool(store.auth.enabled)


def keys_of(store: Any, lease_id: int) -> list[bytes]:
    info = store.leases.info(lease_id, keys=True)
    return info[1] if info is not None else []


def check_kv_write(method: str, req: Any) -> Check:
    """The permission check of a KV write (Put, DeleteRange, Txn; Compact needs a valid
    token only, as in etcd 3.4)."""
    def check(auth: AuthStore, user: str, store: Any) -> None:
        def lease_keys(lease_id: int) -> list[bytes]:
            return keys_of(store, lease_id)
        if method == "Put":
            auth.check_put(user, req, lease_keys)
        elif method == "DeleteRange":
            auth.check_delete_range(user, req)
        elif method == "Txn":
            auth.check_txn(user, req, lease_keys)
    return check



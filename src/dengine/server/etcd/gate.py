"""Who a request of etcd's API acts for (its `token` metadata) and whether it may: the
`Gate` every etcd service asks before serving or proposing (docs/auth.md)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from dengine.errors import KvError
from dengine.kv import LINEARIZABLE
from dengine.kv import auth as kvauth
from dengine.kv.auth import AuthStore
from dengine.node.engine import Engine

TOKEN_METADATA = "token"  # etcd's clients send their token under this key
TOKEN_TTL_S = 300.0  # etcd's default simple-token TTL (--auth-token simple,ttl=300s)

Check = Callable[[AuthStore, str, Any], None]  # (auth state, user, store) -> raises KvError


def token_of(context: Any) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == TOKEN_METADATA:
            return str(value)
    return None


class Gate:
    """Who a request acts for (its `token` metadata) and whether it may: the checks run
    on this member's applied auth state, under the state machine's lock. A token unused
    on this member for `ttl` seconds expires here."""

    def __init__(self, engine: Engine, ttl: float = TOKEN_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._engine = engine
        self._ttl = ttl
        self._clock = clock
        self._last_use: dict[str, float] = {}

    async def check(self, context: Any, check: Check | None = None) -> str | None:
        """The request's user (None: auth is off, nothing checked; "": no token) once
        `check` passed; KvError (etcd's) otherwise. A token this member does not know yet
        (issued by another, its entry not applied here yet) is looked up again after a
        ReadIndex round: the client got it once the entry was committed."""
        token = token_of(context)
        now = self._clock()
        last = self._last_use.get(token) if token else None
        expired = last is not None and now - last > self._ttl

        def run(store: Any) -> str | None:
            auth: AuthStore = store.auth
            if expired and token:
                auth.forget_token(token)
            user = auth.user_of(token)
            if user is not None and check is not None:
                check(auth, user, store)
            return user

        try:
            user = self._engine.query_local(run)
        except KvError as e:
            if e.message != kvauth.INVALID_TOKEN[1] or expired:
                raise
            user = await self._engine.read_query(run, LINEARIZABLE,
                                                 timeout=context.time_remaining())
        if user and token:
            if len(self._last_use) > 2 * kvauth.MAX_TOKENS:
                self._last_use = {t: t_last for t, t_last in self._last_use.items()
                                  if now - t_last <= self._ttl}
            self._last_use[token] = now
        return user

    async def admin(self, context: Any) -> str | None:
        """Only root may (member changes, backups, auth administration)."""
        return await self.check(context, lambda auth, user, store: auth.check_admin(user))

    async def range(self, context: Any, key: bytes, range_end: bytes) -> None:
        await self.check(context, lambda auth, user, store: auth.check_range(user, key, range_end))

    async def lease_keys(self, context: Any, lease_id: int) -> None:
        """Write on every key of the lease (etcd's LeaseRevoke rule)."""
        await self.check(context, lambda auth, user, store: auth.check_lease_keys(
            user, keys_of(store, lease_id)))


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



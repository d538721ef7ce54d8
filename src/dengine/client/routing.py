"""Connections and endpoint routing of the client: which node a request goes to, over
which transport, and what to do when it fails.

Endpoints are the nodes' gRPC addresses. With `transport="auto"` (the default) the first
call to a node asks it (gRPC Status) for its native listener and then sends everything
over one pipelined native connection (`dengine.client.native`): Python's gRPC costs
~430 µs per round trip here, the native frames ~30 µs. A node without one, or whose
native port cannot be reached, is served over gRPC; the native port is tried again when
that node has to be reconnected. "native" insists on it, "grpc" never uses it.

`Router` finds the leader, follows NOT_LEADER redirects, retries within the deadline, and
maps failures to `dengine.errors` exceptions. Outcome of a failed write — one rule:
`Timeout` means unknown, the rest means no.

* unknown (it may be applied, now or later): `Timeout`, and its subclasses `ConnectionLost`
  (the request was sent, then the connection broke or the server shut down before
  answering) and `LeadershipLost` (the leader was deposed and no leader settled the write);
  also the rare server-side `STORAGE`/`INTERNAL` errors.
* definitely not applied: `NotLeader`, `InvalidRequest`, `Unavailable` (no node reachable,
  no leader, the leader changed and the entry was overwritten, or the deadline passed
  before the write could be sent). The router retries NotLeader and Unavailable itself,
  with backoff, until the deadline.

A write is retried only when it is known not to have been applied, so an acknowledged
write is applied exactly once; reads are retried on any transient failure (a node's
`Timeout` answer included: the next attempt goes to another node). A write whose
deadline passes before it could be sent is `Unavailable` (every earlier attempt of it was
known not to be applied, or it would not have been retried).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import ssl
import time
from collections.abc import Iterable, Sequence
from typing import Any

import grpc
from google.protobuf.message import Message as ProtoMessage

from dengine.api import MemberInfo
from dengine.client.native import PROBE_INTERVAL_S, Lost, NativeConnection, NotSent, Refused
from dengine.client.transport_errors import ConnectionLost, Unsent, rpc_error
from dengine.config import parse_address
from dengine.errors import (
    ERRORS_BY_CODE,
    CorruptionError,
    DengineError,
    InvalidRequest,
    KvError,
    LeadershipLost,
    NotLeader,
    Overloaded,
    StorageError,
    Timeout,
    Unavailable,
    kv_error,
)
from dengine.proto.client_pb2 import AuthenticateResponse as AuthenticateResult
from dengine.proto.client_pb2 import Error, MemberStatus, StatusResponse
from dengine.proto.etcd.rpc_pb2 import AuthenticateRequest, AuthenticateResponse
from dengine.proto.native import METHOD_CODES, STATUS_SHUTTING_DOWN
from dengine.tls import ClientTls, TlsError, handshake_problem

log = logging.getLogger("dengine.client")

TRANSPORTS = ("auto", "native", "grpc")
SERVICE = "/dengine.RaftClientService/"
TOKEN_METADATA = "token"  # etcd's key for the auth token
# The node does not know the token (restarted, expired), or the connection has none (auth
# was off when it authenticated): authenticate again, once
RENEW_TOKEN = frozenset(("etcdserver: invalid auth token", "etcdserver: user name is empty"))
AUTH_NOT_ENABLED = "etcdserver: authentication is not enabled"
# Methods served without a token (etcd's auth does not apply to them)
_OPEN_METHODS = frozenset(("Status", "GetLeader", "MemberList", "Events"))

_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    # Reconnect quickly to a restarted node (gRPC's default first backoff is 1 s).
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
]
_BACKOFF_FIRST_S = 0.02
_BACKOFF_MAX_S = 0.2
# A read or status attempt on an unresponsive (e.g. paused) node gives up after this share
# of the remaining time, so that another node can still answer within the deadline.
_READ_ATTEMPT_SHARE = 0.34
_READ_ATTEMPT_MIN_S = 0.5
# The gRPC Status and the TCP connect that find a node's native listener give up after
# this long, whatever the deadline of the calls waiting for them (another node may answer).
_CONNECT_TIMEOUT_S = 1.0
# A node that stopped answering, or could not be connected to, is passed over this long
# (new calls and leader redirects go to the others) unless no other node is left.
_SUSPECT_S = 1.0
# A node served over gRPC (no native listener, or it could not be connected to) is asked
# for its native listener again after this long: a restarted node may have one now.
_NATIVE_RETRY_S = 5.0


def error_from_wire(err: Error) -> DengineError:
    """The exception for an `Error` field of a response."""
    if err.code == NotLeader.code:
        return NotLeader(err.message, err.leader_id, err.leader_address)
    if err.grpc_code:  # etcd's errors (KvError): by etcd's message
        return kv_error(err.grpc_code, err.message)
    cls = ERRORS_BY_CODE.get(err.code, DengineError)
    if cls is CorruptionError:  # its constructor wants the path and offset
        cls = StorageError
    exc = cls(err.message or err.code)
    exc.code = err.code or DengineError.code
    return exc


def parse_endpoints(endpoints: str | Iterable[str]) -> list[str]:
    """ "h1:p1,h2:p2" or a list of "host:port" -> validated, de-duplicated list."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    out: list[str] = []
    for item in items:
        addr = item.strip()
        if not addr:
            continue
        try:
            parse_address(addr)
        except DengineError as e:
            raise InvalidRequest(f"bad endpoint: {e.message}") from None
        if addr not in out:
            out.append(addr)
    if not out:
        raise InvalidRequest("no endpoints given (expected HOST:PORT[,HOST:PORT...])")
    return out


def member_from_wire(m: MemberStatus) -> MemberInfo:
    return MemberInfo(m.id, m.address, m.client_address, m.role, m.match_index, m.is_leader)


class Router:
    """The endpoints of one client, its guess of the leader and its connections.

    Nothing a caller abandons stays in the way of later calls: a connection that stops
    answering is closed by its liveness probe (`dengine.client.native`) and its node passed
    over for `_SUSPECT_S` (as is one that cannot be connected to); every wire call, and
    the Status + connect that finds a node's native listener, has a deadline; a timeout or
    a lost connection drops the leader guess, which is then learnt again from any node
    that answers.
    """

    def __init__(self, endpoints: str | Iterable[str], transport: str,
                 probe_interval: float = PROBE_INTERVAL_S, tls: ClientTls | None = None,
                 dial_timeout: float | None = None, user: str | None = None,
                 password: str = "", token: str | None = None,
                 metadata: Sequence[tuple[str, str]] = ()) -> None:
        if transport not in TRANSPORTS:
            raise InvalidRequest(f"unknown transport {transport!r} (expected one of: "
                                 + ", ".join(TRANSPORTS) + ")")
        if metadata and transport != "grpc":
            raise InvalidRequest("metadata travels over gRPC only: use transport='grpc'")
        self._metadata = tuple(metadata)  # sent with every gRPC call
        self.endpoints = parse_endpoints(endpoints)
        self._transport = transport
        self._probe_interval = probe_interval
        self._tls = tls
        self._credentials = tls.grpc_credentials() if tls is not None else None
        self._tls_failures: dict[str, TlsError] = {}  # endpoint -> its last TLS failure
        self._channels: dict[str, grpc.aio.Channel] = {}
        # gRPC address -> the task that learns its native address and connects; its result
        # is the connection, or None: that node is served over gRPC (until `_grpc_until`).
        self._native: dict[str, asyncio.Task[NativeConnection | None]] = {}
        self._grpc_until: dict[str, float] = {}
        self._leader: str | None = None
        self._next = 0  # round-robin position over endpoints when no leader is known
        # address -> until when it is passed over (it did not answer or could not be reached)
        self._suspects: dict[str, float] = {}
        # Give up a call once every endpoint it may use has refused connections (or has a
        # host that does not resolve) for this long, instead of retrying until the
        # deadline (None: until the deadline, e.g. across a restart).
        self._dial_timeout = dial_timeout
        # address -> (since when, why) it cannot be connected to; cleared when it answers
        self._unreachable: dict[str, tuple[float, str]] = {}
        # etcd auth: each new connection authenticates as `user` (docs/auth.md); a gRPC
        # channel sends its node's token as `token` metadata
        # (or, with `token`, acts for the user of that token: UseToken)
        self._login_method = "Authenticate" if token is None else "UseToken"
        self._login = (
            AuthenticateResponse(token=token).SerializeToString() if token is not None
            else None if user is None
            else AuthenticateRequest(name=user, password=password).SerializeToString())
        self._tokens: dict[str, str] = {}  # gRPC address -> its token

    async def close(self) -> None:
        natives, self._native = list(self._native.values()), {}
        for task in natives:
            if not task.done():
                task.cancel()
            elif not task.cancelled() and task.exception() is None:
                conn = task.result()
                if conn is not None:
                    conn.close()
        await asyncio.gather(*natives, return_exceptions=True)
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()

    async def call_leader(
        self, method: str, request: ProtoMessage, response_cls: type[Any], deadline: float,
        *, write: bool,
    ) -> Any:
        """Call the leader, following redirects and retrying what is safe until `deadline`."""
        backoff = Backoff()
        payload = request.SerializeToString()
        while True:
            addr = self._leader or self._pick()
            attempt_deadline = deadline if write else _read_attempt_deadline(deadline)
            try:
                resp = await self._invoke(addr, method, payload, response_cls, attempt_deadline,
                                          write=write)
            except Unsent as unsent:
                self._forget(addr)
                self._tls_failed(addr, unsent.error)
                self._dial_failed(addr, unsent, self.endpoints)
                await backoff.sleep(deadline, unsent.error)
                continue
            except _Late as late:
                raise late.error from None
            except Timeout:  # ConnectionLost included: the node may be gone, ask another
                self._forget(addr)
                if write or time.monotonic() >= deadline:
                    raise
                continue
            self._answered(addr)
            if not resp.HasField("error"):
                return resp
            err = error_from_wire(resp.error)
            if isinstance(err, NotLeader):
                leader = err.leader_address
                if leader and leader != addr and not self._suspected(leader):
                    self.remember_leader(leader)
                    backoff.redirected()
                    if backoff.redirects <= 3:
                        continue
                else:  # no leader known there, or one that does not answer (yet)
                    self._forget(addr)
                await backoff.sleep(deadline, err)
                continue
            if isinstance(err, Unavailable):  # not applied (see the module docstring)
                if not isinstance(err, Overloaded):  # (an overloaded leader still leads)
                    self._forget(addr)
                await backoff.sleep(deadline, err)
                continue
            if isinstance(err, LeadershipLost):  # outcome unknown: not retried; that node
                self._forget(addr)  # no longer leads
            elif isinstance(err, Timeout) and not write:  # e.g. no read index in time
                self._forget(addr)  # there: another node may answer
                await backoff.sleep(deadline, err)
                continue
            raise err

    async def call_any(
        self, method: str, request: ProtoMessage, response_cls: type[Any], deadline: float,
        targets: list[str] | None = None, attempt_timeout: float | None = None,
    ) -> tuple[Any, str]:
        """Call the first node of `targets` (default: all endpoints) that answers (each
        attempt within `attempt_timeout` s: default, a share of the time left)."""
        backoff = Backoff()
        payload = request.SerializeToString()
        candidates = targets or self.endpoints
        turn = 0
        while True:
            addr = candidates[(self._next + turn) % len(candidates)]
            turn += 1
            if len(candidates) > 1 and turn <= len(candidates) and self._suspected(addr):
                continue  # first try the others
            try:
                attempt = (_read_attempt_deadline(deadline) if attempt_timeout is None
                           else min(deadline, time.monotonic() + attempt_timeout))
                resp = await self._invoke(addr, method, payload, response_cls, attempt,
                                          write=False)
            except _Late as late:
                raise late.error from None
            except (Unsent, Timeout) as e:
                error = e.error if isinstance(e, Unsent) else e
                self._tls_failed(addr, error, candidates)
                if isinstance(e, Unsent):
                    self._dial_failed(addr, e, candidates)
                if time.monotonic() >= deadline:
                    raise error from None
                if turn % len(candidates) == 0:
                    await backoff.sleep(deadline, error)
                continue
            self._answered(addr)
            if resp.HasField("error"):
                raise error_from_wire(resp.error)
            return resp, addr

    async def call_node(
        self, addr: str, method: str, request: ProtoMessage | bytes, response_cls: type[Any],
        deadline: float, *, write: bool = False,
    ) -> Any:
        """One call to `addr` (`request` a message or its encoding), no retry: its
        response, error field included (a watch poll, a forwarded write). Raises a
        DengineError when `addr` could not be asked or did not answer (that node is
        passed over for a while); Unavailable only when the request was not sent."""
        payload = request if isinstance(request, bytes) else request.SerializeToString()
        try:
            resp = await self._invoke(addr, method, payload, response_cls, deadline,
                                      write=write)
        except (Unsent, _Late) as e:
            self._forget(addr)
            raise e.error from None
        except Timeout:
            self._forget(addr)
            raise
        if self._suspects:
            self._suspects.pop(addr, None)
        return resp

    def pick(self) -> str:
        """The endpoint a call without a preferred node goes to (the leader if known,
        else the next in turn, passing over those that did not answer lately)."""
        return self._leader or self._pick()

    def next_endpoint(self, addr: str) -> str:
        """The endpoint after `addr` in turn, passing over suspects (a watch leaving a
        node that failed it)."""
        endpoints = self.endpoints
        n = len(endpoints)
        start = endpoints.index(addr) + 1 if addr in endpoints else self._next
        for i in range(n):
            candidate = endpoints[(start + i) % n]
            if candidate != addr and not self._suspected(candidate):
                return candidate
        return endpoints[start % n]

    async def _invoke(
        self, addr: str, method: str, payload: bytes, response_cls: type[Any],
        deadline: float, *, write: bool,
    ) -> Any:
        """One RPC. Raises Unsent when the request surely did not reach the server.
        With a user, a token the node no longer knows (it restarted, or the token
        expired), or none (auth was off when the connection authenticated), is renewed
        once and the request sent again (it was refused unread)."""
        for renewed in (False, True):
            conn = None
            if self._transport != "grpc":
                conn = await self._native_connection(addr, deadline)
            if conn is not None:
                body = await self._native_call(conn, addr, method, payload, deadline, write)
                resp = response_cls.FromString(body)
            else:
                resp = await self._grpc_call(addr, method, payload, response_cls, deadline,
                                             write=write)
            if (self._login is None or renewed or not resp.HasField("error")
                    or resp.error.message not in RENEW_TOKEN):
                return resp
            if conn is not None:
                await self._authenticate(conn, addr, deadline)
            else:
                self._tokens.pop(addr, None)
        raise AssertionError("unreachable")

    async def grpc_metadata(self, addr: str, deadline: float
                            ) -> tuple[tuple[str, str], ...] | None:
        """The metadata of a gRPC call to `addr` as the client's user (etcd's `token`;
        authenticated once per address); None without a user or while auth is off."""
        if self._login is None:
            return self._metadata or None
        token = self._tokens.get(addr)
        if token is None:
            token = await self._authenticate(None, addr, deadline)
        return ((TOKEN_METADATA, token), *self._metadata) if token else (
            self._metadata or None)

    async def _authenticate(self, conn: NativeConnection | None, addr: str,
                            deadline: float) -> str:
        """Authenticate as the client's user on `conn` (which then acts for that user),
        or over gRPC to `addr` (None): the token. etcd's auth errors are raised as they
        are; a node that cannot answer is Unsent (another is tried)."""
        assert self._login is not None
        if conn is not None:
            body = await self._native_call(conn, addr, self._login_method, self._login,
                                           deadline, False)
            resp = AuthenticateResult.FromString(body)
        else:
            remaining = deadline - time.monotonic()
            call = self._channel(addr).unary_unary(
                SERVICE + self._login_method, request_serializer=None,
                response_deserializer=AuthenticateResult.FromString)
            try:
                resp = await call(self._login, timeout=max(0.001, remaining))
            except grpc.aio.AioRpcError as e:
                error = rpc_error(e, addr, self._login_method, False,
                                   tls=self._tls is not None)
                raise (Unsent(error.error) if isinstance(error, Unsent) else
                       Unsent(Unavailable(str(error)))) from None
        if resp.HasField("error") and resp.error.message == AUTH_NOT_ENABLED:
            token = ""  # as etcd's clients: served without a token while auth is off
        elif resp.HasField("error"):
            err = error_from_wire(resp.error)
            if isinstance(err, KvError) and err.grpc_code != "UNAVAILABLE":
                raise err
            raise Unsent(err if isinstance(err, Unavailable) else Unavailable(err.message))
        else:
            token = str(AuthenticateResponse.FromString(resp.response).token)
        if conn is None:
            self._tokens[addr] = token
        return token

    async def _grpc_call(
        self, addr: str, method: str, payload: bytes, response_cls: type[Any],
        deadline: float, *, write: bool,
    ) -> Any:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _too_late(method, addr, write)
        call = self._channel(addr).unary_unary(
            SERVICE + method, request_serializer=None,
            response_deserializer=response_cls.FromString,
        )
        metadata = None if method in _OPEN_METHODS else await self.grpc_metadata(
            addr, deadline)
        try:
            return await call(payload, timeout=remaining, metadata=metadata)
        except grpc.aio.AioRpcError as e:
            self._grpc_until.pop(addr, None)  # reconnecting: look for its native listener
            error = rpc_error(e, addr, method, write, tls=self._tls is not None)
            if isinstance(error, Unsent):
                self._suspect(addr)
            raise error from None

    async def _native_call(
        self, conn: NativeConnection, addr: str, method: str, payload: bytes,
        deadline: float, write: bool,
    ) -> bytes:
        """One request on a native connection, its failures mapped like gRPC's."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _too_late(method, addr, write)
        unknown = " (the write may still be applied)" if write else ""
        try:
            return await conn.call(METHOD_CODES[method], payload, remaining)
        except NotSent as e:
            raise Unsent(Unavailable(f"{addr}: {e}")) from None
        except Lost as e:
            raise ConnectionLost(f"{addr}: {method}: {e}{unknown}") from None
        except TimeoutError:
            raise Timeout(f"{addr}: no answer to {method} before the deadline{unknown}"
                          ) from None
        except Refused as e:
            if e.status == STATUS_SHUTTING_DOWN:
                raise Unsent(Unavailable(f"{addr}: {e}")) from None
            # Too large for the server, or a method it does not know: never processed.
            raise InvalidRequest(f"{addr}: {method} refused: {e}") from None

    async def _native_connection(self, addr: str, deadline: float) -> NativeConnection | None:
        """The live native connection to `addr`, or None when `addr` is served over gRPC.

        Raises Unsent when the node cannot be asked (the request was not sent)."""
        task = self._native.get(addr)
        if task is not None and task.done():
            if not task.cancelled() and task.exception() is None:
                conn = task.result()
                if conn is not None and not conn.closed:
                    return conn
                if conn is None and time.monotonic() < self._grpc_until.get(addr, 0.0):
                    return None
            # Failed, its connection dropped, or served over gRPC for a while: ask again (a
            # restarted node listens on a new port when its native port is chosen at start).
            task = None
        if task is None:
            task = asyncio.get_running_loop().create_task(self._open_native(addr))
            task.add_done_callback(_retrieve)
            self._native[addr] = task
        remaining = deadline - time.monotonic()
        try:
            return await asyncio.wait_for(asyncio.shield(task), max(0.0, remaining))
        except TimeoutError:
            raise Unsent(Unavailable(
                f"cannot connect to {addr} before the deadline (no answer to the Status call "
                "that finds its native listener)")) from None

    async def _open_native(self, addr: str) -> NativeConnection | None:
        """Ask `addr` for its native address (gRPC Status) and connect to it, within
        `_CONNECT_TIMEOUT_S` whatever the deadlines of the calls that wait for it."""
        deadline = time.monotonic() + _CONNECT_TIMEOUT_S
        try:
            resp = await self._grpc_call(addr, "Status", b"", StatusResponse, deadline,
                                         write=False)
        except (DengineError, Unsent, _Late) as e:  # nothing was sent yet of the request
            self._suspect(addr)
            error = e if isinstance(e, DengineError) else e.error
            if isinstance(error, TlsError):
                raise Unsent(error) from None
            message = error.message if addr in error.message else f"{addr}: {error.message}"
            raise Unsent(Unavailable(message), dial=isinstance(e, Unsent) and e.dial
                         ) from None
        native = "" if resp.HasField("error") else resp.native_address
        if not native:
            if self._transport == "native":
                raise Unsent(Unavailable(f"{addr} has no native client listener "
                                         "(transport='native')"))
            log.debug("%s has no native client listener; using gRPC", addr)
            self._grpc_until[addr] = time.monotonic() + _NATIVE_RETRY_S
            return None
        native = _dialable(native, addr)
        try:
            # TLS: the node's certificate is checked against the host name the client
            # was given for it (the same node as its gRPC address)
            conn = await NativeConnection.open(
                native, max(0.001, deadline - time.monotonic()), self._probe_interval,
                ssl=self._tls.context() if self._tls is not None else None,
                server_hostname=parse_address(addr)[0])
        except (OSError, TimeoutError, DengineError) as e:
            if self._transport == "native" and isinstance(e, ssl.SSLError):
                self._suspect(addr)
                raise Unsent(TlsError(f"cannot connect to the native listener {native} of "
                                      f"{addr}: TLS: {handshake_problem(e)}")) from None
            if self._transport == "native":
                self._suspect(addr)
                raise Unsent(Unavailable(f"cannot connect to the native listener {native} "
                                         f"of {addr}: {e}")) from None
            log.debug("cannot connect to the native listener %s of %s (%s); using gRPC",
                      native, addr, e)
            self._grpc_until[addr] = time.monotonic() + _NATIVE_RETRY_S
            return None
        conn.on_lost = functools.partial(self._lost, addr)
        if self._login is not None:
            try:
                await self._authenticate(conn, addr, deadline)
            except BaseException:
                conn.close()
                raise
        return conn

    def _tls_failed(self, addr: str, error: DengineError,
                    endpoints: list[str] | None = None) -> None:
        """Raise `error` at once when it is a TLS failure and every endpoint failed so
        (retrying cannot help until the certificates or flags change)."""
        if not isinstance(error, TlsError):
            self._tls_failures.pop(addr, None)
            return
        self._tls_failures[addr] = error
        if all(a in self._tls_failures for a in endpoints or self.endpoints):
            raise error

    def _lost(self, addr: str, conn: NativeConnection) -> None:
        """`conn` to `addr` broke: drop the leader guess if it is `addr`; pass over a node
        that stopped answering."""
        if self._leader == addr:
            self._leader = None
        if conn.silent:
            self._suspect(addr)

    def _channel(self, addr: str) -> grpc.aio.Channel:
        channel = self._channels.get(addr)
        if channel is None:
            channel = (
                grpc.aio.secure_channel(addr, self._credentials, options=_CHANNEL_OPTIONS)
                if self._credentials is not None
                else grpc.aio.insecure_channel(addr, options=_CHANNEL_OPTIONS))
            self._channels[addr] = channel
        return channel

    def remember_leader(self, addr: str) -> None:
        self._leader = addr
        if addr not in self.endpoints:
            self.endpoints.append(addr)

    def _forget(self, addr: str) -> None:
        """`addr` failed or is not the leader: try the next endpoint."""
        if self._leader == addr:
            self._leader = None
        self.rotate()

    def rotate(self) -> None:
        self._next = (self._next + 1) % len(self.endpoints)

    def _pick(self) -> str:
        """The next endpoint in turn, passing over suspects unless all are."""
        endpoints = self.endpoints
        n = len(endpoints)
        for i in range(n):
            addr = endpoints[(self._next + i) % n]
            if not self._suspected(addr):
                self._next = (self._next + i) % n
                return addr
        return endpoints[self._next % n]

    def _answered(self, addr: str) -> None:
        if self._suspects:
            self._suspects.pop(addr, None)
        if self._tls_failures:
            self._tls_failures.pop(addr, None)
        if self._unreachable:
            self._unreachable.pop(addr, None)

    def _dial_failed(self, addr: str, unsent: Unsent, candidates: list[str]) -> None:
        """`addr` could not be connected to: with a dial timeout, give up the call (raise
        Unavailable, naming each endpoint's reason) once every candidate has been
        unreachable for that long."""
        if not unsent.dial or self._dial_timeout is None:
            return
        now = time.monotonic()
        self._unreachable[addr] = (self._unreachable.get(addr, (now, ""))[0],
                                   unsent.error.message)
        since = [self._unreachable.get(a) for a in candidates]
        if all(s is not None and now - s[0] >= self._dial_timeout for s in since):
            reasons = "; ".join(s[1] for s in since if s is not None)
            raise Unavailable(reasons)

    def _suspect(self, addr: str) -> None:
        self._suspects[addr] = time.monotonic() + _SUSPECT_S
        if self._leader == addr:
            self._leader = None

    def _suspected(self, addr: str) -> bool:
        until = self._suspects.get(addr)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        del self._suspects[addr]
        return False


class Backoff:
    """Exponential backoff with jitter that never sleeps past the deadline."""

    def __init__(self) -> None:
        self._delay = _BACKOFF_FIRST_S
        self.redirects = 0

    def redirected(self) -> None:
        self.redirects += 1

    async def sleep(self, deadline: float, error: DengineError) -> None:
        """Sleep before the next attempt, or raise `error` when no time is left for one."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise error
        await asyncio.sleep(min(remaining, self._delay * random.uniform(0.5, 1.0)))
        self._delay = min(self._delay * 2, _BACKOFF_MAX_S)
        self.redirects = 0
        if time.monotonic() >= deadline:
            raise error


class _Late(Exception):
    """Internal: the deadline passed before the request could be sent (nothing to learn
    about the node); `error` is what the caller gets."""

    def __init__(self, error: DengineError) -> None:
        super().__init__(error.message)
        self.error = error


def _too_late(method: str, addr: str, write: bool) -> _Late:
    """The deadline passed before the request could be sent to `addr`. A write was then
    not applied: it is retried only after attempts known not to have been applied."""
    if write:
        return _Late(Unavailable(f"deadline passed before {method} could be sent to {addr}; "
                                 "it was not applied"))
    return _Late(Timeout(f"deadline passed before {method} could be sent to {addr}"))


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a connect task's failure as seen (its waiters may all have given up)."""
    if not task.cancelled():
        task.exception()


def _dialable(native: str, grpc_addr: str) -> str:
    """`native` with a wildcard host (a listener on every interface) replaced by the host
    the client already reaches the node at."""
    host, port = parse_address(native)
    if host not in ("0.0.0.0", "::", ""):
        return native
    host = parse_address(grpc_addr)[0]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _read_attempt_deadline(deadline: float) -> float:
    now = time.monotonic()
    share = max(_READ_ATTEMPT_MIN_S, (deadline - now) * _READ_ATTEMPT_SHARE)
    return min(deadline, now + share)

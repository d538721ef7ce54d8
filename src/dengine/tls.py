"""TLS of the client listeners, the peer links and the clients: certificate files ->
`ssl` contexts and gRPC credentials.

A node's certificates are read again, without a restart, when their files change (each
new connection looks at the files' stat at most every `RELOAD_CHECK_S`) or at once after
`request_reload()` (SIGHUP in `dengine serve`). A file that cannot be read or a key that
does not match its certificate keeps the previous ones in use (logged as a warning); at
start it is a ConfigError. Connections already open keep the certificates they started
with.

Peers always verify each other (mutual TLS with the cluster's CA): the dialing node
checks the listener's certificate against the CA and the host name it dials; the listener
requires a certificate from the CA. Client listeners require client certificates only
with `client_cert_auth` (etcd's --client-cert-auth).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import threading
import time
from asyncio import sslproto
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from dengine.errors import ConfigError, DengineError

if TYPE_CHECKING:
    import grpc

log = logging.getLogger("dengine.tls")

RELOAD_CHECK_S = 1.0  # a node looks at its certificate files at most this often
HANDSHAKE_TIMEOUT_S = 10
LINGER_S = 2.0  # a refused TLS client is given this long to read the alert

_reload_generation = 0

T = TypeVar("T")


class TlsError(DengineError):
    """A TLS handshake failed: no common CA, a wrong host name, no client certificate,
    or TLS on one side only. Retrying does not help until the configuration changes."""

    code = "TLS"


def request_reload() -> None:
    """Read every node certificate file again at its next use (SIGHUP)."""
    global _reload_generation
    _reload_generation += 1


def _stat(path: str) -> tuple[int, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0, 0)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class _Reloading(Generic[T]):
    """Something built from files (`build()`), built again when the files change."""

    def __init__(self, what: str, paths: list[str], build: Callable[[], T]) -> None:
        self._what = what
        self._paths = [p for p in paths if p]
        self._build = build
        self._lock = threading.Lock()  # gRPC asks from its own threads
        self._stats = [_stat(p) for p in self._paths]
        self._generation = _reload_generation
        self._checked = time.monotonic()
        try:
            self._value = build()
        except (OSError, ssl.SSLError, ValueError) as e:
            raise ConfigError(f"{what}: {_describe(e)}") from None
        self.version = 1  # bumped at each reload

    def get(self) -> T:
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_S and self._generation == _reload_generation:
            return self._value
        with self._lock:
            self._checked = now
            forced = self._generation != _reload_generation
            self._generation = _reload_generation
            stats = [_stat(p) for p in self._paths]
            if stats == self._stats and not forced:
                return self._value
            try:
                value = self._build()
            except (OSError, ssl.SSLError, ValueError) as e:
                log.warning("%s: cannot reload the certificates (%s); keeping the ones in use",
                            self._what, _describe(e))
                self._stats = stats  # tried: again when they change again (or on SIGHUP)
                return self._value
            self._value, self._stats = value, stats
            self.version += 1
            log.info("%s: certificates reloaded (%s)", self._what, ", ".join(self._paths))
            return value


def _describe(e: BaseException) -> str:
    if isinstance(e, FileNotFoundError):
        return f"file not found: {e.filename}"
    if isinstance(e, ssl.SSLError):
        reason = e.reason or ""
        if reason == "KEY_VALUES_MISMATCH":
            return "the key does not match the certificate"
        return f"{reason or e}".replace("_", " ").lower()
    if isinstance(e, OSError):
        return f"{e.strerror or e}: {e.filename}" if e.filename else str(e)
    return str(e)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@dataclass(frozen=True)
class ServerFiles:
    """A listener's certificate, key and (optional) CA of the certificates it accepts."""

    cert_file: str
    key_file: str
    trusted_ca_file: str = ""


class ServerTls:
    """A TLS listener's credentials (client listeners: gRPC and native)."""

    def __init__(self, files: ServerFiles, *, client_cert_auth: bool, what: str) -> None:
        if not files.cert_file or not files.key_file:
            raise ConfigError(f"{what}: TLS needs both a certificate and a key file")
        if client_cert_auth and not files.trusted_ca_file:
            raise ConfigError(f"{what}: client certificate authentication needs a trusted "
                              "CA file (trusted_ca_file)")
        self.files = files
        self.client_cert_auth = client_cert_auth
        self._context = _Reloading(what, [files.cert_file, files.key_file,
                                          files.trusted_ca_file], self._make_context)
        self._grpc_version = 0

    def _make_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.files.cert_file, self.files.key_file)
        if self.files.trusted_ca_file:
            ctx.load_verify_locations(self.files.trusted_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED if self.client_cert_auth else ssl.CERT_NONE
        return ctx

    def context(self) -> ssl.SSLContext:
        """The current context (new connections use it)."""
        return self._context.get()

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Credentials for `add_secure_port` that follow reloads (gRPC asks at each new
        connection)."""
        import grpc

        self._context.get()
        self._grpc_version = self._context.version
        return grpc.dynamic_ssl_server_credentials(
            self._grpc_config(), self._grpc_fetch,
            require_client_authentication=self.client_cert_auth)

    def _grpc_config(self) -> Any:
        import grpc

        files = self.files
        return grpc.ssl_server_certificate_configuration(
            [(_read(files.key_file), _read(files.cert_file))],
            root_certificates=_read(files.trusted_ca_file) if files.trusted_ca_file else None)

    def _grpc_fetch(self) -> Any:
        """gRPC's question at each handshake: None (keep) or the new configuration."""
        try:
            self._context.get()  # checks the files, validates them (key matches cert)
            if self._context.version == self._grpc_version:
                return None
            config = self._grpc_config()
            self._grpc_version = self._context.version
            return config
        except Exception as e:  # gRPC's thread: never let it see an exception
            log.warning("cannot reload the gRPC certificates: %s", _describe(e))
            return None


class PeerTls:
    """Mutual TLS of the peer links: both sides present a certificate of the cluster's CA."""

    def __init__(self, files: ServerFiles) -> None:
        what = "peer TLS"
        if not (files.cert_file and files.key_file and files.trusted_ca_file):
            raise ConfigError("peer TLS needs peer_cert_file, peer_key_file and "
                              "peer_trusted_ca_file (mutual TLS with the cluster's CA)")
        self.files = files
        paths = [files.cert_file, files.key_file, files.trusted_ca_file]
        self._server = _Reloading(what, paths, self._make_server)
        self._client = _Reloading(what, paths, self._make_client)

    def _make_server(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.files.cert_file, self.files.key_file)
        ctx.load_verify_locations(self.files.trusted_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def _make_client(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the host name
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.files.cert_file, self.files.key_file)
        ctx.load_verify_locations(self.files.trusted_ca_file)
        return ctx

    def server_context(self) -> ssl.SSLContext:
        return self._server.get()

    def client_context(self) -> ssl.SSLContext:
        return self._client.get()


class ClientTls:
    """A client's TLS (etcdctl's --cacert --cert --key): the CA that signed the nodes'
    certificates (None: the system's trusted CAs) and an optional client certificate."""

    def __init__(self, cacert: str | None = None, cert: str | None = None,
                 key: str | None = None) -> None:
        if bool(cert) != bool(key):
            raise ConfigError("a client certificate needs both --cert and --key")
        self.cacert, self.cert, self.key = cacert or None, cert or None, key or None
        try:
            self._ca = _read(self.cacert) if self.cacert else None
            self._cert = _read(self.cert) if self.cert else None
            self._key = _read(self.key) if self.key else None
            self._context = self._make_context()
        except (OSError, ssl.SSLError, ValueError) as e:
            raise ConfigError(f"client TLS: {_describe(e)}") from None

    def _make_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.cacert)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert and self.key:
            ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def context(self) -> ssl.SSLContext:
        return self._context

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        import grpc

        return grpc.ssl_channel_credentials(self._ca, self._key, self._cert)


def client_tls(tls: ClientTls | bool | None, cacert: str | None, cert: str | None,
               key: str | None) -> ClientTls | None:
    """The client's TLS from its arguments: None for plaintext."""
    if isinstance(tls, ClientTls):
        return tls
    if tls or cacert or cert or key:
        return ClientTls(cacert, cert, key)
    return None


Refused = Callable[[Any, str], None]  # (peer address, why): a failed handshake


def peer_certificate(transport: Any) -> dict[str, list[bytes]]:
    """A TLS connection's verified client certificate as gRPC's auth context gives it
    (`x509_common_name`, `x509_pem_cert`; {} without one, or on plain TCP)."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return {}
    der = ssl_object.getpeercert(binary_form=True)
    verified = ssl_object.getpeercert() if der else None  # {} when not verified
    if not der or not verified:
        return {}
    found = {"x509_pem_cert": [ssl.DER_cert_to_PEM_cert(der).encode()]}
    names = [value for rdn in verified.get("subject", ()) for key, value in rdn
             if key == "commonName"]
    if names:
        found["x509_common_name"] = [names[0].encode()]
    return found


def accepting(app_factory: Callable[[], asyncio.BaseProtocol],
              context: Callable[[], ssl.SSLContext], on_refused: Refused
              ) -> Callable[[], asyncio.BaseProtocol]:
    """A protocol factory for `loop.create_server` that puts TLS (server side, with the
    context current at each connection) in front of `app_factory`'s protocols, and
    reports every failed handshake to `on_refused` (a loop's own `ssl=` listener keeps
    them to itself). asyncio's SSL protocol, which uvloop's transports serve too; the
    app protocol sees its `connection_made` only after a successful handshake."""
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.BaseProtocol:
        return _Accepting(loop, app_factory(), context(), on_refused)

    return factory


class _Accepting(sslproto.SSLProtocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, app: asyncio.BaseProtocol,
                 context: ssl.SSLContext, on_refused: Refused) -> None:
        self._handshake: asyncio.Future[None] = loop.create_future()
        super().__init__(loop, app, context, self._handshake, server_side=True,
                         ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S)
        self._on_refused: Refused | None = on_refused
        self._peer: Any = None
        self._handshake.add_done_callback(self._handshake_done)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._peer = transport.get_extra_info("peername")
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._handshake.done() and exc is None:
            self._refused(EOFError())
        super().connection_lost(exc)

    def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
        """A handshake refused by our side (no client certificate, an unknown CA): the
        alert OpenSSL wrote is sent before the connection ends, as a TLS server should
        (asyncio drops it and closes at once, so the client saw an EOF, or a reset when
        its next bytes arrived after the close) (see _Lingering)."""
        transport = self._transport
        if (isinstance(handshake_exc, ssl.SSLError) and transport is not None
                and not transport.is_closing()):
            self._transport = None  # the base class must not close it now
            _Lingering(transport, self._outgoing.read())  # type: ignore[attr-defined]
        super()._on_handshake_complete(handshake_exc)

    def _handshake_done(self, fut: asyncio.Future[None]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            self._refused(cast(BaseException, fut.exception()))

    def _refused(self, e: BaseException) -> None:
        report, self._on_refused = self._on_refused, None
        if report is not None:
            report(self._peer, handshake_problem(e))


class _Lingering(asyncio.Protocol):
    """The end of a refused TLS connection: the alert, then FIN; what the client still
    sends is read and dropped until it closes (or LINGER_S), so that our close sends no
    RST, which could reach the client before the alert and hide it ("connection reset
    by peer" where the client should report the alert)."""

    def __init__(self, transport: asyncio.BaseTransport, alert: bytes) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(LINGER_S, self._transport.abort)
        self._transport.set_protocol(self)
        if alert:
            self._transport.write(alert)
        if self._transport.can_write_eof():
            self._transport.write_eof()

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # the transport closes

    def connection_lost(self, exc: BaseException | None) -> None:
        self._timer.cancel()


def node_certificate_problem(der: bytes | None) -> str:
    """Why a peer's certificate (DER) is not a node's: "" when it is. A node certificate
    may serve (the serverAuth extended key usage, or no usage restriction): a client
    certificate of the same CA (clientAuth only) cannot act as a member."""
    if not der:
        return "no certificate"
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        cert = x509.load_der_x509_certificate(der)
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return ""
    except ValueError as e:
        return f"unreadable certificate ({e})"
    if ExtendedKeyUsageOID.SERVER_AUTH in usage:
        return ""
    subject = cert.subject.rfc4514_string() or "no subject"
    return (f"a client certificate ({subject}, without the serverAuth usage) cannot act "
            "as a member")


def handshake_problem(e: BaseException) -> str:
    """A short reason for a failed TLS handshake (for logs and errors)."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return (f"certificate verify failed: {e.verify_message} (not a certificate of "
                "a trusted CA, or not for this host name?)")
    if isinstance(e, ssl.SSLError):
        reason = e.reason or str(e)
        hints = {
            "WRONG_VERSION_NUMBER": "not TLS (a plaintext peer or client?)",
            "HTTP_REQUEST": "not TLS (a plaintext HTTP request)",
            "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no client certificate",
            "TLSV1_ALERT_UNKNOWN_CA": "the other side does not trust our certificate's CA",
            "SSLV3_ALERT_BAD_CERTIFICATE": "the other side refused our certificate",
            "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the other side requires a certificate",
            "UNEXPECTED_EOF_WHILE_READING": "closed during the handshake",
        }
        return hints.get(reason, reason.replace("_", " ").lower())
    if isinstance(e, TimeoutError) or (
            isinstance(e, ConnectionAbortedError) and "taking longer" in str(e)):
        return "no TLS handshake in time"
    if isinstance(e, (ConnectionError, asyncio.IncompleteReadError, EOFError)):
        return "closed during the handshake"
    return str(e) or e.__class__.__name__


def grpc_tls_problem(details: str, tls: bool) -> str:
    """What a gRPC connection failure's `details` say about TLS, for a client that uses
    TLS (`tls`) or not: "" when they are not about TLS."""
    if "failed to connect" not in details:
        return ""
    if "CERTIFICATE_VERIFY_FAILED" in details:
        why = details.split("CERTIFICATE_VERIFY_FAILED:", 1)[1].removesuffix(": OK").strip()
        return (f"TLS: the node's certificate is not signed by a trusted CA ({why}); give "
                "the CA that signed it with --cacert")
    if "WRONG_VERSION_NUMBER" in details:
        return "TLS: the node does not speak TLS on this port (plaintext: drop --cacert)"
    if "Hostname Verification" in details or "Peer name" in details:
        return ("TLS: the node's certificate is not for this host name (use a name or "
                "address its certificate lists)")
    if "andshake failed" in details or "SSL_ERROR" in details:
        return "TLS handshake failed: " + details.rsplit("last error: ", 1)[-1]
    if "Unwrap failed" in details:  # TLS 1.3: the node's alert after our handshake
        return ("TLS: the node refused the connection (a TLS alert after the handshake): "
                "it requires a client certificate of its CA (--cert, --key)")
    if details.endswith("Socket closed"):
        if tls:
            return ("TLS: the node closed the connection during the handshake: it requires "
                    "a client certificate of its CA (--cert, --key)")
        return ("the node closed the connection at once: it may require TLS (give the CA "
                "of its certificate with --cacert)")
    return ""

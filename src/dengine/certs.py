"""A test certificate authority and node/client certificates (`dengine certs make`).

For trying TLS out and for tests: a CA (`ca.crt`, `ca.key`) and, signed by it, node
certificates usable as server and as client certificates (a node's client listeners, its
peer links both ways, the forwarding of writes to the leader) and client certificates
(common name = the client's name). EC P-256 keys (small and fast handshakes), SHA-256
signatures. A CA already in the directory is reused, so that certificates can be added
later. Production clusters should rather use their own PKI (docs/operations.md shows the
same with openssl).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dengine.errors import ConfigError

DEFAULT_HOSTS = ("127.0.0.1", "::1", "localhost")
CA_CERT, CA_KEY = "ca.crt", "ca.key"


@dataclass
class Made:
    """What `make` wrote (paths), for the caller to print."""

    ca_cert: Path
    ca_key: Path
    ca_created: bool
    files: list[Path] = field(default_factory=list)


def make(directory: str | os.PathLike[str], *, nodes: list[str], clients: list[str],
         hosts: list[str], days: int = 365, ca_name: str = "dengine test CA") -> Made:
    """Write the CA (unless there) and `NAME.crt` + `NAME.key` for each node and client."""
    if days <= 0:
        raise ConfigError(f"--days must be positive, got {days}")
    for name in [*nodes, *clients]:
        if not name or "/" in name or name.startswith(".") or name == "ca":
            raise ConfigError(f"invalid certificate name {name!r}")
    sans = [_san(h) for h in hosts]
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    ca_cert_path, ca_key_path = out / CA_CERT, out / CA_KEY
    if ca_cert_path.exists() and ca_key_path.exists():
        ca_cert, ca_key = _load_ca(ca_cert_path, ca_key_path)
        created = False
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _ca_certificate(ca_name, ca_key, days)
        _write_key(ca_key_path, ca_key)
        _write(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
        created = True
    made = Made(ca_cert_path, ca_key_path, created)
    for name in nodes:
        made.files += _issue(out, name, ca_cert, ca_key, days, sans, server=True)
    for name in clients:
        made.files += _issue(out, name, ca_cert, ca_key, days, [], server=False)
    return made


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        if not host or any(c.isspace() or c in "/:" for c in host):
            raise ConfigError(f"invalid host name {host!r} for a certificate") from None
        return x509.DNSName(host)


def _load_ca(cert_path: Path, key_path: Path
             ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"cannot read the CA in {cert_path.parent}: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key_path}: not an EC key made by `dengine certs make`")
    return cert, key


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _ca_certificate(name: str, key: ec.EllipticCurvePrivateKey, days: int) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )


def _issue(out: Path, name: str, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
           days: int, sans: list[x509.GeneralName], *, server: bool) -> list[Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_encipherment=False, key_agreement=True,
            key_cert_sign=False, crl_sign=False, content_commitment=False,
            data_encipherment=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path, key_path = out / f"{name}.crt", out / f"{name}.key"
    _write_key(key_path, key)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return [cert_path, key_path]


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """A private key, readable by its owner only (written under that mode from the start)."""
    _write(path, key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.TraditionalOpenSSL,
                                   serialization.NoEncryption()), 0o600)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` at once (a node that reloads its certificates never reads half a
    file), created with `mode` from the start."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)

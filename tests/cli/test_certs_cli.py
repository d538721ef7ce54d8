"""`dengine certs make`: a CA and certificates signed by it, usable by `ssl` as they are."""

from __future__ import annotations

import json
import ssl
import stat
from pathlib import Path

from click.testing import CliRunner

from dengine.cli import cli


def test_certs_make_writes_a_ca_and_certificates_signed_by_it(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    result = CliRunner().invoke(cli, ["certs", "make", str(out), "--nodes", "2",
                                      "--host", "127.0.0.1", "--host", "db.example"])
    assert result.exit_code == 0, result.output
    assert "created CA" in result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["ca.crt", "ca.key", "client.crt", "client.key", "node1.crt",
                     "node1.key", "node2.crt", "node2.key"]
    for key in out.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    # a server context accepts the node's pair; a client context trusting the CA and
    # holding the client's pair loads
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(out / "node1.crt", out / "node1.key")
    client = ssl.create_default_context(cafile=str(out / "ca.crt"))
    client.load_cert_chain(out / "client.crt", out / "client.key")

    ca = (out / "ca.crt").read_bytes()
    again = CliRunner().invoke(cli, ["certs", "make", str(out), "--node", "node9",
                                     "--client", "alice", "--json"])
    assert again.exit_code == 0, again.output
    report = json.loads(again.output)
    assert report["ca_created"] is False  # the CA in the directory is reused
    assert (out / "ca.crt").read_bytes() == ca
    assert sorted(Path(p).name for p in report["files"]) == [
        "alice.crt", "alice.key", "node9.crt", "node9.key"]


def test_certs_make_refuses_a_bad_host_name(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["certs", "make", str(tmp_path), "--host", "a b"])
    assert result.exit_code != 0
    assert "invalid host name" in str(result.exception or result.output)

"""How a gRPC connection failure is classified (client/transport_errors.rpc_error): a refused
connection is a dial failure (the CLI gives up at once); a TLS handshake the node cut
short without a certificate problem is not (a loaded node did it in a CI run: the call is
tried again until its deadline)."""

from __future__ import annotations

import grpc

from dengine.client.transport_errors import Unsent, rpc_error
from dengine.tls import TlsError


class _Err(grpc.aio.AioRpcError):
    def __init__(self, details: str) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                         grpc.aio.Metadata(), details)


def test_refused_is_a_dial_failure_a_cut_handshake_is_retried() -> None:
    refused = rpc_error(_Err("failed to connect to all addresses; last error: UNKNOWN: "
                              "ipv4:127.0.0.1:1: Connection refused"), "127.0.0.1:1", "Put",
                         True, tls=False)
    assert isinstance(refused, Unsent) and refused.dial
    cut = rpc_error(_Err("failed to connect to all addresses; last error: UNAVAILABLE: "
                          "ipv4:127.0.0.1:2: Handshake read failed (Endpoint closing)"),
                     "127.0.0.1:2", "Put", True, tls=True)
    assert isinstance(cut, Unsent) and not cut.dial
    assert "Handshake read failed" in cut.error.message


def test_an_alert_after_the_handshake_means_a_client_certificate_is_required() -> None:
    """TLS 1.3: a server that refuses the client's certificate (or its absence) says so
    with an alert after the client's handshake ended; grpc's client reports "Unwrap
    failed" (etcd's answer, and dengine's hand-framed front end's)."""
    refused = rpc_error(_Err("failed to connect to all addresses; last error: UNAVAILABLE: "
                              "ipv4:127.0.0.1:3: Unwrap failed (TSI_DATA_CORRUPTED)"),
                         "127.0.0.1:3", "Range", False, tls=True)
    assert isinstance(refused, Unsent) and isinstance(refused.error, TlsError)
    assert "client certificate" in refused.error.message

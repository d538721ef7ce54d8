"""How a failed gRPC call of the client reads: `rpc_error` maps a transport failure to a
dengine error, or to `Unsent` when the request never left (a write is then safe to
retry, and a node that could not be dialed counts toward the client's dial timeout)."""

from __future__ import annotations

import grpc

from dengine.errors import (
    DengineError,
    InvalidRequest,
    Timeout,
    Unavailable,
)
from dengine.tls import TlsError, grpc_tls_problem


class ConnectionLost(Timeout):
    """The request was sent, then the connection broke: a write's outcome is unknown."""

    code = "CONNECTION_LOST"


class Unsent(Exception):
    """Internal: the attempt failed before the request left (safe to retry a write);
    `dial`: because the node could not be connected to (refused, unknown host)."""

    def __init__(self, error: DengineError, *, dial: bool = False) -> None:
        super().__init__(error.message)
        self.error = error
        self.dial = dial


def rpc_error(e: grpc.aio.AioRpcError, addr: str, method: str, write: bool,
               tls: bool = False) -> Exception:
    """Map a gRPC status (a transport failure) to a dengine error (or Unsent)."""
    code = e.code()
    details = e.details() or ""
    unknown = " (the write may still be applied)" if write else ""
    problem = grpc_tls_problem(details, tls) if code == grpc.StatusCode.UNAVAILABLE else ""
    if problem:
        return Unsent(TlsError(f"cannot connect to {addr}: {problem}"))
    if code == grpc.StatusCode.UNAVAILABLE:
        lowered = details.lower()
        if "failed to connect" in lowered or "connection refused" in lowered:
            reason = details.rsplit(": ", 1)[-1]
            # A handshake the node cut short (not about certificates: see above) is no
            # sign of a dead node: a loaded one did it; tried again until the deadline.
            return Unsent(Unavailable(f"cannot connect to {addr}: {reason}"),
                          dial="handshake" not in lowered)
        if "resolv" in lowered or "dns" in lowered:  # an unknown host: not a lost connection
            reason = details.rsplit(": ", 1)[-1].rstrip("]")
            host = addr.rpartition(":")[0]
            return Unsent(Unavailable(f"cannot connect to {addr}: unknown host {host!r} "
                                      f"({reason})"), dial=True)
        return ConnectionLost(f"{addr}: connection lost during {method}: {details}{unknown}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return Timeout(f"{addr}: no answer to {method} before the deadline{unknown}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return InvalidRequest(f"{addr}: request exceeds the server's max_request_size: {details}")
    if code == grpc.StatusCode.CANCELLED:
        return ConnectionLost(f"{addr}: {method} cancelled: {details}{unknown}")
    return DengineError(f"{addr}: {method} failed: {code.name}: {details}{unknown}")

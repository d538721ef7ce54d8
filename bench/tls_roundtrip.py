"""CPU cost of TLS on one connection: 300-byte request/answer round trips, plaintext and
TLS (the server behind `dengine.tls.accepting`, as the native listener and the peer links;
the client on uvloop's TLS, as `dengine.Client`), client and server in this one process.

    python bench/tls_roundtrip.py [ROUND_TRIPS]

Prints CPU (process time) and wall time per round trip; CPU time is the number to read
on a shared machine.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time

import uvloop

from dengine.certs import make
from dengine.tls import ClientTls, ServerFiles, ServerTls, accepting

SIZE = 300


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


class Caller(asyncio.Protocol):
    def __init__(self) -> None:
        self.got = 0
        self.done: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got >= SIZE and self.done is not None and not self.done.done():
            self.done.set_result(None)


async def measure(n: int, certs: str | None) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    factory: object = Echo
    client_ctx = None
    if certs is not None:
        server = ServerTls(ServerFiles(f"{certs}/node1.crt", f"{certs}/node1.key",
                                       f"{certs}/ca.crt"), client_cert_auth=True, what="bench")
        factory = accepting(Echo, server.context, lambda peer, why: print("refused", why))
        client_ctx = ClientTls(f"{certs}/ca.crt", f"{certs}/client.crt",
                               f"{certs}/client.key").context()
    listener = await loop.create_server(factory, "127.0.0.1", 0)  # type: ignore[arg-type]
    port = listener.sockets[0].getsockname()[1]
    transport, caller = await loop.create_connection(
        Caller, "127.0.0.1", port, ssl=client_ctx,
        server_hostname="127.0.0.1" if client_ctx else None)
    message = b"x" * SIZE
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        caller.got, caller.done = 0, loop.create_future()
        transport.write(message)
        await caller.done
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    transport.close()
    listener.close()
    return cpu / n * 1e6, wall / n * 1e6


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as certs:
        make(certs, nodes=["node1"], clients=["client"], hosts=["127.0.0.1"])
        for _ in range(2):
            for name, where in (("plaintext", None), ("TLS", certs)):
                cpu, wall = await measure(n, where)
                print(f"{name:9} {cpu:6.1f} us CPU, {wall:6.1f} us wall per round trip")


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000))

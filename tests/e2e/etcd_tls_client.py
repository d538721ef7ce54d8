"""etcd's Python clients over TLS with a client certificate, in a process of their own.

    python etcd_tls_client.py etcd3|aetcd HOST:PORT '{"cacert": ..., "cert": ..., "key": ...}'

Puts "etcd-py" = "py" and reads back "cli" (written by the test); prints
{"put": "OK", "get": <value of cli>}. python3-etcd3 takes the certificates (ca_cert,
cert_key, cert_cert). aetcd 1.0 has no TLS options: its channel factory is replaced by a
secure one, as an application would have to.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def with_etcd3(host: str, port: int, tls: dict[str, str]) -> dict[str, Any]:
    import etcd3

    c = etcd3.client(host, port, ca_cert=tls["cacert"], cert_key=tls["key"],
                     cert_cert=tls["cert"], timeout=10)
    c.put("etcd-py", "py")
    value, _ = c.get("cli")
    assert c.get("etcd-py")[0] == b"py"
    return {"put": "OK", "get": value.decode()}


async def with_aetcd(host: str, port: int, tls: dict[str, str]) -> dict[str, Any]:
    import aetcd
    import grpc
    from aetcd import rpc

    credentials = grpc.ssl_channel_credentials(
        _read(tls["cacert"]), _read(tls["key"]), _read(tls["cert"]))

    def secure_channel(target: str, options: Any = None) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(target, credentials, options=options)

    rpc.insecure_channel = secure_channel  # aetcd's client calls rpc.insecure_channel
    async with aetcd.Client(host, port, timeout=10) as c:
        await c.put(b"etcd-py", b"py")
        got = await c.get(b"cli")
        assert got is not None
        return {"put": "OK", "get": got.value.decode()}


def main() -> None:
    library, endpoint, tls = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    host, port = endpoint.rsplit(":", 1)
    if library == "etcd3":
        report = with_etcd3(host, int(port), tls)
    else:
        report = asyncio.run(with_aetcd(host, int(port), tls))
    print(json.dumps(report))


if __name__ == "__main__":
    main()

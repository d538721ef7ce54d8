"""One etcd Python client library's lock against one cluster, in a process of its own.

    python client_lock_check.py etcd3|aetcd HOST:PORT NAME

3 contenders (threads for python3-etcd3, tasks for aetcd, one client each) each take the
library's lock NAME 10 times and, holding it, increment a counter by a read and a
separate write (a lost update shows if two hold the lock at once). Prints one JSON
report: the counter, whether every acquire succeeded, the lock key left behind.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from typing import Any

CONTENDERS = 3
ROUNDS = 10


def run_etcd3(endpoint: str, name: str) -> dict[str, Any]:
    import etcd3

    host, port = endpoint.rsplit(":", 1)
    counter = f"counter/{name}"
    results: list[bool] = []

    def contender() -> None:
        client = etcd3.client(host=host, port=int(port))
        try:
            for _ in range(ROUNDS):
                lock = client.lock(name, ttl=10)
                results.append(bool(lock.acquire(timeout=60)))
                value, _ = client.get(counter)
                client.put(counter, str(int(value or b"0") + 1))
                lock.release()
        finally:
            client.close()

    threads = [threading.Thread(target=contender) for _ in range(CONTENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client = etcd3.client(host=host, port=int(port))
    value, _ = client.get(counter)
    left, _ = client.get("/locks/" + name)
    client.close()
    return {"acquired": all(results) and len(results) == CONTENDERS * ROUNDS,
            "counter": int(value or b"0"), "left": left is not None}


async def run_aetcd(endpoint: str, name: str) -> dict[str, Any]:
    import aetcd

    host, port = endpoint.rsplit(":", 1)
    counter = f"counter/{name}".encode()
    results: list[bool] = []

    async def contender() -> None:
        async with aetcd.Client(host=host, port=int(port)) as client:
            for _ in range(ROUNDS):
                lock = client.lock(name.encode(), ttl=10)
                results.append(bool(await lock.acquire(timeout=60)))
                got = await client.get(counter)
                await client.put(counter, str(int(got.value if got else b"0") + 1).encode())
                await lock.release()

    await asyncio.gather(*(contender() for _ in range(CONTENDERS)))
    async with aetcd.Client(host=host, port=int(port)) as client:
        got = await client.get(counter)
        left = await client.get(name.encode())
    return {"acquired": all(results) and len(results) == CONTENDERS * ROUNDS,
            "counter": int(got.value if got else b"0"), "left": left is not None}


def main() -> None:
    library, endpoint, name = sys.argv[1:4]
    if library == "etcd3":
        report = run_etcd3(endpoint, name)
    else:
        report = asyncio.run(run_aetcd(endpoint, name))
    print(json.dumps(report))


if __name__ == "__main__":
    main()

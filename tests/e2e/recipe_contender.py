"""One contender process of the lock/election fault tests (test_recipe_faults.py).

    python recipe_contender.py lock|elect NAME ENDPOINTS TTL ID

Loops until SIGTERM: acquires the lock (or wins the election), writes an "enter" record
`cs/<token>/enter` = ID guarded by its fencing token (the create revision of its key:
the txn succeeds only while the key is still its), holds for a random 20-120 ms (a leader
holds 0.3-1 s), writes the guarded "exit" record, releases. Prints one JSON line per
event on stdout (wall clock time, token): the test matches them with the faults it
injected. Errors during faults (no leader, timeouts) are printed and retried.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dengine.client import Client
from dengine.errors import DengineError
from dengine.kv.ops import Compare, Op


def emit(**fields: object) -> None:
    print(json.dumps({"t": time.time(), **fields}), flush=True)


async def guarded(client: Client, key: bytes, token: int, record: bytes, who: str) -> bool:
    result = await client.txn([Compare.create_revision(key) == token],
                              [Op.put(record, who)], timeout=5)
    return result.succeeded


async def main() -> None:
    mode, name, endpoints, ttl, who = sys.argv[1:6]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    rng = random.Random(f"{who}-{time.time()}")
    async with Client(endpoints, timeout=5) as client:
        while not stop.is_set():
            try:
                if mode == "lock":
                    held = await client.lock(name.encode(), int(ttl)).acquire()
                    key, token, lost = held.key, held.fencing_token, held.lost
                    release = held.release
                    hold = rng.uniform(0.02, 0.12)
                else:
                    campaign = client.election(name.encode()).campaign(who, int(ttl))
                    leadership = await campaign.start()
                    key, token, lost = leadership.key, leadership.revision, leadership.lost
                    release = leadership.resign
                    hold = rng.uniform(0.3, 1.0)
            except DengineError as e:
                emit(event="error", error=f"{e.code}: {e.message}")
                await asyncio.sleep(0.1)
                continue
            emit(event="acquired", token=token, key=key.decode())
            prefix = f"cs/{name}/{token:012d}/".encode()
            try:
                entered = await guarded(client, key, token, prefix + b"enter", who)
                emit(event="enter", token=token, ok=entered)
                await asyncio.sleep(hold)
                exited = await guarded(client, key, token, prefix + b"exit", who)
                emit(event="exit", token=token, ok=exited, lost=lost.is_set())
            except DengineError as e:
                emit(event="error", error=f"{e.code}: {e.message}", token=token)
            finally:
                try:
                    await release()
                except DengineError as e:
                    emit(event="error", error=f"release: {e.code}: {e.message}")
            emit(event="released", token=token)

if __name__ == "__main__":
    asyncio.run(main())

"""Child process for test_crash: writes keys forever, printing each acknowledged one."""

from __future__ import annotations

import asyncio
import sys

from dengine import Engine

FAST = {"tick_ms": 5, "election_timeout_ms": 50, "heartbeat_interval_ms": 15,
        "clock_drift_ms": 10}


async def main(data_dir: str, run: int, settings: dict[str, int] = FAST) -> None:
    engine = await Engine.start(data_dir, **settings)
    await engine.wait_ready(timeout=10)
    print("ready", flush=True)
    counter = 0

    async def writer() -> None:
        nonlocal counter
        while True:
            counter += 1
            key = b"r%d-%d" % (run, counter)
            await engine.put(key, key)
            sys.stdout.write(key.decode() + "\n")
            sys.stdout.flush()

    await asyncio.gather(*(writer() for _ in range(32)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))

"""handoff_cpu.py: CPU per round trip of a job handed to a one-thread executor from a
uvloop loop and answered back on it: `loop.run_in_executor` (a concurrent future chained
to an asyncio one) against `dengine.node.logthread.run_soon` (one call_soon_threadsafe).
The node hands each Ready's persist to its log thread this way under load
(docs/performance.md, "The put's node path and transport against a3fb033 (session 17)").
`.venv/bin/python bench/handoff_cpu.py`"""
import asyncio, statistics, time
from concurrent.futures import ThreadPoolExecutor

import uvloop

from dengine.node.logthread import run_soon

N = 10000


def job(a, b):
    return None


async def main():
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max_workers=1)
    seen = {"run_in_executor": [], "run_soon": []}
    for name in ("run_in_executor", "run_soon") * 5:
        c0 = time.process_time()
        for _ in range(N):
            if name == "run_soon":
                await run_soon(loop, executor, job, 1, 2)
            else:
                await loop.run_in_executor(executor, job, 1, 2)
        seen[name].append((time.process_time() - c0) / N * 1e6)
    for name, runs in seen.items():
        print(f"{name:16s} CPU per round trip, us: median {statistics.median(runs):5.1f} "
              f"(runs {' '.join(f'{r:.1f}' for r in runs)})")
    executor.shutdown()

uvloop.run(main())

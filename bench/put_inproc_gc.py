"""put_inproc_gc.py: 3 Engines in this process (one uvloop loop), N puts at 256 in flight on
the leader (node 1), 8-byte keys from 10k, 256-byte values. Prints CPU us per put of
the whole process (time.process_time over the measured phase) and wall throughput.
PROFILE=FILE: a cProfile of the measured phase to FILE. GCTUNE=1: serve's GC settings.
Run from a checkout with its .venv: `N=30000 WARM=5000 .venv/bin/python bench/put_inproc_gc.py`
(docs/performance.md, the put against the tree before issue 16)."""
import asyncio, os, random, sys, tempfile, time, shutil
import uvloop
from dengine.node.engine import Engine
from dengine.bench.cluster import free_ports

N = int(os.environ.get("N", "60000"))
WARM = int(os.environ.get("WARM", "10000"))
CONC = int(os.environ.get("CONC", "256"))

async def main():
    base = tempfile.mkdtemp(prefix="inproc-")
    ports = free_ports(3)
    peers = {i + 1: f"127.0.0.1:{ports[i]}" for i in range(3)}
    engines = []
    for n in (1, 2, 3):
        engines.append(await Engine.start(
            f"{base}/node{n}", node_id=n, cluster_id="inproc", listen_peer=peers[n],
            peers={i: a for i, a in peers.items() if i != n}, tick_ms=10,
            election_timeout_ms=500 if n == 1 else 10000, heartbeat_interval_ms=50))
    leader = engines[0]
    while True:
        try:
            await leader.put(b"x", b"y", timeout=1)
            break
        except Exception:
            await asyncio.sleep(0.1)
    rng = random.Random(1)
    keys = [b"%08d" % i for i in range(10000)]
    value = bytes(256)
    async def run(count):
        left = [count]
        async def worker():
            put = leader.put
            while left[0] > 0:
                left[0] -= 1
                await put(keys[rng.randrange(10000)], value)
        await asyncio.gather(*(worker() for _ in range(CONC)))
    await run(WARM)
    prof = None
    if os.environ.get("PROFILE"):
        import cProfile
        prof = cProfile.Profile()
        prof.enable()
    import gc
    gcs = {"t": 0.0, "n": [0, 0, 0], "start": 0.0}
    def cb(phase, info):
        if phase == "start":
            gcs["start"] = time.process_time()
        else:
            gcs["t"] += time.process_time() - gcs["start"]
            gcs["n"][info["generation"]] += 1
    if os.environ.get("GCTUNE"):
        gc.set_threshold(20000, 20, 20); gc.freeze()
    gc.callbacks.append(cb)
    c0, t0 = time.process_time(), time.perf_counter()
    await run(N)
    c1, t1 = time.process_time(), time.perf_counter()
    if prof:
        prof.disable()
        prof.dump_stats(os.environ["PROFILE"])
    gc.callbacks.remove(cb)
    print(f"cpu {(c1 - c0) / N * 1e6:.2f} us/put  wall {N / (t1 - t0):.0f} puts/s  gc {gcs['t'] / N * 1e6:.2f} us/put {gcs['n']}")
    for e in reversed(engines):
        await e.stop()
    shutil.rmtree(base)

uvloop.run(main())

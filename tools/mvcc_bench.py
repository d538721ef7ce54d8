"""Micro benchmarks of the MVCC store (kv/mvcc.py): apply rate, memory, range.

    python tools/mvcc_bench.py [apply|memory|range|all] [--keys N ...]

apply:  plain puts applied through `insert_all` in chunks of 1,000 (the state machine's
        apply loop) over a store preloaded with N keys (10k and 1M), updates of random
        existing keys, compacted every 100,000 revisions (the history stays bounded, as
        with the default auto-compaction); beside it the pre-MVCC `kv.store.Store`.
memory: 1,000,000 keys x 256-byte values, no history (compacted): tracemalloc's
        traced bytes over the raw bytes (keys + values).
range:  a range of 1,000 keys (limit 1000) from a 1,000,000-key store, and get_kv.

Times are this process's CPU time (time.process_time): on a shared machine, wall-clock
rates mostly measure the other processes.
"""

from __future__ import annotations

import argparse
import gc
import random
import time
import tracemalloc

from dengine.kv.codec import OP_COMPACTION, encode_insert
from dengine.kv.mvcc import MvccStore
from dengine.kv.store import Store
from dengine.proto.etcd import rpc_pb2 as pb

CHUNK = 1000


def _keys(n: int) -> list[bytes]:
    return [b"key/%010d" % i for i in range(n)]


def _compact(store: MvccStore) -> None:
    store.apply(OP_COMPACTION, b"",
                pb.CompactionRequest(revision=store.revision).SerializeToString())


def _preload(n: int, value: bytes) -> tuple[MvccStore, list[bytes]]:
    keys = _keys(n)
    store = MvccStore()
    for i in range(0, n, 100_000):
        store.insert_all(keys[i:i + 100_000], [value] * len(keys[i:i + 100_000]))
        _compact(store)
    return store, keys


def bench_apply(n_keys: int, puts: int, value_size: int = 256) -> None:
    value = b"v" * value_size
    store, keys = _preload(n_keys, value)
    rnd = random.Random(1)
    chunks = [[keys[rnd.randrange(n_keys)] for _ in range(CHUNK)]
              for _ in range(puts // CHUNK)]
    values = [value] * CHUNK
    old = Store(dict.fromkeys(keys, value))
    for name, run in (("Store (before)", old.insert_all), ("MvccStore", store.insert_all)):
        gc.collect()
        t0 = time.process_time()
        for i, chunk in enumerate(chunks):
            run(chunk, values)
            if name == "MvccStore" and (i + 1) % 100 == 0:
                _compact(store)
        dt = time.process_time() - t0
        print(f"apply {n_keys:>9,} keys  {name:<15} {puts / dt:>10,.0f} puts/s "
              f"({dt / puts * 1e6:.2f} us/put)")


def bench_memory(n: int = 1_000_000, value_size: int = 256) -> None:
    keys = _keys(n)
    value = b"v" * value_size
    gc.collect()
    tracemalloc.start()
    store = MvccStore()
    for i in range(0, n, 100_000):
        # distinct value objects, as values decoded from commands are
        store.insert_all(keys[i:i + 100_000],
                         [bytes(value) + b"" for _ in range(len(keys[i:i + 100_000]))])
        _compact(store)
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    raw = sum(len(k) for k in keys) + n * value_size
    keys_bytes = sum(k.__sizeof__() for k in keys)  # the key objects, allocated before
    total = traced + keys_bytes
    print(f"memory {n:,} keys x {value_size} B: store {traced / 1e6:,.0f} MB + key objects "
          f"{keys_bytes / 1e6:,.0f} MB = {total / 1e6:,.0f} MB; raw {raw / 1e6:,.0f} MB; "
          f"ratio {total / raw:.2f}")


def bench_range(n: int = 1_000_000) -> None:
    store, keys = _preload(n, b"v" * 256)
    req = pb.RangeRequest(key=keys[n // 2], range_end=b"\x00", limit=1000)
    runs = 200
    t0 = time.process_time()
    for _ in range(runs):
        resp = store.range(req)
    dt = (time.process_time() - t0) / runs
    assert len(resp.kvs) == 1000 and resp.more
    print(f"range 1,000 of {n:,} keys: {dt * 1e3:.2f} ms ({dt / 1000 * 1e6:.2f} us/key)")
    encoded = len(resp.SerializeToString())
    t0 = time.process_time()
    for _ in range(runs):
        resp.SerializeToString()
    print(f"  + encoding the response ({encoded:,} B): "
          f"{(time.process_time() - t0) / runs * 1e3:.2f} ms")
    sample = [keys[i] for i in random.Random(2).sample(range(n), 10_000)]
    t0 = time.process_time()
    for k in sample:
        store.get_kv(k)
    print(f"get_kv: {(time.process_time() - t0) / len(sample) * 1e6:.2f} us")
    t0 = time.process_time()
    for k in sample:
        store.get(k)
    print(f"get: {(time.process_time() - t0) / len(sample) * 1e6:.2f} us")


def bench_decode() -> None:
    from dengine.kv.codec import decode_any_command
    cmds = [encode_insert(k, b"v" * 256) for k in _keys(100_000)]
    t0 = time.process_time()
    for c in cmds:
        decode_any_command(c)
    print(f"decode_any_command (insert): {(time.process_time() - t0) / len(cmds) * 1e6:.3f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="?", default="all",
                        choices=["apply", "memory", "range", "decode", "all"])
    parser.add_argument("--puts", type=int, default=500_000)
    args = parser.parse_args()
    if args.what in ("apply", "all"):
        bench_apply(10_000, args.puts)
        bench_apply(1_000_000, args.puts)
    if args.what in ("memory", "all"):
        bench_memory()
    if args.what in ("range", "all"):
        bench_range()
    if args.what in ("decode", "all"):
        bench_decode()


if __name__ == "__main__":
    main()

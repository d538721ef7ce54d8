"""apply_chunk_cpu.py: per-put process time of FileStateMachine.apply_chunk (plain inserts, 10k keys x 256 B),
with a compaction to revision-10000 every 25,000 puts where the tree has one (as the
leader's auto compactor at ~25k puts/s). p10/median of per-chunk times, us per put.
BATCH=k (k > 1): each entry a batch entry of k puts (trees with batch entries), CHUNK entries
a chunk."""
import os, random, shutil, tempfile, time, statistics
from dengine.kv.codec import encode_insert
from dengine.proto import Entry, EntryPayload
from dengine.storage.file_state_machine import FileStateMachine
try:
    from dengine.kv.codec import encode_request, OP_COMPACTION
    from dengine.proto.etcd.rpc_pb2 import CompactionRequest
except ImportError:
    encode_request = None
CHUNK = int(os.environ.get("CHUNK", "64"))
BATCH = int(os.environ.get("BATCH", "1"))
N = int(os.environ.get("N", "300000"))
rng = random.Random(1)
keys = [b"%08d" % i for i in range(10000)]
value = bytes(256)
cmds = [encode_insert(keys[rng.randrange(10000)], value) for _ in range(20000)]
if BATCH > 1:
    from dengine.kv.codec import encode_batch
    cmds = [encode_batch(cmds[i:i + BATCH]) for i in range(0, 20000 - BATCH + 1, BATCH)]
PUTS = CHUNK * BATCH
d = tempfile.mkdtemp(prefix="apply-chunk-")
sm = FileStateMachine(d, sync_apply=False, checkpoint_bytes=1 << 40)
idx = 1
times = []
since = 0
for c in range(N // PUTS):
    entries = []
    for i in range(CHUNK):
        entries.append(Entry(index=idx, term=1, payload=EntryPayload(command=cmds[idx % len(cmds)])))
        idx += 1
    comp = None
    since += PUTS
    if encode_request is not None and since >= 25000:
        since = 0
        rev = sm._store.revision + PUTS
        comp = Entry(index=idx, term=1, payload=EntryPayload(command=encode_request(
            OP_COMPACTION, CompactionRequest(revision=rev - 10000).SerializeToString())))
        idx += 1
    t = time.process_time()
    sm.apply_chunk(entries)
    if comp is not None:
        sm.apply_chunk([comp])
    times.append(time.process_time() - t)
times.sort()
per = lambda x: x / PUTS * 1e6
print(f"apply_chunk us/put: p10 {per(times[len(times)//10]):.3f} median {per(statistics.median(times)):.3f} mean {per(sum(times)/len(times)):.3f}")
sm.close()
shutil.rmtree(d)

"""Medians per workload of a bench/ab.sh output file: base vs new, ratio, each run."""
import json, statistics, sys, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1] if len(sys.argv) > 1 else "/tmp/perf_ab.txt"):
    parts = line.split(" ", 2)
    if len(parts) < 3 or not parts[2].strip().startswith("{"):
        continue
    d = json.loads(parts[2])
    rows[(parts[1], parts[0])].append((d["throughput_ops_s"], d["latency_ms"]["p50"], d["errors"]))
for w in sorted({k[0] for k in rows}):
    b, n = rows.get((w, "base"), []), rows.get((w, "new"), [])
    if not b or not n:
        continue
    mb, mn = statistics.median(x[0] for x in b), statistics.median(x[0] for x in n)
    pb, pn = statistics.median(x[1] for x in b), statistics.median(x[1] for x in n)
    print(f"{w:20} base {mb:9.0f} ops/s p50 {pb:6.3f} ms | new {mn:9.0f} ops/s p50 {pn:6.3f} ms | ratio {mn/mb:5.2f}  (runs {[round(x[0]) for x in b]} vs {[round(x[0]) for x in n]})")

"""put_cpu_split.py TREE [SECONDS]: run `dengine bench put --embedded --nodes 3 --concurrency 256` of TREE,
sample utime+stime of the bench process (leader + load) and its dengine children (followers);
print ops/s and CPU us per put of each (the leader is the embedded bench's bottleneck).
See docs/performance.md, "The put's apply path against a3fb033 (session 17)"."""
import json, os, subprocess, sys, time
tree = sys.argv[1]
dur = sys.argv[2] if len(sys.argv) > 2 else "8"
p = subprocess.Popen([f"{tree}/.venv/bin/dengine", "bench", "put", "--embedded", "--nodes", "3",
                      "--concurrency", "256", "--duration", dur, "--warmup", "1", "--json", "--no-progress"],
                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=tree)
tck = os.sysconf("SC_CLK_TCK")
last = {}
def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / tck
def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                if ppid == pid:
                    out.append(int(d))
            except OSError:
                pass
    return out
marks = []
t0 = time.time()
while p.poll() is None:
    try:
        snap = {"leader": cpu(p.pid)}
        for c in children(p.pid):
            snap[c] = cpu(c)
        marks.append((time.time() - t0, snap))
    except OSError:
        pass
    time.sleep(0.25)
out = json.loads(p.stdout.read())
ops = out["throughput_ops_s"]
# CPU over the measured window: from 2 s after all three processes are up (start-up and
# warm-up) to the last sample that still sees them all
full = [m for m in marks if len(m[1]) >= 3]
a = full[min(8, len(full) - 1)]; b = full[-1]
dt = b[0] - a[0]
puts = ops * dt
res = {k: (b[1][k] - a[1].get(k, 0)) / puts * 1e6 for k in b[1] if k in a[1]}
fol = sorted(v for k, v in res.items() if k != "leader")
print(f"{os.path.basename(tree)} ops/s {ops:.0f} cpu us/put leader {res['leader']:.1f} followers {' '.join(f'{x:.1f}' for x in fol)} (window {dt:.1f}s) load {open('/proc/loadavg').read().split()[0]}")

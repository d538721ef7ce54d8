#!/usr/bin/env bash
# A/B of two checkouts (each with its own .venv): BASE and NEW, alternated, ROUNDS rounds.
# Embedded put 3 nodes 256 in flight; remote put/get (linearizable) at 1 and 256.
set -u
BASE=${BASE:?a checkout with .venv, e.g. a git worktree of the baseline commit}
NEW=${NEW:-.}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-/tmp/perf_ab.txt}
CPORT=${CPORT:-9581}  # client ports CPORT..CPORT+2, peer ports PPORT..PPORT+2
PPORT=${PPORT:-9681}
REMOTE=${REMOTE:-1}  # 0: the embedded put only
: > "$OUT"
run_one() {  # label dir
  local label=$1 dir=$2 bin=$2/.venv/bin/dengine
  local r
  r=$($bin bench put --embedded --nodes 3 --concurrency 256 --duration 8 --warmup 1 --json --no-progress 2>/dev/null | tr -d "\n ")
  echo "$label embedded_put_256 $r" >> "$OUT"
  [ "$REMOTE" = 0 ] && return
  local base; base=$(mktemp -d /tmp/abclu.XXXX)
  (cd "$dir" && exec $bin cluster up --nodes 3 --base-dir "$base" --client-port $CPORT --peer-port $PPORT --log-level warning > "$base/up.log" 2>&1) &
  local up=$!
  for i in $(seq 1 60); do grep -q "ready" "$base/up.log" 2>/dev/null && break; sleep 0.5; done
  local ep=127.0.0.1:$CPORT,127.0.0.1:$((CPORT + 1)),127.0.0.1:$((CPORT + 2))
  for c in 1 256; do
    r=$($bin bench put --endpoints $ep --concurrency $c --duration 5 --warmup 1 --json --no-progress 2>/dev/null | tr -d "\n ")
    echo "$label remote_put_$c $r" >> "$OUT"
    r=$($bin bench get --endpoints $ep --consistency linearizable --concurrency $c --duration 5 --warmup 1 --json --no-progress 2>/dev/null | tr -d "\n ")
    echo "$label remote_get_$c $r" >> "$OUT"
  done
  kill -INT $up; wait $up 2>/dev/null; rm -rf "$base"
}
for round in $(seq 1 "$ROUNDS"); do
  run_one base "$BASE"
  run_one new "$NEW"
done
echo done >> "$OUT"

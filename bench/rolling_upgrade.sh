#!/bin/bash
# A rolling upgrade, by hand: nodes 1,2 run an older release (OLD), node 3 this one (NEW);
# then 1 and 2 are restarted on this release. Prints, per phase, writes vs log entries.
set -u
OLD=${OLD:?a checkout of an older release (its src/ is used with this venv)}
NEW=${NEW:-.}
PY=${PY:-$NEW/.venv/bin/python}
R=$(mktemp -d /tmp/roll.XXXX)
read P1 P2 P3 C1 C2 C3 < <($PY -c "from dengine.bench.cluster import free_ports; print(*free_ports(6))")
PEERS="--peer 1=127.0.0.1:$P1 --peer 2=127.0.0.1:$P2 --peer 3=127.0.0.1:$P3"
start() {  # id tree
  local i=$1 tree=$2 pp cp
  eval pp=\$P$i; eval cp=\$C$i
  PYTHONPATH=$tree/src setsid $PY -m dengine serve --id $i --data-dir $R/n$i --listen-peer 127.0.0.1:$pp \
    --listen-client 127.0.0.1:$cp $(echo $PEERS | sed "s/--peer $i=[^ ]*//") --initial-cluster-token roll \
    > $R/n$i.$(basename $tree).log 2>&1 &
  echo $! > $R/n$i.pid
}
stop() { kill -INT $(cat $R/n$1.pid); sleep 1; }
EP=127.0.0.1:$C1,127.0.0.1:$C2,127.0.0.1:$C3
phase() {
  local label=$1
  sleep 3
  $PY -m dengine status --endpoints $EP 2>&1 | tail -4
  local before after
  before=$($PY -m dengine status --endpoints 127.0.0.1:$C3 --json 2>/dev/null | $PY -c 'import json,sys; d=json.load(sys.stdin); d=d[0] if isinstance(d,list) else d; print(d.get("commit_index"))')
  $PY -m dengine bench put --endpoints $EP --concurrency 64 --duration 3 --warmup 0 --no-progress --json 2>/dev/null | $PY -c 'import json,sys; d=json.load(sys.stdin); print("ops", d["ops"], "errors", d["errors"])'
  after=$($PY -m dengine status --endpoints 127.0.0.1:$C3 --json 2>/dev/null | $PY -c 'import json,sys; d=json.load(sys.stdin); d=d[0] if isinstance(d,list) else d; print(d.get("commit_index"))')
  echo "$label: log entries $before -> $after"
  grep -h "older release" $R/*.log | tail -2
}
start 1 $OLD; start 2 $OLD; start 3 $NEW
phase "1,2 old, 3 new"
stop 1; start 1 $NEW
phase "1 upgraded"
stop 2; start 2 $NEW
phase "all upgraded"
$PY -m dengine endpoint hashkv --endpoints $EP 2>&1 | tail -3
for i in 1 2 3; do kill -INT $(cat $R/n$i.pid); done; sleep 1
rm -rf "$R"

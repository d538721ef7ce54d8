"""Differential test: the same etcdctl 3.4 scripts against real etcd 3.4 and dengine.

Every script runs against a reference etcd cluster (A); the harness proof runs it again
against a second, independent etcd cluster (B) and requires equal normalized outputs
(so normalization sets aside exactly what differs between two healthy etcd clusters);
then against a dengine cluster (D), which must print the same. Normalization: see
etcd_diff.py. Scripts share one trio of clusters per module (each under its own key
prefix, revisions compared relative to the script's start); the `fresh` scripts compare
absolute revisions from a new store, on their own trio. Generated scripts (seeded) add
command sequences nobody wrote by hand; `ETCD_DIFF_CASES=N` runs N of them (default 12)
from seed `ETCD_DIFF_SEED` (default 0), `-m slow` runs 150 more.

Run: `.venv/bin/python -m pytest tests/etcd/test_differential.py` (needs Debian's
etcd-server and etcd-client; .ci/run installs them).
"""

from __future__ import annotations

import base64
import json
import os
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from etcd_cluster import (
    DengineCluster,
    EtcdCluster,
    Run,
    _Cluster,
    etcd_available,
    start_all,
    stop_all_clusters,
)
from etcd_diff import (
    DENGINE_PENDING,
    Script,
    ScriptRun,
    both,
    differences,
    normalize_step,
    run_script,
    script,
    watch,
)

import dengine

# etcdctl's lock needs leases and watches on dengine (issue 17 items 1-2).
RECIPES_READY = all(hasattr(cls, name) for cls, name in (
    (dengine.Engine, "lease"), (dengine.Engine, "watch"), (dengine.Client, "lease"),
    (dengine.Client, "watch")))

pytestmark = pytest.mark.skipif(
    not etcd_available(),
    reason="etcd/etcdctl not installed (apt-get install etcd-server etcd-client; .ci/run does)")

# ---------------------------------------------------------------- hand-written scripts

TXN_SETUP = ("put {p}a 1", "put {p}b 2", "put {p}b 22", "put {p}c 3")

SCRIPTS: list[Script] = [
    script(
        "put_get_del",
        "put {p}a 1", "put {p}b 2", "put {p}c 3",
        *both("get {p}a"), *both("get {p}b --prefix"), *both("get {p}missing"),
        "del {p}b", *both("get {p}b"), *both("get {p} --prefix"),
        "del {p}b", "put {p}a 11", *both("get {p}a"),
        "del {p} --prefix", *both("get {p} --prefix"),
        "put {p}a 1 -w json", "del {p}a -w json",
    ),
    script(
        "ranges",
        "put {p}a 1", "put {p}a/1 2", "put {p}a/2 3", "put {p}b 4", "put {p}c 5", "put {p}d 6",
        *both("get {p}a --prefix"), *both("get {p}a/ --prefix"),
        *both("get {p}b {p}d"),            # RANGE_END: [b, d)
        *both("get {p}a/ {p}c"),
        *both("get {p}b --from-key"),
        *both("get {p}d {p}b"),            # range_end before key
        *both("get {p}b {p}b"),            # empty range
        *both("get {p}a --prefix --keys-only"),
        "get {p}a --prefix --print-value-only",
        "get {p}b {p}d --keys-only --print-value-only",
        "get {p}a --prefix -w fields",
        "del {p}a/ {p}c",                  # RANGE_END delete
        *both("get {p} --prefix"),
        "del {p}c --from-key", *both("get {p} --prefix --keys-only"),
    ),
    script(
        "flags",  # etcdctl's less common get/put/del flags and output formats
        "put {p}a 1", "put {p}b 2", "put {p}c 3",
        *both("get {p} --prefix --count-only"), *both("get {p}a {p}c --count-only"),
        "get {p} --prefix --count-only --keys-only", "get {p}b --from-key --count-only",
        "put {p}a --ignore-value", *both("get {p}a"),
        "put {p}a x --ignore-value", "put {p}zz --ignore-value", "put {p}a 5 --ignore-lease",
        "put {p}a 6 --lease=0", "get {p}a -w table", "get {p}a {p}c -w table",
        "get {p}a --consistency=s", "get {p}a --consistency=l", "get {p}a --consistency=x",
        "put {p}b 7 -w table", "del {p}a -w table", "get {p}a --rev=-1",
        "get {p}a --sort-by=bogus", "get {p}a --order=bogus", "get {p}a --prefix --from-key",
        "get {p}b --rev {r+2} --print-value-only", "del {p}b --from-key --prev-kv",
        *both("get {p} --prefix"),
    ),
    script(
        "limit_more_count",
        *(f"put {{p}}k{i} v{i}" for i in range(5)),
        *both("get {p}k --prefix --limit 2"),
        *both("get {p}k --prefix --limit 5"),
        *both("get {p}k --prefix --limit 6"),
        *both("get {p}k --prefix --limit 0"),
        *both("get {p}k --prefix --limit -1"),
        *both("get {p}k1 --from-key --limit 1"),
        *both("get {p}k --prefix --limit 2 --keys-only"),
        *both("get {p}k --prefix --limit 2 --sort-by=KEY --order=DESCEND"),
        *both("get {p}k --prefix --limit 3 --sort-by=VALUE --order=DESCEND"),
        *both("get {p}k1 {p}k4 --limit 2"),
        *both("get {p}k --prefix --limit 2 --rev {r+3}"),
    ),
    script(
        "sort",
        # versions, create and mod revisions that order the keys differently
        "put {p}c x", "put {p}a z", "put {p}b y", "put {p}a w", "put {p}d x",
        "put {p}c v", "put {p}c u", "put {p}e a",
        *[f"get {{p}} --prefix --sort-by={t} --order={o}"
          for t in ("KEY", "VERSION", "CREATE", "MODIFY", "VALUE")
          for o in ("ASCEND", "DESCEND")],
        *[f"get {{p}} --prefix --sort-by={t} -w json"
          for t in ("KEY", "VERSION", "CREATE", "MODIFY", "VALUE")],
        "get {p} --prefix --order=DESCEND",
        "get {p} --prefix --order=DESCEND --keys-only -w json",
        "get {p}b --from-key --sort-by=MODIFY --order=DESCEND --limit 2 -w json",
        "get {p} --prefix --sort-by=VERSION --order=DESCEND --limit 1 --rev {r+6}",
        "get {p} --prefix --sort-by=bogus",
        "get {p} --prefix --order=sideways",
    ),
    script(
        "revisions_and_versions",
        "put {p}k v1", "put {p}k v2", "put {p}k v3", "del {p}k", "put {p}k v4",
        *both("get {p}k"),
        *[f"get {{p}}k --rev {{r+{i}}} -w json" for i in range(0, 6)],
        *both("get {p}k --rev {r+2}"),
        "get {p} --prefix --rev {r+4} -w json",
        *both("get {p}k --rev {r+50}"),    # a future revision
        "del {p}k -w json", "put {p}k v5 -w json", "put {p}k v6 -w fields",
        *both("get {p}k"), "get {p}k -w fields",
    ),
    script(
        "prev_kv",
        "put {p}a 1 --prev-kv", "put {p}a 2 --prev-kv", "put {p}a 3 --prev-kv -w json",
        "del {p}a --prev-kv", "del {p}a --prev-kv", "del {p}a --prev-kv -w json",
        "put {p}b 1", "put {p}c 2", "put {p}c 3",
        "del {p} --prefix --prev-kv -w json",
        "put {p}b 1", "put {p}c 2",
        "del {p} --prefix --prev-kv",
        "put {p}d 4 --prev-kv -w json",
        "del {p}d {p}e --prev-kv -w json",
    ),
    script(
        "deletes_that_match_nothing",
        "put {p}a 1",
        "del {p}nothing", "del {p}x {p}y", "del {p}q --prefix", "del {p}zz --from-key",
        "del {p}nothing -w json", "del {p}nothing --prev-kv -w json",
        *both("get {p} --prefix"),       # header revision: still r+1
        "put {p}b 2 -w json",            # r+2
    ),
    script(
        "txn_compares",
        *TXN_SETUP,
        *[("txn", f'{c}\n\nput {{p}}ok yes\n\nput {{p}}ok no\n\n') for c in (
            'value("{p}a") = "1"', 'value("{p}a") != "1"', 'value("{p}a") > "0"',
            'value("{p}a") < "0"', 'value("{p}b") = "22"',
            'version("{p}b") = "2"', 'version("{p}b") > "1"', 'version("{p}b") < "2"',
            'version("{p}b") != "2"', 'version("{p}missing") = "0"',
            'create("{p}a") = "{r+1}"', 'create("{p}b") > "{r+1}"',
            'create("{p}missing") = "0"', 'mod("{p}b") = "{r+3}"', 'mod("{p}b") < "{r+3}"',
            'mod("{p}missing") = "0"', 'mod("{p}c") != "{r+4}"',
            'value("{p}missing") = "x"', 'value("{p}missing") != "x"',
            'c("{p}a") = "{r+1}"', 'm("{p}a") > "0"', 'val("{p}a") = "1"',
            'ver("{p}a") = "1"',
            'value("{p}a") = "1"\nversion("{p}b") = "2"',
            'value("{p}a") = "1"\nversion("{p}b") = "3"',
        )],
        "get {p}ok -w json",
        ("txn -w json", 'value("{p}a") = "1"\n\nput {p}x 1\n\nput {p}y 2\n\n'),
        ("txn -w json", 'value("{p}a") = "2"\n\nput {p}x 1\n\nput {p}y 2\n\n'),
        ("txn", 'bogus("{p}a") = "1"\n\n\n\n'),
        ("txn", 'value("{p}a") = "1"\n\nput {p}x 1\n\n'),   # no final blank line
    ),
    script(
        "txn_ops",
        *TXN_SETUP,
        # each op kind in both branches, simple and JSON output
        ("txn", 'value("{p}a") = "1"\n\nput {p}n 1 --prev-kv\nput {p}a 10 --prev-kv\n'
                'get {p}a\nget {p} --prefix --keys-only\ndel {p}c --prev-kv\n\n'
                'put {p}f 1\n\n'),
        ("txn -w json", 'value("{p}a") = "1"\n\nput {p}s 1\n\nput {p}f 1 --prev-kv\n'
                        'get {p} --prefix --limit 2 --sort-by=MODIFY --order=DESCEND\n'
                        'del {p}n --prev-kv\n\n'),
        # reads inside see the txn's earlier writes; one revision for the whole txn
        ("txn -w json", '\nput {p}r 1\nget {p}r\nput {p}s 2\nget {p}r {p}t\n'
                        'del {p}r\nget {p}r\n\n\n'),
        # a read-only txn, an empty txn and one with only failing compares: no new revision
        ("txn -w json", 'value("{p}a") = "10"\n\nget {p}a\nget {p}zz\n\n\n'),
        ("txn -w json", '\n\n\n'),
        ("txn", 'value("{p}a") = "nope"\n\nput {p}q 1\n\n\n'),
        "get {p} --prefix -w json",
        # etcd refuses duplicate keys among a txn's writes
        ("txn", '\nput {p}d 1\nput {p}d 2\n\n\n'),
        ("txn", '\nput {p}d 1\ndel {p}d\n\n\n'),
        ("txn", '\ndel {p} --prefix\nput {p}d 1\n\n\n'),
        ("txn", '\nget {p}d\nput {p}d 1\nget {p}d\n\n\n'),
        # ops with ranges and revisions
        ("txn -w json", '\nget {p}a --rev {r+1}\nget {p} --prefix --rev {r+2} --keys-only\n'
                        'get {p}a {p}c\nget {p}b --from-key --limit 1\n\n\n'),
        ("txn", '\nget {p}a --rev {r+100}\n\n\n'),
        ("txn -w json", '\ndel {p} --prefix --prev-kv\n\n\n'),
        "get {p} --prefix -w json",
    ),
    script(
        "txn_interactive",
        *TXN_SETUP,
        ("txn -i", 'value("{p}a") = "1"\n\nput {p}i 1\n\nput {p}i 2\n\n'),
        ("txn -i -w json", 'mod("{p}a") > "{r+5}"\n\nput {p}i 3\n\nget {p}i\n\n'),
        ("txn --interactive", '\n\nget {p}i\n\n'),
        ("txn -i", 'value("{p}a") = "1"\n\nput {p}x 1\n\n'),
    ),
    script(
        "compaction",
        "put {p}k 1", "put {p}k 2", "put {p}k 3", "put {p}j 1",
        "compaction {r+2}",
        *both("get {p}k --rev {r+1}"),    # below the compacted revision
        *both("get {p}k --rev {r+2}"),    # at it
        *both("get {p}k --rev {r+3}"),
        "get {p} --prefix --rev {r+4} -w json",
        *both("get {p}k --rev {r+40}"),   # future
        "compaction {r+2}", "compaction {r+1}", "compaction {r+40}",
        "compaction {r+3} --physical",
        "compaction {r+3}",
        ("txn", '\nget {p}k --rev {r+1}\n\n\n'),
        *both("get {p}k"), "del {p}k --prev-kv -w json",
    ),
    script(
        "keys_values_and_bad_input",
        "put '' v", "get ''", "del ''", "put {p}'key with spaces' 'value with spaces'",
        "put {p}ü ✓", "put -- {p}dash -1", "put {p}empty ''",
        *both("get {p} --prefix"), "get {p} --prefix --hex",
        "get {p}ü -w json", "get {p}empty -w fields",
        "put {p}x", "get", "get {p}a --prefix --from-key", "del {p}a --prefix --from-key",
        "get {p}a --rev -1", "compaction 0", "compaction -1", "compaction abc",
        "get {p} {p}z {p}zz",
    ),
    script(
        "endpoint_health",
        "endpoint health", "endpoint health -w json", "endpoint health --cluster",
    ),
    # watch (issue 17): history replayed from a past revision, ranges, prev_kv, output
    # formats, an empty range, compaction (below it: canceled; at it: served).
    script(
        "watch_history",
        "put {p}a 1", "put {p}b 2", "put {p}a 3", "del {p}b", "put {p}c 4",
        ("txn", '\nput {p}d 5\nput {p}e 6\ndel {p}a\n\n\n'),
        watch("watch {p} --prefix --rev {r+1}", lines=24),  # 8 events, 3 lines each
        watch("watch {p} --prefix --rev {r+1} --prev-kv -w json", lines=1),  # one response
        watch("watch {p}a --rev {r+2} -w fields", lines=18),
        watch("watch {p}b {p}d --rev {r+1} --prev-kv", lines=11),
        watch("watch {p}z {p}a", ends=True),  # an empty range: canceled
        "compaction {r+3}",
        watch("watch {p} --prefix --rev {r+2}", ends=True),  # compacted: canceled
        watch("watch {p} --prefix --rev {r+3} -w json", lines=1),
    ),
    # a live watch (from now) while the script writes
    script(
        "watch_live",
        "put {p}a 0",
        "&watch {p} --prefix",
        "&watch {p}a --prev-kv -w json",
        "put {p}a 1", "put {p}b 2",
        ("txn", '\nput {p}c 3\ndel {p}b\n\n\n'),
        "del {p} --prefix",
        "!wait 0 18", "!wait 1 2",  # 6 events of 3 lines; 2 responses of one line
    ),
    script(
        # etcdctl watch KEY -- COMMAND: the command runs per event with the event's env.
        "watch_exec",
        "put {p}a 0",
        "&watch {p} --prefix -- sh -c 'echo $ETCD_WATCH_EVENT_TYPE $ETCD_WATCH_KEY "
        "$ETCD_WATCH_VALUE; echo \"{\\\"revision\\\":$ETCD_WATCH_REVISION}\"'",
        "put {p}a 1", "put {p}b 2", "del {p}a",
        "!wait 0 15",  # 3 events, 3 lines and the command's 2 each
        watch("watch {p}a --rev {r+1} -- sh -c 'echo $ETCD_WATCH_EVENT_TYPE $ETCD_WATCH_VALUE'",
              lines=12),
    ),
]

# Leases (issue 17): ids set aside (L0, L1, ... by grant order, see etcd_diff.py).
LEASE_SCRIPTS: list[Script] = [
    script(
        "leases",
        "lease grant 60", "lease grant 1",   # TTL 1: raised to the minimum (2 s here)
        "!expired {l1}",                     # ... and expires by itself (a timetolive
        "lease timetolive {l1}", "lease revoke {l1}",  # within 2 s would race with it)
        "lease grant 100 -w json",
        "put {p}a 1 --lease={l0}", "put {p}b 2 --lease={l0}", "put {p}c 3 --lease={l2}",
        "put {p}a 11",                       # re-put without the lease: detached
        *both("get {p} --prefix"),
        "lease timetolive {l0} --keys", "lease timetolive {l2} --keys -w json",
        "lease timetolive {l0}", "lease timetolive {l0} -w json",
        "lease keep-alive --once {l0}",
        "lease list", "lease list -w json",
        "lease revoke {l0}",                 # deletes {p}b: one revision
        *both("get {p} --prefix"),
        "lease revoke {l0}", "lease timetolive {l0}", "lease timetolive {l0} -w json",
        "lease keep-alive --once {l0}",
        "put {p}x 1 --lease={l0}",
        ("txn", '\nput {p}y 1 --lease={l2}\n\n\n'),
        "lease timetolive {l2} --keys",
        "lease revoke {l2} -w json",
        *both("get {p} --prefix"),
        "lease timetolive 1234", "lease revoke 1234", "lease keep-alive --once 1234",
        "lease grant -5", "lease revoke zz",
    ),
]

# etcdctl's lock and elect (issue 17), after the lease script: they leave their session
# leases to expire by their TTL (60 s), which `lease list` would show.
RECIPE_SCRIPTS: list[Script] = [
    script(
        # etcdctl's lock is a client-side recipe over Lease, Txn, Range and Watch: it runs
        # the command holding the lock (nobody else holds it here), then releases it.
        # (On once dengine serves leases and watches.)
        "lock_runs_a_command",
        "lock {p}l -- sh -c 'echo held'",
        "lock {p}l --ttl 5 -- sh -c 'echo again; exit 3'",
        *both("get {p}l --prefix --keys-only"),
        "lock {p}l -- /nonexistent/command",
        *both("get {p}l --prefix"),
    ), script(
        # Two contenders: the second waits (FIFO by create revision) until the holder
        # releases, then runs its command with the lock's key and revision in its env.
        "lock_contended",
        "put {p}x 0",
        "&lock {p}m", "!wait 0 2",           # holds it, prints its key (and a blank line)
        "&lock {p}m -- sh -c 'echo $ETCD_LOCK_KEY; echo \"{\\\"revision\\\":$ETCD_LOCK_REV}\"'",
        "!keys {p}m 2",                      # the waiter queued
        # (by create revision: key order is the order of the two leases' ids)
        "get {p}m --prefix --keys-only --sort-by=CREATE",  # the holder's, the waiter's
        "get {p}m --prefix --sort-by=CREATE -w json",
        "!stop 0",                           # the holder releases: the waiter runs
        "!exit 1",                           # ... and releases after its command
        *both("get {p}m --prefix"),          # the waiter released after its command
        "lock {p}m --ttl 3 -- sh -c 'exit 7'",
        "lock", "lock {p}m --ttl 0 -- true",
    ), script(
        # etcdctl's elect: candidates queue by create revision, the first is elected and
        # prints its key and proposal; observers (-l) print each new leader.
        "elect",
        "elect {p}e", "elect",               # no proposal and no -l; no name
        "&elect -l {p}e",                    # background 0: observes, no leader yet
        "&elect {p}e first", "!wait 1 2",    # 1: elected (its key and proposal)
        "&elect {p}e second", "!keys {p}e 2",  # 2: waits behind the leader
        "&elect -l {p}e -w json", "!wait 3 1",  # 3: sees the leader at once
        "!wait 0 2",                         # 0 saw it too
        "get {p}e --prefix --sort-by=CREATE", "get {p}e --prefix --sort-by=CREATE -w json",
        "!stop 1",                           # the leader resigns: second is elected
        "!wait 2 2", "!wait 0 4", "!wait 3 2",
        "get {p}e --prefix --print-value-only",
        "&elect -l {p}e", "!wait 4 2",       # 4: sees second
        "!stop 2",
        "get {p}e --prefix --keys-only",
    ),
] if RECIPES_READY else []

# Absolute revisions from a new store (revision 1, the first write makes 2), the whole
# key space, compaction by absolute revision.
FRESH_SCRIPTS: list[Script] = [
    script(
        "fresh_store",
        *both("get '' --from-key"), "get '' --prefix -w json",
        "put a 1 -w json", "put b 2", "put c 3", "del nothing -w json",
        *both("get '' --from-key"), "get a -w fields",
        ("txn -w json", '\nget a\n\n\n'),
        ("txn -w json", 'create("a") = "2"\n\nput a 2\ndel b --prev-kv\n\n\n'),
        "compaction 3",
        *both("get a --rev 2"), *both("get a --rev 3"), *both("get a --rev 5"),
        *both("get a --rev 6"), "get '' --from-key --rev 4 -w json",
        "del '' --from-key --prev-kv -w json",
        *both("get '' --from-key"), "put z 26 -w json",
        "get '' --prefix --keys-only -w json",
        fresh=True,
    ),
]

# ---------------------------------------------------------------- generated scripts

GEN_CASES = int(os.environ.get("ETCD_DIFF_CASES", "12"))
GEN_SEED = int(os.environ.get("ETCD_DIFF_SEED", "0"))  # the first generated script's seed
GEN_SLOW_CASES = 150
GEN_STEPS = 14
SORT_TARGETS = ("KEY", "VERSION", "CREATE", "MODIFY", "VALUE")


def generated(seed: int, steps: int = GEN_STEPS) -> Script:
    """A seeded command sequence over five keys of the script's prefix."""
    rnd = random.Random(seed)
    keys = [f"{{p}}k{i}" for i in range(5)]
    writes = 0  # revisions this script made at most (for --rev and compaction)

    def key() -> str:
        return rnd.choice(keys)

    def value() -> str:
        return rnd.choice(["v0", "v1", "v2", "v3", "10", "9", "x"])

    def span(flags: bool = True) -> str:
        form = rnd.randrange(6)
        if form == 0:
            a, b = sorted(rnd.sample(keys, 2))
            return f"{a} {b}" if rnd.random() < 0.8 else f"{b} {a}"
        if form == 1 and flags:
            return "{p}k --prefix"
        if form == 2 and flags:
            return f"{key()} --from-key"
        if form == 3 and flags:
            return f"{key()} --prefix"
        return key()

    def get(in_txn: bool = False) -> str:
        cmd = "get " + span()
        if rnd.random() < 0.3:
            cmd += f" --limit {rnd.randrange(4)}"
        if rnd.random() < 0.35:
            cmd += f" --sort-by={rnd.choice(SORT_TARGETS)}"
            if rnd.random() < 0.6:
                cmd += f" --order={rnd.choice(('ASCEND', 'DESCEND'))}"
        if rnd.random() < 0.2:
            cmd += " --keys-only"
        # Not in a txn: a range at a compacted or future revision in a txn with writes
        # makes etcd 3.4's members diverge (see test_etcd_members_diverge_...).
        if not in_txn and rnd.random() < 0.25:
            cmd += f" --rev {{r+{rnd.randrange(writes + 3)}}}"
        if not in_txn:
            if rnd.random() < 0.1:
                cmd += " --print-value-only"
            if rnd.random() < 0.5:
                cmd += " -w json"
        return cmd

    def put(in_txn: bool = False) -> str:
        cmd = f"put {key()} {value()}"
        if rnd.random() < 0.4:
            cmd += " --prev-kv"
        if not in_txn and rnd.random() < 0.4:
            cmd += " -w json"
        return cmd

    def delete(in_txn: bool = False) -> str:
        cmd = "del " + span()
        if rnd.random() < 0.4:
            cmd += " --prev-kv"
        if not in_txn and rnd.random() < 0.4:
            cmd += " -w json"
        return cmd

    def compare() -> str:
        target = rnd.choice(("value", "version", "create", "mod"))
        op = rnd.choice(("=", "!=", "<", ">"))
        if target == "value":
            operand = value()
        elif target == "version":
            operand = str(rnd.randrange(4))
        else:
            operand = f"{{r+{rnd.randrange(writes + 2)}}}" if rnd.random() < 0.8 else "0"
        return f'{target}("{key()}") {op} "{operand}"'

    def txn() -> tuple[str, str]:
        ops = [get, put, put, delete]
        lines = [compare() for _ in range(rnd.randrange(3))]
        success = [rnd.choice(ops)(True) for _ in range(rnd.randrange(4))]
        failure = [rnd.choice(ops)(True) for _ in range(rnd.randrange(3))]
        body = "\n".join(lines) + "\n\n" + "".join(s + "\n" for s in success) + "\n"
        body += "".join(f + "\n" for f in failure) + "\n"
        cmd = "txn" + (" -i" if rnd.random() < 0.2 else "")
        return cmd + (" -w json" if rnd.random() < 0.5 else ""), body

    out: list[str | tuple[str, str]] = []
    for _ in range(steps):
        roll = rnd.random()
        if roll < 0.3:
            out.append(put())
            writes += 1
        elif roll < 0.55:
            out.append(get())
        elif roll < 0.7:
            out.append(delete())
            writes += 1
        elif roll < 0.95:
            out.append(txn())
            writes += 1
        else:
            out.append(f"compaction {{r+{rnd.randrange(writes + 2)}}}")
    out.append("get {p} --prefix -w json")
    return script(f"gen{seed}", *out)


GENERATED = [generated(seed) for seed in range(GEN_SEED, GEN_SEED + GEN_CASES)]
GENERATED_SLOW = [generated(seed) for seed in range(1000, 1000 + GEN_SLOW_CASES)]

# ---------------------------------------------------------------- fixtures


class Trio:
    """The reference etcd (A), a second etcd (B) and dengine (D); every script runs on A
    once (cached), under a prefix allocated in run order so that `--from-key` reads of a
    script never see another script's keys (later prefixes are not written yet)."""

    def __init__(self, base: Path) -> None:
        self.a = EtcdCluster(base / "etcd-a", token="etcd-a")
        self.b = EtcdCluster(base / "etcd-b", token="etcd-b")
        self.d = DengineCluster(base / "dengine")
        self.reference: dict[str, ScriptRun] = {}
        self.prefixes: dict[str, str] = {}
        self.failed: dict[str, str] = {}
        self.clusters: list[_Cluster] = [self.a, self.b, self.d]


    def prefix(self, s: Script) -> str:
        if s.name not in self.prefixes:
            self.prefixes[s.name] = f"t{len(self.prefixes):03d}/"
        return self.prefixes[s.name]

    def on_reference(self, s: Script) -> ScriptRun:
        if s.name not in self.reference:
            self.reference[s.name] = run_script(self.a, s, self.prefix(s))
        return self.reference[s.name]

    def start(self) -> None:
        self.failed = start_all(self.clusters, optional=(self.d,))

    def compare(self, s: Script, other: _Cluster) -> str:
        """The script on `other` and (unless cached) on the reference, side by side."""
        if other.workdir.name in self.failed:
            pytest.fail(self.failed[other.workdir.name])
        prefix = self.prefix(s)
        with ThreadPoolExecutor(2) as pool:
            theirs = pool.submit(run_script, other, s, prefix)
            ref = self.on_reference(s)
            return differences(ref, theirs.result())


def started_trio(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Trio]:
    """A module fixture's trio: started, and stopped after the module's tests."""
    t = Trio(tmp_path_factory.mktemp(name))
    t.start()
    try:
        yield t
    finally:
        stop_all_clusters(t.clusters)


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trio]:
    yield from started_trio(tmp_path_factory, "etcd-diff")


@pytest.fixture(scope="module")
def fresh_trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trio]:
    """New clusters for the absolute-revision scripts (one script per trio)."""
    assert len(FRESH_SCRIPTS) == 1, "one fresh trio per fresh script"
    yield from started_trio(tmp_path_factory, "etcd-diff-fresh")


def ids(scripts: list[Script]) -> list[str]:
    return [s.name for s in scripts]


# ---------------------------------------------------------------- the harness is proven


@pytest.mark.parametrize("s", SCRIPTS + LEASE_SCRIPTS + RECIPE_SCRIPTS + GENERATED,
                         ids=ids(SCRIPTS + LEASE_SCRIPTS + RECIPE_SCRIPTS + GENERATED))
def test_two_etcd_clusters_agree(trio: Trio, s: Script) -> None:
    """Normalization is right: two independent etcd clusters print the same."""
    diff = trio.compare(s, trio.b)
    assert not diff, diff


@pytest.mark.parametrize("s", FRESH_SCRIPTS, ids=ids(FRESH_SCRIPTS))
def test_two_fresh_etcd_clusters_agree(fresh_trio: Trio, s: Script) -> None:
    diff = fresh_trio.compare(s, fresh_trio.b)
    assert not diff, diff


def test_scripts_reach_the_server(trio: Trio) -> None:
    """The reference runs are real: most steps succeed, and the expected etcd errors show
    up (a harness whose etcdctl never reached etcd would compare error == error)."""
    runs = [trio.on_reference(s) for s in SCRIPTS + RECIPE_SCRIPTS]
    steps = [run for r in runs for _, run in r.runs]
    assert sum(run.rc == 0 for run in steps) > 0.7 * len(steps)
    errors = "\n".join(run.stderr for run in steps)
    for text in ("required revision has been compacted",
                 "required revision is a future revision", "key is not provided",
                 "duplicate key given in txn request"):
        assert text in errors, text
    assert all(r.base > 0 for r in runs)


def _mutations(run: Run) -> list[tuple[str, Run]]:
    """Wrong variants of an etcd answer that a differential test must notice."""
    out = []
    if '"revision":' in run.stdout:
        bumped = run.stdout.replace('"revision":', '"revision":1', 1)
        out.append(("header revision", replace(run, stdout=bumped)))
    for field in ("create_revision", "mod_revision", "version", "count"):
        if f'"{field}":' in run.stdout:
            out.append((field, replace(run, stdout=run.stdout.replace(
                f'"{field}":', f'"{field}":9', 1))))
    if '"more":true' in run.stdout:
        out.append(("more", replace(run, stdout=run.stdout.replace(',"more":true', ""))))
    if run.stdout.startswith("SUCCESS"):
        out.append(("txn outcome", replace(run, stdout="FAILURE" + run.stdout[7:])))
    if run.stdout and not run.stdout.startswith("{"):
        lines = run.stdout.splitlines()
        if len(lines) > 2:
            swapped = [lines[2], lines[3] if len(lines) > 3 else "", lines[0], lines[1]]
            out.append(("order", replace(run, stdout="\n".join(swapped + lines[4:]))))
        out.append(("value", replace(run, stdout=run.stdout + "x")))
    if run.rc:
        out.append(("exit status", replace(run, rc=0)))
        out.append(("error text", replace(run, stderr=run.stderr.replace("etcdserver: ",
                                                                          "etcdserver:"))))
    return [(what, wrong) for what, wrong in out if wrong != run]


def test_harness_has_teeth(trio: Trio) -> None:
    """Every single wrong detail in an otherwise identical run is reported; what
    normalization sets aside (ids, terms, timestamps, addresses) is not."""
    checked = set()
    for s in SCRIPTS + RECIPE_SCRIPTS:
        ref = trio.on_reference(s)
        for i, (step, run) in enumerate(ref.runs):
            right = normalize_step(step, run, ref)
            for what, wrong in _mutations(run):
                assert normalize_step(step, wrong, ref) != right, (
                    f"{s.name} step {i}: {what} not noticed")
                if what not in checked:  # the whole report, once per kind of mistake
                    other = ScriptRun("mutant", ref.endpoints, ref.prefix, ref.base,
                                      [*ref.runs[:i], (step, wrong), *ref.runs[i + 1:]],
                                      ref.rebase)
                    assert f"step {i}: " in differences(ref, other)
                checked.add(what)
    assert checked >= {"header revision", "create_revision", "mod_revision", "version",
                       "count", "more", "txn outcome", "order", "value", "exit status",
                       "error text"}, checked

    # Another cluster's ids, terms, addresses, timings and log timestamps compare equal.
    ref = trio.on_reference(SCRIPTS[0])
    disguised = []
    for step, run in ref.runs:
        out = run.stdout.replace('"cluster_id":', '"cluster_id":7').replace(
            '"member_id":', '"member_id":7').replace('"raft_term":', '"raft_term":7')
        disguised.append((step, replace(run, stdout=out)))
    other = ScriptRun("renamed", ["10.0.0.1:1", "10.0.0.2:2", "10.0.0.3:3"], ref.prefix,
                      ref.base, disguised, ref.rebase)
    assert not differences(ref, other)
    # ... and so does the same history at another base revision.
    shifted = ScriptRun("shifted", ref.endpoints, ref.prefix, ref.base + 100,
                        [(step, replace(run, stdout=_shift_revisions(run.stdout, 100)))
                         for step, run in ref.runs], ref.rebase)
    assert not differences(ref, shifted)
    shifted.base += 1
    assert differences(ref, shifted)


def _shift_revisions(text: str, by: int) -> str:
    import re

    return re.sub(r'"(revision|create_revision|mod_revision)":(\d+)',
                  lambda m: f'"{m.group(1)}":{int(m.group(2)) + by}', text)


# ---------------------------------------------------------------- dengine against etcd


@DENGINE_PENDING
@pytest.mark.parametrize("s", SCRIPTS + LEASE_SCRIPTS + RECIPE_SCRIPTS + GENERATED,
                         ids=ids(SCRIPTS + LEASE_SCRIPTS + RECIPE_SCRIPTS + GENERATED))
def test_dengine_agrees_with_etcd(trio: Trio, s: Script) -> None:
    diff = trio.compare(s, trio.d)
    assert not diff, diff


@DENGINE_PENDING
@pytest.mark.parametrize("s", FRESH_SCRIPTS, ids=ids(FRESH_SCRIPTS))
def test_fresh_dengine_agrees_with_etcd(fresh_trio: Trio, s: Script) -> None:
    diff = fresh_trio.compare(s, fresh_trio.d)
    assert not diff, diff


@pytest.mark.slow
@pytest.mark.parametrize("s", GENERATED_SLOW, ids=ids(GENERATED_SLOW))
def test_generated_slow_etcd(trio: Trio, s: Script) -> None:
    diff = trio.compare(s, trio.b)
    assert not diff, diff


@pytest.mark.slow
@DENGINE_PENDING
@pytest.mark.parametrize("s", GENERATED_SLOW, ids=ids(GENERATED_SLOW))
def test_generated_slow_dengine(trio: Trio, s: Script) -> None:
    diff = trio.compare(s, trio.d)
    assert not diff, diff


# ---------------------------------------------------------------- where etcd is no oracle

# A txn with writes and a range at a future (or compacted) revision: etcd 3.4 answers the
# error, and its member the client talked to applies nothing, but the other members drop
# the range from the txn before applying it (an optimisation: nobody reads its result) and
# apply the writes: the members diverge for good (etcd-io/etcd#18667, open). dengine must
# answer the same error and apply nothing anywhere.
DIVERGE = [
    (["put", "a", "1"], None),
    (["txn"], "\nput b 1\nget a --rev 100\n\n\n"),
    (["compaction", "2"], None),
    (["txn"], "\nput c 1\nget a --rev 1\n\n\n"),
]


@pytest.fixture(scope="module")
def diverge_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trio]:
    """An etcd cluster and a dengine cluster of their own (the bug leaves etcd's members
    unequal for good)."""
    t = Trio(tmp_path_factory.mktemp("etcd-diverge"))
    t.clusters.remove(t.b)
    t.start()
    try:
        yield t
    finally:
        stop_all_clusters(t.clusters)


def _diverge(cluster: _Cluster) -> tuple[list[Run], list[tuple[Any, ...]]]:
    """DIVERGE through the first member; then every member's (revision, keys)."""
    runs = [cluster.etcdctl(args, stdin, endpoints=cluster.endpoints[:1])
            for args, stdin in DIVERGE]
    states = []
    for ep in cluster.endpoints:
        out = cluster.etcdctl(["get", "", "--from-key", "--keys-only", "-w", "json"],
                              endpoints=[ep]).stdout
        try:
            answer = json.loads(out)
            states.append((answer["header"]["revision"],
                           [base64.b64decode(kv["key"]).decode()
                            for kv in answer.get("kvs", [])]))
        except (ValueError, KeyError) as e:
            states.append(("no answer", repr(e), out))
    return runs, states


def test_etcd_members_diverge_on_txn_with_bad_revision_range(
        diverge_pair: Trio) -> None:
    """Documents the etcd 3.4 bug above (why no script has a --rev range in a txn with
    writes). If this fails, etcd fixed it: then such txns can be compared again."""
    runs, states = _diverge(diverge_pair.a)
    assert [r.rc for r in runs] == [0, 1, 0, 1]
    assert "required revision is a future revision" in runs[1].stderr
    assert "required revision has been compacted" in runs[3].stderr
    assert states[0] == (2, ["a"])                      # the member the client talked to
    assert states[1] == states[2] == (4, ["a", "b", "c"])  # the others applied the writes


@DENGINE_PENDING
def test_dengine_members_agree_on_txn_with_bad_revision_range(
        diverge_pair: Trio) -> None:
    if diverge_pair.failed:
        pytest.fail(str(diverge_pair.failed))
    runs, states = _diverge(diverge_pair.d)
    assert [r.rc for r in runs] == [0, 1, 0, 1]
    assert runs[1].stderr.endswith(
        "Error: etcdserver: mvcc: required revision is a future revision\n")
    assert runs[3].stderr.endswith(
        "Error: etcdserver: mvcc: required revision has been compacted\n")
    assert states == [(2, ["a"])] * 3  # nothing applied, on any member


# ---------------------------------------------------------------- raw gRPC requests

# Requests no etcdctl sends: messages around etcd's gRPC size limit (max request bytes
# 1.5 MiB + 512 KiB), and bytes that are no protobuf message. Nothing here writes.
_LIMIT = 1536 * 1024 + 512 * 1024
RAW_SIZES = [1_600_000, _LIMIT - 16, _LIMIT + 100, 3_000_000, 7_000_000]
RAW_GARBAGE = [b"\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x08" + b"\xff" * 10 + b"\x01"]


def _raw_answers(endpoint: str) -> list[tuple[str, str, str]]:
    import grpc

    from dengine.proto.etcd import rpc_pb2

    out = []
    with grpc.insecure_channel(endpoint, options=[("grpc.max_send_message_length", -1)]) as ch:
        def call(method: str, body: bytes) -> tuple[str, str]:
            try:
                ch.unary_unary(f"/etcdserverpb.KV/{method}")(body, timeout=10)
                return "OK", ""
            except grpc.RpcError as e:
                return e.code().name, e.details()

        for size in RAW_SIZES:
            # a value that fails etcd's put checks if it ever got there (lease 1: not
            # found), so that nothing is written whatever happens
            body = rpc_pb2.PutRequest(key=b"/raw/big", value=b"x" * size,
                                      lease=1).SerializeToString()
            out.append((f"put of {len(body)} bytes", *call("Put", body)))
            body = rpc_pb2.RangeRequest(key=b"/raw/" + b"k" * size).SerializeToString()
            out.append((f"range of {len(body)} bytes", *call("Range", body)))
            body = rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(
                request_range=rpc_pb2.RangeRequest(key=b"/raw/" + b"t" * size))]
            ).SerializeToString()  # read-only: a read, no proposal size limit
            out.append((f"read-only txn of {len(body)} bytes", *call("Txn", body)))
        for garbage in RAW_GARBAGE:
            for method in ("Put", "Range", "Txn", "DeleteRange"):
                code, details = call(method, garbage)
                # Go's protobuf error texts are Go's: the code and etcd's prefix must match
                prefix = "grpc: error unmarshalling request: "
                out.append((f"{method} of {garbage!r}", code,
                            prefix if details.startswith(prefix) else details))
    return out


@DENGINE_PENDING
def test_raw_grpc_requests_answered_as_etcd(trio: Trio) -> None:
    want = _raw_answers(trio.a.endpoints[0])
    assert _raw_answers(trio.d.endpoints[1]) == want

"""`etcdctl endpoint hashkv` against etcd 3.4 and dengine fed the same commands: the same
hash at every revision of a store never compacted (dengine's HashKV builds etcd's backend
records from its history, `dengine.kv.hashkv`), and after a compaction whose kept
versions were each written alone in their revision; the members of each cluster agree.
Also `defrag` and compacted/future revisions, with etcd's outputs."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

import pytest
from etcd_cluster import DengineCluster, EtcdCluster, etcd_available, start_all, stop_all_clusters

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd/etcdctl not installed")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[EtcdCluster | DengineCluster]]:
    base = tmp_path_factory.mktemp("hashkv")
    clusters: list[EtcdCluster | DengineCluster] = [
        EtcdCluster(base / "etcd", n=3), DengineCluster(base / "dengine", n=3)]
    start_all(list(clusters))
    try:
        yield clusters
    finally:
        stop_all_clusters(list(clusters))


def commands(seed: int, n: int) -> list[tuple[list[str], str | None]]:
    """Puts, deletes, ranges deleted and txns writing several keys, over six keys."""
    rnd = random.Random(seed)
    keys = [f"h/k{i}" for i in range(6)]
    out: list[tuple[list[str], str | None]] = []
    for _ in range(n):
        roll = rnd.random()
        if roll < 0.45:
            out.append((["put", rnd.choice(keys), rnd.choice("abc")], None))
        elif roll < 0.6:
            out.append((["del", rnd.choice(keys)], None))
        elif roll < 0.7:
            out.append((["del", "h/k2", "h/k5"], None))
        else:
            ops = "".join(f"put {k} {rnd.choice('xyz')}\n"
                          for k in rnd.sample(keys, rnd.randrange(1, 4)))
            out.append((["txn"], f"\n{ops}\n\n"))
    return out


def hashes(cluster: EtcdCluster | DengineCluster, *args: str) -> list[tuple[int, int]]:
    run = cluster.etcdctl(["endpoint", "hashkv", "-w", "json", *args])
    assert run.rc == 0, run.stderr
    return [(e["HashKV"]["hash"], e["HashKV"].get("compact_revision", 0))
            for e in json.loads(run.stdout)]


def revision(cluster: EtcdCluster | DengineCluster) -> int:
    run = cluster.etcdctl(["get", "h/", "--prefix", "-w", "json"])
    assert run.rc == 0, run.stderr
    return int(json.loads(run.stdout)["header"]["revision"])


def test_same_hash_as_etcd_at_every_revision(pair: list[EtcdCluster | DengineCluster]
                                              ) -> None:
    start = [revision(c) for c in pair]
    assert start[0] == start[1]
    for args, stdin in commands(7, 30):
        for c in pair:
            run = c.etcdctl(args, stdin)
            assert run.rc == 0, (args, run.stderr)
    end = revision(pair[0])
    assert end == revision(pair[1]) > start[0] + 20
    for rev in range(1, end + 1):
        etcd, dengine = (hashes(c, "--rev", str(rev)) for c in pair)
        assert len(set(dengine)) == 1, (rev, dengine)  # the members agree
        assert dengine[0] == etcd[0], rev
    # Compacted where every kept version was written alone in its revision.
    for c in pair:
        assert c.etcdctl(["put", "h/alone", "1"]).rc == 0
        for key in ("h/k0", "h/k1", "h/k2", "h/k3", "h/k4", "h/k5"):
            assert c.etcdctl(["put", key, "w"]).rc == 0
        assert c.etcdctl(["compaction", str(revision(c))]).rc == 0
        assert c.etcdctl(["put", "h/k0", "after"]).rc == 0
    etcd, dengine = (hashes(c) for c in pair)
    assert len(set(dengine)) == 1 and dengine[0] == etcd[0]
    for c in pair:
        below = c.etcdctl(["endpoint", "hashkv", "--rev", "2"])
        assert "etcdserver: mvcc: required revision has been compacted" in below.stderr
        future = c.etcdctl(["endpoint", "hashkv", "--rev", "100000"])
        assert "etcdserver: mvcc: required revision is a future revision" in future.stderr


def test_defrag_answers_as_etcd(pair: list[EtcdCluster | DengineCluster]) -> None:
    for c in pair:
        run = c.etcdctl(["defrag"])
        assert run.rc == 0, run.stderr
        assert run.stdout == "".join(f"Finished defragmenting etcd member[{e}]\n"
                                     for e in c.endpoints)

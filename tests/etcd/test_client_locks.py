"""The locks of etcd's Python client libraries (python3-etcd3, aetcd: recipes of their own
over KV, Lease and Watch), unchanged, against etcd 3.4 and against dengine: contenders
serialize (no lost update of a counter incremented under the lock), every acquire
succeeds, and the lock key is gone after the last release."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from etcd_cluster import _Cluster, etcd_available, start_all, stop_all_clusters
from test_clients import Pair

import dengine

# Locks and elections need leases and watches (issue 17 items 1-2): these tests switch on
# once both have landed.
RECIPES_READY = all(hasattr(cls, name) for cls, name in (
    (dengine.Engine, "lease"), (dengine.Engine, "watch"), (dengine.Client, "lease"),
    (dengine.Client, "watch")))
needs_leases_and_watch = pytest.mark.skipif(
    not RECIPES_READY, reason="leases and watch not landed yet (issue 17 items 1-2)")


CHECK = Path(__file__).with_name("client_lock_check.py")
LIBRARIES = ["etcd3", "aetcd"]
EXPECTED = {"acquired": True, "counter": 30, "left": False}

pytestmark = pytest.mark.skipif(
    not etcd_available(),
    reason="etcd/etcdctl not installed (apt-get install etcd-server etcd-client; .ci/run does)")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    p = Pair(tmp_path_factory.mktemp("etcd-client-locks"))
    p.failed = start_all([p.etcd, p.dengine], optional=(p.dengine,))
    try:
        yield p
    finally:
        stop_all_clusters([p.etcd, p.dengine])


def check(pair: Pair, library: str, cluster: _Cluster) -> dict[str, Any]:
    if cluster.workdir.name in pair.failed:
        pytest.fail(pair.failed[cluster.workdir.name])
    pair.runs += 1
    done = subprocess.run(
        [sys.executable, str(CHECK), library, cluster.endpoints[pair.runs % 3],
         f"lock{pair.runs}"], capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, f"{library} against {cluster.kind}:\n{done.stderr}"
    report: dict[str, Any] = json.loads(done.stdout)
    return report


@pytest.mark.parametrize("library", LIBRARIES)
def test_library_lock_against_etcd(pair: Pair, library: str) -> None:
    assert check(pair, library, pair.etcd) == EXPECTED


@needs_leases_and_watch
@pytest.mark.parametrize("library", LIBRARIES)
def test_library_lock_against_dengine(pair: Pair, library: str) -> None:
    assert check(pair, library, pair.dengine) == EXPECTED

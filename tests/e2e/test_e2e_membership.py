"""Membership changes and snapshots with real server processes: a node joining through a
snapshot, growing 1 -> 3 under load, replacing a dead node, removing the leader, and the
data dir staying bounded under compaction.

Measurements (catch-up time, snapshot size, data dir peak) are printed and written to
`membership_measurements.json` in pytest's base temp dir. Long variants are marked
`slow` (run them with `pytest -m slow tests/e2e/test_e2e_membership.py -s`).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    CLI,
    Cluster,
    dir_size,
    free_ports,
    load_keys,
    read_all_eventual,
    wait_compacted,
)

from dengine.client import Client, insert
from dengine.errors import DengineError


@pytest.fixture(scope="module")
def measurements(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Numbers recorded by this module's tests, written to a JSON file at the end."""
    record: dict[str, Any] = {}
    yield record
    if record:
        path = tmp_path_factory.getbasetemp() / "membership_measurements.json"
        path.write_text(json.dumps(record, indent=2))
        print(f"\nmembership measurements: {json.dumps(record)} (written to {path})")


def dengine(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def snapshot_bytes(node_dir: Path) -> int:
    """Size of the newest snapshot file of a node (0 when it has none)."""
    snaps = node_dir / "snapshots"
    files = [p for p in snaps.rglob("*") if p.is_file()] if snaps.exists() else []
    return max((p.stat().st_size for p in files), default=0)


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _log_time(line: str) -> datetime.datetime | None:
    m = _LOG_TIME.match(line)
    return datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f") if m else None


def snapshot_timings(leader_log: Path, joiner_log: Path) -> dict[str, float]:
    """From the node logs: the leader's last snapshot write time, and how long the joiner
    took from its start to an installed snapshot (transfer + verify + install)."""
    out: dict[str, float] = {}
    written = re.findall(r"snapshot at index \d+ written in ([\d.]+)s", leader_log.read_text())
    if written:
        out["snapshot_write_s"] = float(written[-1])
    lines = joiner_log.read_text().splitlines()
    times = [t for t in map(_log_time, lines) if t is not None]
    installed = [_log_time(line) for line in lines if "installed the snapshot" in line]
    if times and installed and installed[0] is not None:
        out["joiner_start_to_snapshot_installed_s"] = round(
            (installed[0] - times[0]).total_seconds(), 2)
    return out


async def join_through_snapshot(cluster: Cluster, n_keys: int, measurements: dict[str, Any],
                                label: str) -> None:
    keys = [f"key{i:08d}" for i in range(n_keys)]
    leader = await cluster.wait_leader()
    async with cluster.client(timeout=60) as client:
        started = time.monotonic()
        await load_keys(client, keys)
        load_s = time.monotonic() - started
    # The leader's log no longer starts at 1: a new node can only catch up by a snapshot.
    first = await wait_compacted(cluster, leader.node_id)
    leader = await cluster.wait_leader()
    joiner = cluster.add_joiner()
    started = time.monotonic()
    joiner.start()
    await cluster.wait_caught_up(joiner.node_id, leader.commit_index, timeout=120)
    catch_up_s = time.monotonic() - started
    async with Client([joiner.client], timeout=10) as client:
        st = await client.status()
    assert st.snapshot_index >= first - 1 and st.first_log_index > 1, (
        f"node {joiner.node_id} did not install a snapshot: {st}")
    assert "installed the snapshot" in joiner.log_tail(10_000), joiner.log_tail()
    values = await read_all_eventual(joiner.client, keys)
    missing = [k for k, v in zip(keys, values, strict=True) if v != ("v" + k).encode()]
    assert not missing, f"{len(missing)} keys wrong on the joined node, e.g. {missing[:5]}"
    # auto_promote (the default): the caught-up learner becomes a voter.
    await cluster.wait_members({1, 2, 3, joiner.node_id})
    measurements[label] = {
        "keys": n_keys,
        "load_s": round(load_s, 2),
        "leader_first_log_index_at_join": first,
        "snapshot_bytes_leader": snapshot_bytes(cluster.node(leader.node_id).data_dir),
        "join_to_caught_up_s": round(catch_up_s, 2),
        "joiner_snapshot_index": st.snapshot_index,
        **snapshot_timings(cluster.node(leader.node_id).log_file, joiner.log_file),
    }
    print(f"\n{label}: {measurements[label]}")


def test_empty_node_joins_through_a_snapshot(cluster_factory, measurements) -> None:  # type: ignore[no-untyped-def]
    # batch_writes off: the threshold counts entries, one per key as in these numbers
    cluster: Cluster = cluster_factory(3, snapshot_threshold_entries=2000, batch_writes=False)
    asyncio.run(join_through_snapshot(cluster, 20_000, measurements, "join_20k"))


@pytest.mark.slow
@pytest.mark.timeout(3000)  # loading 1M keys alone takes minutes on 2 shared cores
@pytest.mark.parametrize("n_keys", [100_000, 1_000_000])
def test_empty_node_joins_through_a_big_snapshot(cluster_factory, measurements, n_keys) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = cluster_factory(3, snapshot_threshold_entries=n_keys // 20,
                                       batch_writes=False)
    asyncio.run(join_through_snapshot(cluster, n_keys, measurements, f"join_{n_keys}"))


class Writer:
    """One client writing unique keys continuously; every failure is kept."""

    def __init__(self, endpoints: list[str], prefix: str) -> None:
        self.client = Client(endpoints, timeout=15)
        self.prefix = prefix
        self.acked: list[str] = []
        self.failures: list[DengineError] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            batch = [f"{self.prefix}{n + i:07d}" for i in range(8)]
            n += len(batch)
            outcomes = await asyncio.gather(*(self.client.put(k, k) for k in batch),
                                            return_exceptions=True)
            for key, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, DengineError):
                    self.failures.append(outcome)
                elif isinstance(outcome, BaseException):
                    raise outcome
                else:
                    self.acked.append(key)

    async def stop(self) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task
        await self.client.close()


async def check_all_nodes_have(cluster: Cluster, keys: list[str], node_ids: list[int]) -> None:
    leader = await cluster.wait_leader()
    for node_id in node_ids:
        await cluster.wait_caught_up(node_id, leader.commit_index)
        values = await read_all_eventual(cluster.node(node_id).client, keys)
        wrong = [k for k, v in zip(keys, values, strict=True) if v != k.encode()]
        assert not wrong, f"node {node_id}: {len(wrong)} acknowledged keys missing: {wrong[:5]}"


def test_grow_from_one_to_three_nodes_while_writing(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = cluster_factory(1)

    async def main() -> None:
        await cluster.wait_leader()
        first = cluster.node(1)
        writer = Writer([first.client], "grow")
        writer.start()
        await asyncio.sleep(0.5)
        for _ in range(2):
            joiner = cluster.add_joiner(join=[first.client])
            joiner.start()
            voters = {n.node_id for n in cluster.nodes}
            await cluster.wait_members(voters, timeout=60)
            await asyncio.sleep(0.5)
        await writer.stop()
        assert not writer.failures, f"failed client operations: {writer.failures[:5]}"
        assert len(writer.acked) > 100, f"too few writes completed: {len(writer.acked)}"
        await check_all_nodes_have(cluster, writer.acked, [1, 2, 3])
        # Three voters now: the cluster survives the loss of the original node.
        first.kill()
        async with cluster.client(timeout=30) as client:
            await client.put("after-node-1-died", "ok")
            assert await client.get("after-node-1-died") == b"ok"

    asyncio.run(main())


def test_replace_a_killed_node(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = cluster_factory(3)

    async def main() -> None:
        leader = await cluster.wait_leader()
        keys = [f"r{i:05d}" for i in range(2000)]
        async with cluster.client(timeout=30) as client:
            await load_keys(client, keys, value="")
        dead = next(n for n in cluster.nodes if n.node_id != leader.node_id)
        dead.kill()
        live = [n.client for n in cluster.nodes if n.alive]
        removed = dengine("member", "remove", str(dead.node_id), "--endpoints", ",".join(live),
                          "--json")
        assert removed.returncode == 0, removed.stderr
        assert dead.node_id not in {m["id"] for m in json.loads(removed.stdout)["members"]}
        fresh = cluster.add_joiner(join=live)
        fresh.start()
        survivors = {n.node_id for n in cluster.nodes if n.alive}
        await cluster.wait_members(survivors, timeout=60)
        listed = dengine("member", "list", "--endpoints", ",".join(live), "--json")
        roles = {m["id"]: m["role"] for m in json.loads(listed.stdout)["members"]}
        assert roles == dict.fromkeys(survivors, "voter")
        # The new node counts in the quorum: kill the other original follower too; the
        # leader and the new node are two of three voters.
        other = next(n for n in cluster.nodes
                     if n.alive and n.node_id not in (leader.node_id, fresh.node_id))
        other.kill()
        async with Client([cluster.node(leader.node_id).client, fresh.client],
                          timeout=30) as client:
            await client.put("after-replace", "ok")
            assert await client.get("after-replace") == b"ok"
        await check_all_nodes_have(cluster, keys[:100], [fresh.node_id])

    asyncio.run(main())


def test_remove_the_leader_hands_over(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = cluster_factory(3)

    async def main() -> None:
        old = await cluster.wait_leader()
        writer = Writer(cluster.endpoints, "rm")
        writer.start()
        await asyncio.sleep(0.5)
        async with cluster.client(timeout=30) as client:
            members = await client.remove_member(old.node_id)
        assert old.node_id not in {m.id for m in members}
        new = await cluster.wait_leader(exclude={old.node_id})
        assert new.node_id != old.node_id
        others = {n.node_id for n in cluster.nodes} - {old.node_id}
        await cluster.wait_members(others)
        await asyncio.sleep(0.5)
        await writer.stop()
        assert not writer.failures, f"failed client operations: {writer.failures[:5]}"
        async with Client([cluster.node(i).client for i in others], timeout=30) as client:
            await client.put("after-leader-removed", "ok")
            assert await client.get("after-leader-removed") == b"ok"
            assert (await client.leader()).id in others
        await check_all_nodes_have(cluster, writer.acked, sorted(others))

    asyncio.run(main())


# Settings of the bounded-size runs: snapshots and WAL checkpoints come often.
# batch_writes off: the thresholds count entries, one per write as in these numbers
COMPACTION = {"snapshot_threshold_entries": 20_000, "wal_checkpoint_bytes": 2 * 1024 * 1024,
              "log_segment_bytes": 1024 * 1024, "batch_writes": False}
VALUE = "x" * 100


def max_file_counts(cluster: Cluster) -> dict[str, int]:
    """The most snapshots, state machine WAL files and Raft log segments any node holds."""
    def count(path: Path, pattern: str) -> int:
        try:
            return sum(1 for _ in path.glob(pattern))
        except OSError:  # a dir renamed away while listed
            return 0
    return {
        "snapshots": max(count(n.data_dir / "snapshots", "snap-*") for n in cluster.nodes),
        "snapshot_temps": max(count(n.data_dir / "snapshots", "tmp-*") for n in cluster.nodes),
        "sm_wal": max(count(n.data_dir / "sm", "wal-*") for n in cluster.nodes),
        "raft_segments": max(count(n.data_dir / "raft", "seg-*") for n in cluster.nodes),
    }


async def overwrite_fixed_set(cluster: Cluster, writes: int, key_count: int,
                              measurements: dict[str, Any], label: str) -> None:
    await cluster.wait_leader()
    samples: list[tuple[int, int]] = []  # (largest data dir, largest raft log dir)
    file_counts: list[dict[str, int]] = []  # the most files of each kind on any node
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            samples.append((max(dir_size(n.data_dir) for n in cluster.nodes),
                            max(dir_size(n.data_dir / "raft") for n in cluster.nodes)))
            file_counts.append(max_file_counts(cluster))
            # Often enough that each half of a run sees several snapshot/compaction cycles
            # (200k writes take ~4 s here): the halves' peaks are then comparable.
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    started = time.monotonic()
    async with cluster.client(timeout=60) as client:
        batch = 1000
        for start in range(0, writes, batch * 4):
            await asyncio.gather(*(
                client.write([
                    insert(f"k{(start + b * batch + i) % key_count:05d}", VALUE)
                    for i in range(batch)
                ])
                for b in range(4)
            ))
    elapsed = time.monotonic() - started
    done.set()
    await sampler
    peak, peak_log = max(t for t, _ in samples), max(g for _, g in samples)
    # An entry on disk: the value, the key, protobuf and record framing.
    entry_bytes = len(VALUE) + 40
    # Without compaction the Raft log alone would hold every write.
    uncompacted_log = writes * entry_bytes
    # Compacted: the log keeps at most the threshold plus the tail kept below a snapshot
    # (a tenth of it) plus the segments being filled; with 50% slack.
    log_bound = int(1.5 * (1.1 * COMPACTION["snapshot_threshold_entries"] * entry_bytes
                           + 2 * COMPACTION["log_segment_bytes"]))
    # A checkpoint or snapshot holds the fixed key set and the store's history: what the
    # automatic compaction keeps (10,000 revisions) plus up to a check interval's writes
    # (1 s) before the next one; a change holds the new and the previous version
    # (docs/formats.md).
    change_bytes = 2 * (32 + len(VALUE) + 6) + 20
    image = key_count * entry_bytes + (10_000 + writes / elapsed) * change_bytes
    # The whole dir adds two WAL checkpoints' worth (the WAL threshold is at least the
    # checkpoint's size), a checkpoint and the kept snapshots.
    bound = log_bound + int(1.5 * (2 * max(COMPACTION["wal_checkpoint_bytes"], image)
                                   + 4 * image))
    final = max(dir_size(n.data_dir) for n in cluster.nodes)
    measurements[label] = {
        "writes": writes, "keys": key_count, "seconds": round(elapsed, 1),
        "peak_data_dir_bytes": peak, "peak_raft_log_bytes": peak_log,
        "final_data_dir_bytes": final, "uncompacted_log_estimate_bytes": uncompacted_log,
        "bound_bytes": bound, "log_bound_bytes": log_bound,
    }
    print(f"\n{label}: {measurements[label]}")
    assert log_bound < uncompacted_log // 2  # the bound can tell compaction from none
    assert peak_log <= log_bound, f"raft log peaked at {peak_log} bytes, over {log_bound}"
    assert peak <= bound, f"data dir peaked at {peak} bytes, over the bound {bound}"
    # Bounded, not just small: no kind of file piles up as writes go on. (Comparing the
    # halves' peaks flaked: a 4-s run's first half may see no compaction cycle at all.)
    # Snapshots: the two kept, one just written and not pruned yet, one received and not
    # installed yet (10 snapshot cycles run here: a leak passes that quickly); at most one
    # written and one received in progress; state machine WAL: the live file and the one a
    # checkpoint is folding in; Raft log: what its bound holds.
    most = {kind: max(c[kind] for c in file_counts) for kind in file_counts[0]}
    segment_limit = log_bound // COMPACTION["log_segment_bytes"] + 2
    assert most["snapshots"] <= 2 + 2, (most, file_counts)
    assert most["snapshot_temps"] <= 2, (most, file_counts)
    assert most["sm_wal"] <= 2, (most, file_counts)
    assert most["raft_segments"] <= segment_limit, (most, file_counts)



def test_data_dir_stays_bounded_under_compaction(cluster_factory, measurements) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = cluster_factory(3, **COMPACTION)
    asyncio.run(overwrite_fixed_set(cluster, 200_000, 10_000, measurements, "bounded_200k"))


@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_data_dir_stays_bounded_under_compaction_1m(cluster_factory, measurements) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = cluster_factory(3, **COMPACTION)
    asyncio.run(overwrite_fixed_set(cluster, 1_000_000, 10_000, measurements, "bounded_1m"))


def test_restarted_joiner_does_not_join_again(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = cluster_factory(1)

    async def main() -> None:
        await cluster.wait_leader()
        joiner = cluster.add_joiner()
        joiner.start()
        await cluster.wait_members({1, 2}, timeout=60)
        joiner.stop()
        # The join address now leads nowhere: a restart must not need it.
        joiner.settings["join"] = f"127.0.0.1:{free_ports(1)[0]}"
        joiner.start()
        async with cluster.client(timeout=30) as client:
            await client.put("after-restart", "ok")
        leader = await cluster.wait_leader()
        await cluster.wait_caught_up(joiner.node_id, leader.commit_index)
        assert "joining the cluster" not in joiner.log_tail(200).split("---- start 2 ----")[-1]

    asyncio.run(main())


def test_learner_without_auto_promotion_is_promoted_by_hand(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = cluster_factory(1)

    async def main() -> None:
        await cluster.wait_leader()
        async with cluster.client() as client:
            await client.put("before-join", "1")
        learner = cluster.add_joiner(auto_promote=False)
        learner.start()
        await cluster.wait_members({1}, {learner.node_id}, timeout=60)
        leader = await cluster.wait_leader()
        await cluster.wait_caught_up(learner.node_id, leader.commit_index)
        # A learner serves eventual reads but stays out of every quorum.
        assert await read_all_eventual(learner.client, ["before-join"]) == [b"1"]
        ep = ["--endpoints", learner.client, "--json"]  # redirected to the leader
        promoted = dengine("member", "promote", str(learner.node_id), *ep)
        assert promoted.returncode == 0, promoted.stderr
        roles = {m["id"]: m["role"] for m in json.loads(promoted.stdout)["members"]}
        assert roles == {1: "voter", learner.node_id: "voter"}
        again = dengine("member", "promote", str(learner.node_id), *ep)
        assert again.returncode == 1 and "INVALID_REQUEST" in again.stderr, again.stderr
        # Two voters: losing either one stops writes, which proves the promotion counted.
        learner.kill()
        async with Client([cluster.node(1).client], timeout=1.5) as client:
            with pytest.raises(DengineError):
                await client.put("no-quorum", "x")

    asyncio.run(main())

"""The lock and election recipes on a deterministic stand-in of the cluster (fake_api.py:
etcd's MVCC store, leases, watches; interleavings drawn from a seed), over many seeds:
mutual exclusion of critical sections guarded by the fencing token, tokens strictly
increasing in acquisition order, FIFO order, waiters that leave the queue, holders whose
lease expires while paused, and elections with at most one leader at a time."""

from __future__ import annotations

import asyncio
import random

import pytest
from fake_api import FakeCluster

from dengine.errors import InvalidRequest, Timeout
from dengine.kv.ops import Compare, Op
from dengine.recipes import Election, Lock, NotElectionLeader, SessionExpired

SEEDS = range(40)


def run(coro: object) -> object:
    return asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


async def critical_section(api: object, lock: Lock, who: str, log: list[tuple]) -> None:
    """Write 'enter' and 'exit' records guarded by the fencing token: a holder whose lock
    was taken over cannot write either."""
    for step in ("enter", "exit"):
        guard = [Compare.create_revision(lock.key) == lock.fencing_token]
        result = await api.txn(guard, [Op.put(b"resource", f"{who} {step}".encode())])  # type: ignore[attr-defined]
        if result.succeeded:
            log.append((result.revision, who, step, lock.fencing_token))


def check_history(log: list[tuple]) -> None:
    """Guarded records, in revision order, bracket one holder at a time; tokens increase."""
    log.sort()
    holder = None
    tokens: list[int] = []
    for _, who, step, token in log:
        if step == "enter":
            assert holder is None, f"{who} entered while {holder} held the lock: {log}"
            holder = (who, token)
            if tokens:
                assert token > tokens[-1], f"token {token} after {tokens[-1]}: {log}"
            tokens.append(token)
        else:
            assert holder == (who, token), f"{who} exited while {holder} held it: {log}"
            holder = None


@pytest.mark.parametrize("seed", SEEDS)
def test_lock_contenders_exclude_each_other_and_tokens_increase(seed: int) -> None:
    async def main() -> None:
        cluster = FakeCluster(seed)
        rng = random.Random(seed)
        log: list[tuple] = []
        acquired: list[int] = []

        async def contender(i: int) -> None:
            api = cluster.api(f"c{i}")
            for _ in range(3):
                async with Lock(api, b"jobs", ttl=5) as lock:
                    acquired.append(lock.fencing_token)
                    await critical_section(api, lock, f"c{i}", log)

        await asyncio.gather(*(contender(i) for i in range(rng.randrange(2, 7))))
        check_history(log)
        assert acquired == sorted(acquired) and len(set(acquired)) == len(acquired)
        # every section ran whole (nobody lost a lease here)
        assert len(log) == 2 * len(acquired)
        assert (await cluster.api("x").range(b"jobs/", prefix=True)).kvs == []

    run(main())


@pytest.mark.parametrize("seed", SEEDS)
def test_a_paused_holder_whose_lease_expires_is_fenced(seed: int) -> None:
    """The holder freezes inside its section; its lease expires (the cluster did not hear
    from it); the next contender takes over; the old holder, resumed, believes it holds
    the lock, but its guarded writes fail and it is told by `lost`."""
    async def main() -> None:
        cluster = FakeCluster(seed)
        log: list[tuple] = []
        holder = Lock(cluster.api("old"), b"jobs", ttl=5)
        await holder.acquire()
        old_token = holder.fencing_token
        await critical_section(cluster.api("old"), holder, "old", log[:0])
        cluster.pause("old")
        waiters = [asyncio.ensure_future(Lock(cluster.api(f"w{i}"), b"jobs").acquire())
                   for i in range(3)]
        await asyncio.sleep(0)
        for _ in range(50):
            await asyncio.sleep(0)
        assert not any(w.done() for w in waiters)
        cluster.expire(holder.lease_id)
        done, _ = await asyncio.wait(waiters, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        [winner] = done
        first = winner.result()
        assert first.fencing_token > old_token
        assert holder.lost.is_set() and not holder.held
        cluster.resume("old")
        await critical_section(cluster.api("old"), holder, "old", log)
        assert log == []  # fenced: the stale holder wrote nothing
        await critical_section(cluster.api("w"), first, "w", log)
        assert [step for _, _, step, _ in log] == ["enter", "exit"]
        await first.release()
        tokens = [first.fencing_token]
        rest = [w for w in waiters if w is not winner]
        while rest:
            done, _ = await asyncio.wait(rest, timeout=5, return_when=asyncio.FIRST_COMPLETED)
            [w] = done
            rest.remove(w)
            tokens.append(w.result().fencing_token)
            await w.result().release()
        assert tokens == sorted(tokens)  # FIFO: in create-revision order
        await holder.release()  # its lease is gone already: no error

    run(main())


@pytest.mark.parametrize("seed", range(10))
def test_waiters_that_time_out_or_are_cancelled_leave_the_queue(seed: int) -> None:
    async def main() -> None:
        cluster = FakeCluster(seed)
        api = cluster.api("x")
        holder = await Lock(cluster.api("h"), b"l").acquire()
        with pytest.raises(Timeout):
            await Lock(cluster.api("t"), b"l", timeout=0.05).acquire()
        cancelled = asyncio.ensure_future(Lock(cluster.api("c"), b"l").acquire())
        for _ in range(30):
            await asyncio.sleep(0)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        keys = [kv.key for kv in (await api.range(b"l/", prefix=True)).kvs]
        assert keys == [holder.key]
        nxt = asyncio.ensure_future(Lock(cluster.api("n"), b"l").acquire())
        for _ in range(30):
            await asyncio.sleep(0)
        await holder.release()
        lock = await asyncio.wait_for(nxt, 5)
        assert lock.fencing_token > holder.fencing_token or holder.fencing_token == 0
        await lock.release()

    run(main())


def test_lock_arguments_are_checked() -> None:
    cluster = FakeCluster(0)
    with pytest.raises(InvalidRequest):
        Lock(cluster.api("x"), b"", ttl=5)
    with pytest.raises(InvalidRequest):
        Lock(cluster.api("x"), b"l", ttl=0)
    with pytest.raises(InvalidRequest):
        Lock(cluster.api("x"), b"l", timeout=-1)


@pytest.mark.parametrize("seed", SEEDS)
def test_election_has_one_leader_at_a_time_and_observers_follow(seed: int) -> None:
    async def main() -> None:
        cluster = FakeCluster(seed)
        rng = random.Random(seed)
        leading: set[str] = set()
        terms: list[tuple[str, int]] = []
        seen: list[bytes] = []

        async def observer() -> None:
            async for kv in Election(cluster.api("obs"), b"e").observe():
                seen.append(kv.value)

        watching = asyncio.ensure_future(observer())

        async def candidate(i: int) -> None:
            election = Election(cluster.api(f"c{i}"), b"e")
            async with election.campaign(f"c{i}".encode(), ttl=5) as leadership:
                assert not leading, f"c{i} elected while {leading} lead"
                leading.add(f"c{i}")
                terms.append((f"c{i}", leadership.revision))
                kv = await election.leader()
                assert kv is not None and kv.value == f"c{i}".encode()
                await leadership.proclaim(f"c{i}-2".encode())
                for _ in range(rng.randrange(20)):
                    await asyncio.sleep(0)
                leading.discard(f"c{i}")

        n = rng.randrange(2, 6)
        await asyncio.gather(*(candidate(i) for i in range(n)))
        revisions = [rev for _, rev in terms]
        assert revisions == sorted(revisions) and len(terms) == n
        for _ in range(100):
            await asyncio.sleep(0)
        watching.cancel()
        # the observer saw leaders in order, never one after its successor
        order = [f"c{i}".encode() for i, _ in sorted(
            ((int(name[1:]), rev) for name, rev in terms), key=lambda t: t[1])]
        firsts = [v for v in seen if not v.endswith(b"-2")]
        assert firsts == [v for v in order if v in firsts]
        assert await Election(cluster.api("x"), b"e").leader() is None

    run(main())


def test_proclaim_and_resign_need_the_leadership() -> None:
    async def main() -> None:
        cluster = FakeCluster(1)
        election = Election(cluster.api("a"), b"e")
        with pytest.raises(NotElectionLeader):
            await election.proclaim(b"x")
        leadership = await election.campaign(b"a", ttl=5)
        await election.proclaim(b"b")
        assert (await election.leader()).value == b"b"  # type: ignore[union-attr]
        cluster.expire(leadership.lease_id)
        assert leadership.lost.is_set()
        with pytest.raises(NotElectionLeader):
            await election.proclaim(b"c")
        await election.resign()
        with pytest.raises(SessionExpired):
            # a campaign whose lease ends while it waits
            other = Election(cluster.api("b"), b"e")
            blocker = await Election(cluster.api("c"), b"e").campaign(b"c", ttl=5)
            waiting = asyncio.ensure_future(other.campaign(b"b", ttl=5).start())
            for _ in range(30):
                await asyncio.sleep(0)
            [lease] = [x for x in cluster.holder_leases() if x != blocker.lease_id]
            cluster.expire(lease)
            await waiting

    run(main())


def test_the_check_has_teeth(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lock that does not wait for the key before its own is caught by the history
    check on some seed."""
    import dengine.recipes.lock as lock_module

    async def no_wait(api: object, prefix: bytes, key: bytes, revision: int) -> None:
        return None

    monkeypatch.setattr(lock_module, "wait_deletes", no_wait)
    caught = 0
    for seed in range(10):
        try:
            test_lock_contenders_exclude_each_other_and_tokens_increase(seed)
        except AssertionError:
            caught += 1
    assert caught

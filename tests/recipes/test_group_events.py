"""The Raft group's own events (issue 17 item 6): `leader_changes()` and
`membership_changes()` on the embedded Engine, the Client (from any node) and the
SyncClient: the current value first, then each change, without polling."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from recipes_support import STEADY, cluster, free_port, run, until

from dengine import Client, Engine, Leader, SyncClient
from dengine.api import MemberSet
from dengine.errors import Unavailable
from dengine.node.changes import Changes


async def change(call: Any, *args: Any) -> None:
    """A membership change, retried while the leader cannot take one yet (it has not
    committed an entry of its term)."""
    for _ in range(100):
        try:
            await call(*args)
            return
        except Unavailable:
            await asyncio.sleep(0.05)
    raise AssertionError(f"{call.__name__}{args} never succeeded")


def test_changes_follow_current_then_each_change_and_wait_change() -> None:
    async def main() -> None:
        changes: Changes[int] = Changes(1)
        seen: list[int] = []

        async def follow() -> None:
            async for v in changes.follow():
                seen.append(v)

        task = asyncio.create_task(follow())
        await until(lambda: seen == [1])
        changes.publish(1)  # no change: nothing published
        changes.publish(2)
        changes.publish(3)
        await until(lambda: seen == [1, 2, 3])
        assert await changes.wait_change(2, 0.01) == 3  # differs already: at once
        assert await changes.wait_change(3, 0.01) == 3  # no change within the timeout
        waiter = asyncio.create_task(changes.wait_change(3, 5.0))
        await asyncio.sleep(0.01)
        changes.publish(4)
        assert await waiter == 4
        changes.close(None)
        await asyncio.wait_for(task, 1)
        assert seen == [1, 2, 3, 4]

        failed: Changes[int] = Changes(0)
        follower = failed.follow()
        assert await follower.__anext__() == 0
        failed.close(Unavailable("node 1 was removed"))
        with pytest.raises(Unavailable):
            await follower.__anext__()
        with pytest.raises(Unavailable):
            await failed.wait_change(0, 1)

    run(main())


def test_engine_leader_changes_follow_a_failover(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, **STEADY) as c:
            old = c.leader()
            survivor = c.followers()[0]
            seen: list[Leader] = []

            async def follow() -> None:
                async for leader in survivor.engine.leader_changes():
                    seen.append(leader)

            task = asyncio.create_task(follow())
            await until(lambda: len(seen) == 1)
            first = seen[0]
            assert first.id == old.engine.node_id and first.address == old.address
            assert first.term == old.engine.status().term
            await c.stop(old.engine.node_id)
            await until(lambda: bool(seen[-1].id) and seen[-1].id != first.id)
            new = seen[-1]
            assert new.term > first.term
            assert new.address == c.members[new.id].address
            # each change once, in order: possibly "no leader" in between, never repeats
            ids = [(leader.id, leader.term) for leader in seen]
            assert len(ids) == len(set(ids))
            assert all(lid == 0 for lid, _ in ids[1:-1])
            # Leader-only work: the new leader's own iterator starts with itself.
            mine = c.members[new.id].engine.leader_changes()
            assert (await mine.__anext__()).id == new.id
            await mine.aclose()
            await c.stop(survivor.engine.node_id)
            await asyncio.wait_for(task, 5)  # the engine stopped: the iteration ends

    run(main())


def test_engine_membership_changes(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, **STEADY) as c:
            leader = c.leader().engine
            seen: list[MemberSet] = []

            async def follow() -> None:
                async for members in leader.membership_changes():
                    seen.append(members)

            task = asyncio.create_task(follow())
            await until(lambda: len(seen) == 1)
            assert set(seen[0].voters) == {1, 2, 3} and seen[0].learners == {}
            port = free_port()
            await change(leader.add_learner, 4, f"127.0.0.1:{port}")
            await until(lambda: 4 in seen[-1].learners)
            assert seen[-1].learners[4] == f"127.0.0.1:{port}"
            await change(leader.remove_member, 4)
            await until(lambda: 4 not in seen[-1].learners)
            assert [set(s.learners) for s in seen] == [set(), {4}, set()]
            task.cancel()

    run(main())


def test_client_follows_leader_and_membership_from_any_node(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, **STEADY) as c:
            old = c.leader()
            follower = c.followers()[0]
            # Through one follower first, then whatever node answers.
            async with Client([follower.address, *[m.address for m in c.members.values()
                                                   if m is not follower]]) as client:
                leaders = client.leader_changes()
                first = await leaders.__anext__()
                assert (first.id, first.address) == (old.engine.node_id, old.address)
                members = client.membership_changes()
                assert set((await members.__anext__()).voters) == {1, 2, 3}
                await c.stop(old.engine.node_id)
                while True:
                    leader = await asyncio.wait_for(leaders.__anext__(), 10)
                    if leader.id and leader.id != first.id:
                        break
                assert leader.term > first.term
                await leaders.aclose()
                await change(c.leader().engine.remove_member, old.engine.node_id)
                changed = await asyncio.wait_for(members.__anext__(), 10)
                assert set(changed.voters) == {1, 2, 3} - {old.engine.node_id}
                await members.aclose()

    run(main())


def test_sync_client_iterates_blocking(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, **STEADY) as c:
            out: list[Leader] = []

            def blocking() -> None:
                with SyncClient(c.endpoints) as client:
                    for leader in client.leader_changes():
                        out.append(leader)
                        break
                    members = client.membership_changes()
                    assert set(next(members).voters) == {1, 2, 3}
                    members.close()  # type: ignore[attr-defined]

            thread = threading.Thread(target=blocking)
            thread.start()
            await asyncio.to_thread(thread.join, 20)
            assert not thread.is_alive()
            assert [leader.id for leader in out] == [c.leader().engine.node_id]

    run(main())


def test_engine_events_on_a_single_node(tmp_path: Path) -> None:
    async def main() -> None:
        engine = await Engine.start(str(tmp_path / "n1"), node_id=1,
                                    listen_peer=f"127.0.0.1:{free_port()}",
                                    tick_ms=5, election_timeout_ms=100,
                                    heartbeat_interval_ms=20, clock_drift_ms=20)
        try:
            await engine.wait_ready()
            leaders = engine.leader_changes()
            assert (await leaders.__anext__()).id == 1
            members = engine.membership_changes()
            assert (await members.__anext__()).voters == {1: engine.config.listen_peer}
        finally:
            await engine.stop()
        with pytest.raises(StopAsyncIteration):
            await leaders.__anext__()

    run(main())

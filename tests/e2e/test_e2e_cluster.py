"""Three real server processes: redirects, kill -9 of the leader, catch-up, SIGSTOP,
and a concurrent client history checked for linearizability across leader kills."""

from __future__ import annotations

import asyncio
import random
import signal
import time

from e2e_support import Cluster

from dengine.client import Client
from dengine.errors import DengineError, Timeout
from dengine.sim.lincheck import Op, check


async def eventual_values(node_client: str, keys: list[str]) -> list[bytes | None]:
    """What one node has applied (no leader involved)."""
    async with Client([node_client], timeout=5) as c:
        return await c.get_many(keys, "eventual")


async def put_retrying_unknown(client: Client, key: str, value: str) -> None:
    """Put, retrying a write whose outcome was unknown (e.g. the connection to a killed
    leader dropped after sending). Safe here: nobody else writes `key`, so applying the
    same put twice is indistinguishable from once."""
    for _ in range(20):
        try:
            await client.put(key, value)
            return
        except Timeout:
            continue
    raise AssertionError(f"put {key!r} never succeeded")


def test_writes_through_any_node_are_redirected(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = cluster_factory(3)

    async def main() -> None:
        leader = await cluster.wait_leader()
        for node in cluster.nodes:
            if node.node_id == leader.node_id:
                continue
            # The client knows only this follower; NOT_LEADER carries the leader's address.
            async with Client([node.client], timeout=10) as client:
                await client.put(f"via{node.node_id}", "ok")
                assert await client.get(f"via{node.node_id}") == b"ok"
                found = await client.leader()
                assert (found.id, found.address) == (leader.node_id,
                                                     cluster.node(leader.node_id).client)

    asyncio.run(main())


def test_leader_kill_failover_restart_catch_up(cluster_factory, failover_record) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = cluster_factory(3)

    async def main() -> None:
        acked: dict[str, str] = {}
        async with cluster.client(timeout=15) as client:
            await cluster.wait_leader()
            await asyncio.gather(*(client.put(f"k{i}", f"v{i}") for i in range(100)))
            acked.update({f"k{i}": f"v{i}" for i in range(100)})
            for round_ in range(2):
                old = await cluster.wait_leader()
                victim = cluster.node(old.node_id)
                victim.kill()
                killed_at = time.monotonic()
                await put_retrying_unknown(client, f"after-kill-{round_}", "written")
                elapsed = time.monotonic() - killed_at
                acked[f"after-kill-{round_}"] = "written"
                failover_record.append(elapsed)
                print(f"\nleader kill -> first successful write: {elapsed:.3f} s "
                      f"(killed node {old.node_id}, term {old.term})")
                new = await cluster.wait_leader(exclude={old.node_id})
                assert new.term > old.term
                # Every acknowledged write is readable linearizably from the new leader.
                keys = sorted(acked)
                assert await client.get_many(keys) == [acked[k].encode() for k in keys]
                # More writes while the old leader is down, then it restarts and catches up.
                await asyncio.gather(*(client.put(f"r{round_}-{i}", "x") for i in range(50)))
                acked.update({f"r{round_}-{i}": "x" for i in range(50)})
                victim.start()
                leader_now = await cluster.wait_leader()
                await cluster.wait_caught_up(victim.node_id, leader_now.commit_index)
                keys = sorted(acked)
                assert await eventual_values(victim.client, keys) == [
                    acked[k].encode() for k in keys
                ]

    asyncio.run(main())


def test_paused_follower_resumes_and_catches_up(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = cluster_factory(3)

    async def main() -> None:
        leader = await cluster.wait_leader()
        follower = next(n for n in cluster.nodes if n.node_id != leader.node_id)
        async with cluster.client(timeout=15) as client:
            await client.put(b"before", b"pause")
            follower.signal(signal.SIGSTOP)
            try:
                # Two of three nodes are a quorum: writes keep working.
                await asyncio.gather(*(client.put(f"p{i}", str(i)) for i in range(200)))
                await client.put(b"last", b"one")
            finally:
                follower.signal(signal.SIGCONT)
            current = await cluster.wait_leader()
            await cluster.wait_caught_up(follower.node_id, current.commit_index)
            keys = ["before", "last", *(f"p{i}" for i in range(200))]
            expected = [b"pause", b"one", *(str(i).encode() for i in range(200))]
            assert await eventual_values(follower.client, keys) == expected
            assert await client.get_many(keys) == expected

    asyncio.run(main())


def test_history_during_leader_kills_is_linearizable(cluster_factory, failover_record) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = cluster_factory(3)
    history: list[Op] = []
    keys = ["x", "y", "z"]
    stop = asyncio.Event()

    async def worker(client_id: int) -> None:
        rng = random.Random(client_id)
        async with cluster.client(timeout=3) as client:
            n = 0
            while not stop.is_set():
                n += 1
                key = rng.choice(keys)
                kind = rng.choices(["put", "get", "delete"], [5, 4, 1])[0]
                value = f"{client_id}-{n}"
                call = time.monotonic()
                try:
                    if kind == "put":
                        await client.put(key, value)
                        output = None
                    elif kind == "delete":
                        await client.delete(key)
                        output = None
                    else:
                        raw = await client.get(key)
                        output = raw.decode() if raw is not None else None
                except Timeout:  # includes ConnectionLost: a write's outcome is unknown
                    if kind != "get":
                        history.append(Op(client_id, kind, key, value if kind == "put" else None,
                                          None, call, None))
                    continue
                except DengineError:
                    continue  # definitely not applied (NotLeader, Unavailable, ...)
                history.append(Op(client_id, kind, key, value if kind == "put" else None,
                                  output, call, time.monotonic()))

    async def nemesis() -> None:
        for _ in range(2):
            await asyncio.sleep(1.0)
            leader = await cluster.wait_leader()
            victim = cluster.node(leader.node_id)
            victim.kill()
            killed_at = time.monotonic()
            async with cluster.client(timeout=15) as probe:
                await probe.put("probe", str(killed_at))
            failover_record.append(time.monotonic() - killed_at)
            print(f"\n(lincheck run) leader kill -> first successful write: "
                  f"{time.monotonic() - killed_at:.3f} s")
            await asyncio.sleep(0.5)
            victim.start()
            await cluster.wait_leader()
        await asyncio.sleep(1.0)
        stop.set()

    async def main() -> None:
        await cluster.wait_leader()
        await asyncio.gather(nemesis(), *(worker(c) for c in range(4)))

    asyncio.run(main())
    completed = [op for op in history if op.ret is not None]
    unknown = len(history) - len(completed)
    print(f"\nlincheck history: {len(completed)} completed ops, {unknown} unknown outcomes")
    assert len(completed) > 50, f"too few operations completed: {len(completed)}"
    assert any(op.kind == "get" and op.output is not None for op in completed)
    result = check(history)
    assert result.ok, result.explanation

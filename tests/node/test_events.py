"""What an operator reads at INFO: elections, leadership changes with their reasons,
membership changes, removal (after which the removed node refuses client requests)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from node_helpers import Cluster, run, until

from dengine.errors import Unavailable
from dengine.proto import Message, MessageType


def lines(caplog: pytest.LogCaptureFixture, pattern: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.INFO and re.search(pattern, r.getMessage())]


def test_election_won_followers_and_membership_are_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dengine")

    async def main() -> None:
        cluster = Cluster(tmp_path)
        await cluster.start_all()
        try:
            leader = await cluster.leader()
            term = leader.status().term
            for engine in cluster.engines.values():
                await engine.wait_ready()
            lid = leader.node_id
            assert lines(caplog, rf"^node {lid}: won the election for term {term}; now the leader$")
            assert lines(caplog, rf"^node {lid}: election for term {term} started$")
            for f in cluster.followers():
                await until(lambda f=f: bool(lines(
                    caplog, rf"^node {f.node_id}: following leader node {lid} at term {term}$")))
            await until(lambda: len(lines(
                caplog, r"membership change applied at index \d+ \(term \d+\): voters \[1, 2, 3\]"
            )) == 3)
        finally:
            await cluster.stop_all()

    run(main())


def test_step_down_reasons_higher_term_transfer_and_check_quorum(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dengine")

    async def main() -> None:
        cluster = Cluster(tmp_path)
        await cluster.start_all()
        try:
            # A message with a higher term deposes the leader (here a forged one): it says so.
            leader = await cluster.leader()
            peer = cluster.followers()[0].node_id
            forged = leader.status().term + 5
            leader._node._on_peer_messages(peer, [Message(
                type=MessageType.MSG_APPEND, from_id=peer, to_id=leader.node_id, term=forged)])
            pattern = (rf"^node {leader.node_id}: stepped down as leader at term {forged}: "
                       rf"saw term {forged} from node {peer} \(MSG_APPEND\)$")
            await until(lambda: bool(lines(caplog, pattern)))

            # A leadership transfer.
            leader = await cluster.leader()
            target = cluster.followers()[0].node_id
            leader._node.transfer_leadership(target)
            pattern = (rf"^node {leader.node_id}: stepped down as leader at term \d+: "
                       rf"leadership transferred to node {target}$")
            await until(lambda: bool(lines(caplog, pattern)))

            # The followers go away: check-quorum.
            leader = await cluster.leader()
            for f in cluster.followers():
                await cluster.stop(f.node_id)
            pattern = (rf"^node {leader.node_id}: stepped down as leader at term \d+: lost "
                       r"contact with a quorum of voters for an election timeout \(check quorum\)$")
            await until(lambda: bool(lines(caplog, pattern)))
        finally:
            await cluster.stop_all()

    run(main())


def test_a_removed_node_says_so_and_refuses_client_requests(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dengine")

    async def main() -> None:
        cluster = Cluster(tmp_path)
        await cluster.start_all()
        try:
            leader = await cluster.leader()
            await leader.put(b"k", b"v")
            removed = cluster.followers()[0]
            await cluster.change("remove_member", removed.node_id)
            # The leader no longer replicates to it: it learns from a peer's refusal.
            await until(lambda: removed.status().role == "removed")
            assert lines(caplog, rf"^node {removed.node_id}: removed from the cluster at term "
                                 r"\d+ \(node \d applied a configuration without it\); it no "
                                 r"longer serves client requests")
            for call in (removed.put(b"k", b"w"), removed.get(b"k"),
                         removed.get(b"k", "eventual")):
                with pytest.raises(Unavailable, match="was removed from the cluster"):
                    await call
            assert await (await cluster.leader(all_know=False)).get(b"k") == b"v"
        finally:
            await cluster.stop_all()

    run(main())


def test_peers_remember_a_removal_across_their_restart(tmp_path: Path) -> None:
    """The removed node never receives the configuration that removes it (the leader stops
    replicating to it at once): restarted, it is told again by its restarted peers."""

    async def main() -> None:
        cluster = Cluster(tmp_path)
        await cluster.start_all()
        try:
            await cluster.leader()
            removed = cluster.followers()[0].node_id
            await cluster.change("remove_member", removed)
            await until(lambda: cluster.engines[removed].status().role == "removed")
            await cluster.stop_all()
            for i in cluster.initial:
                if i != removed:
                    await cluster.start(i)
            await cluster.leader()
            engine = await cluster.start(removed)
            await until(lambda: engine.status().role == "removed")
            with pytest.raises(Unavailable, match="was removed from the cluster"):
                await engine.put(b"k", b"v")
        finally:
            await cluster.stop_all()

    run(main())

"""The node as the simulator runs it (`SimNode`), and deliberately broken variants.

`SimNode` is the real `Node` plus one hook: every chunk it applies is shown to the
world's state machine safety check. The broken variants ("teeth") each change one rule
of the real code the way real systems have shipped it; the whole-node simulator must
catch every one of them within its CI seed budget (`tests/sim/test_nodesim.py`).
Replay one with `python -m dengine.sim --whole-node --node dengine.sim.nodesim.broken:NAME`
(nodes) or `--core dengine.sim.nodesim.broken:NAME` (cores). Never use these outside tests.
"""

from __future__ import annotations

import asyncio

from dengine.node.node import Node
from dengine.proto import Entry
from dengine.raft import RaftCore, Ready
from dengine.raft.quorum import quorum_value
from dengine.storage import ApplyResult


class SimNode(Node):
    """The real node; what it applies is checked against what every other node applied."""

    def _on_applied(self, entries: list[Entry], results: list[ApplyResult]) -> None:
        world = getattr(self, "world", None)
        if world is not None:
            world.checks.on_applied(self.node_id, entries)
        super()._on_applied(entries, results)


class AckBeforeDurableNode(SimNode):
    """A follower's acknowledgements and a voter's votes leave before its log and hard
    state are durable (d-engine's bug 2): the messages of a Ready that is not a leader's
    are sent first, then the Ready is persisted as usual."""

    async def _handle_ready(self, loop: asyncio.AbstractEventLoop, core: RaftCore,
                            rd: Ready) -> None:
        if rd.messages and not core.is_leader():
            self._send(rd.messages)
            rd.messages = []
        await super()._handle_ready(loop, core, rd)


class LearnerCommitCore(RaftCore):
    """Counts learners' match indexes toward commit (d-engine's bug 7: the commit index from
    every responder, learners included)."""

    def _maybe_commit(self) -> bool:
        prs = self.prs
        members = set(self.voters) | set(self.learners)
        index = quorum_value(members, {v: prs[v].match for v in members if v in prs})
        if index > self.log.committed and self.log.term(index) == self.term:
            return self.log.commit_to(index)
        return False

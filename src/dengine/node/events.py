"""What an operator follows in the logs: elections, leadership changes and their reasons.

The Raft core is I/O-free and says only what changed (`Ready.soft_state`: role and
leader; the term). `RaftEvents` turns those changes into one INFO line each, with the
node id and the term, and the reason it can tell from what the node saw:

- a higher term from a peer (which peer, which message: `term_raised`, noted when the
  messages of a turn raised the term), a leadership transfer this node asked for
  (`transfer_requested`), removal from the voters, or, for a leader stepping down at
  the same term otherwise, check-quorum (no contact with a quorum for an election
  timeout);
- an election started (pre-vote, then the vote), won, or lost (who leads now, a higher
  term, or rejected by a quorum);
- the leader a follower follows, and losing it.

It runs only when the role or leader changes (and, per turn with messages, one
comparison of the term), never per entry.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from dengine.proto import Message, MessageType
from dengine.raft import RaftCore, Role

log = logging.getLogger(__name__)

_CAMPAIGNING = (Role.PRE_CANDIDATE, Role.CANDIDATE)


def _node(leader: int) -> str:
    return f"node {leader}" if leader else "none"


class RaftEvents:
    """Logs the role, leader and term changes of one node (see the module docstring)."""

    def __init__(self, node_id: int, core: RaftCore) -> None:
        self.node_id = node_id
        self._core = core
        self._role = core.role
        self._leader = core.leader_id
        # (term, from_id, message type name) of the message that last raised our term
        self._raised_by: tuple[int, int, str] | None = None
        self._transfer_to = 0

    def term_raised(self, messages: Sequence[Message], before: int) -> None:
        """The messages of this turn raised the term above `before`: note which one."""
        for msg in messages:
            if msg.term > before and msg.term == self._core.term:
                self._raised_by = (msg.term, msg.from_id, MessageType.Name(msg.type))
                return

    def transfer_requested(self, to: int) -> None:
        self._transfer_to = to

    def _higher_term(self, term: int) -> str | None:
        raised = self._raised_by
        if raised is None or raised[0] != term:
            return None
        return f"saw term {raised[0]} from node {raised[1]} ({raised[2]})"

    def on_change(self, role: Role, leader: int) -> None:
        """The core's role or leader changed (a Ready carried a SoftState)."""
        old_role, old_leader = self._role, self._leader
        self._role, self._leader = role, leader
        core = self._core
        term = core.term
        me = self.node_id
        if role is not old_role:
            if role is Role.PRE_CANDIDATE:
                log.info("node %d: no leader heard within the election timeout at term %d "
                         "(leader was %s); pre-vote for term %d started", me, term,
                         _node(old_leader), term + 1)
            elif role is Role.CANDIDATE:
                log.info("node %d: election for term %d started", me, term)
            elif role is Role.LEADER:
                log.info("node %d: won the election for term %d; now the leader", me, term)
            elif old_role is Role.LEADER:
                log.info("node %d: stepped down as leader at term %d: %s", me, term,
                         self._step_down_reason(term, leader))
            elif old_role in _CAMPAIGNING:
                higher = self._higher_term(term)
                why = (f"node {leader} leads" if leader else higher
                       or "a quorum of voters did not grant it")
                log.info("node %d: lost the election at term %d: %s", me, term, why)
            elif role is Role.LEARNER:
                log.info("node %d: now a learner (non-voting) at term %d", me, term)
            elif old_role is Role.LEARNER:
                log.info("node %d: now a voter at term %d", me, term)
        if role is Role.LEADER or leader == old_leader:
            return
        if leader:
            log.info("node %d: following leader node %d at term %d", me, leader, term)
        elif old_leader and old_leader != me:
            log.info("node %d: lost leader node %d at term %d: %s", me, old_leader, term,
                     self._higher_term(term) or "it stepped down or was removed")

    def _step_down_reason(self, term: int, leader: int) -> str:
        transfer_to, self._transfer_to = self._transfer_to, 0
        higher = self._higher_term(term)
        if higher is not None:
            raised = self._raised_by
            if transfer_to and raised is not None and raised[1] == transfer_to:
                return f"leadership transferred to node {transfer_to}"
            return higher
        if self.node_id not in self._core.voters:
            return "removed from the voters"
        if leader and leader != self.node_id:
            return f"node {leader} leads"
        return "lost contact with a quorum of voters for an election timeout (check quorum)"

"""Membership changes under load in a whole-node run (`--membership`), as an operator does
them, one at a time, through the leader's `Members.change`:

1. remove a voter (the leader itself a third of the time: it steps down once the change
   is committed); once the change is applied at the leader, the removed node stops
   serving ("removed");
2. the removed machine is retired, and a new one (a new node id, an empty data dir, as
   etcd gives every added member a new id) joins; the leader adds it as a learner (it
   catches up from the log or by snapshot);
3. once it has caught up (`check_learner_caught_up`), the leader promotes it to voter.

Half the time (when the victim is not the leader) the operator first tries a shortcut
that skips the steps: the new machine is started at once and the victim swapped for it as
a voter in one change (two voters changed). The real node refuses it (counted as
`swaps_refused`) and the cycle goes on step by step with that machine; a node that
accepts it is caught by the membership-steps check.

Then the next cycle starts 0.2-0.6 s later. The run's faults go on meanwhile (a change
proposed to a leader that dies is simply proposed again to the next one). `stop` ends the
cycles; the run settles only once the cycle under way is complete (every original voter
a voter again): `idle`.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from dengine.node.membership import promoted
from dengine.proto import Membership
from dengine.raft import Role

if TYPE_CHECKING:
    from dengine.sim.nodesim.world import Member, World

_POLL_S = 0.03


def _ids(membership: Membership) -> tuple[set[int], set[int]]:
    return {m.id for m in membership.voters}, {m.id for m in membership.learners}


class Admin:
    def __init__(self, world: World, rng: random.Random) -> None:
        self.world = world
        self.rng = rng
        self.victim: Member | None = None
        self.wiped = False  # the removed machine was replaced by a new one
        self.spare: Member | None = None  # the new machine of a swap attempt
        self._stopped = False

    def start(self) -> None:
        self.world.after(self.rng.uniform(0.3, 0.8), self._step)

    def stop(self) -> None:
        self._stopped = True

    def idle(self) -> bool:
        return self.victim is None

    def _step(self) -> None:
        world = self.world
        world.after(_POLL_S, self._step)
        lead = world.leader()
        if lead is None or lead.node is None:
            return
        node = lead.node
        if not node.running or node.role is not Role.LEADER:
            return
        applied = node.members.applied
        voters, learners = _ids(applied)
        latest = node.members.copy()
        if _ids(latest) != (voters, learners):
            return  # a change is under way
        m = self.victim
        if m is None:
            if self._stopped or self.rng.random() > _POLL_S / 0.4:
                return  # on average one cycle start per 0.4 s of a settled membership
            originals = [x for x in world.members.values() if not x.learner]
            if any(x.node_id not in voters for x in originals):
                return
            m = lead if self.rng.random() < 1 / 3 else self.rng.choice(originals)
            self.victim, self.wiped = m, False
            world.count("member_removals" if m is not lead else "leader_removals")
            if m is not lead and self.rng.random() < 0.5:
                self._swap(lead, m)
                return
        if m.node_id in voters and not self.wiped:
            out = Membership()
            out.voters.extend(x for x in applied.voters if x.id != m.node_id)
            out.learners.extend(applied.learners)
            self._propose(lead, out)
        elif not self.wiped:
            if self.spare is None:
                self.victim = m = world.replace(m)
            else:
                world.retire(m)
                self.victim, self.spare = self.spare, None
            self.wiped = True
        elif m.node_id not in voters | learners:
            out = Membership()
            out.CopyFrom(applied)
            out.learners.add(id=m.node_id, address=f"sim-peer-{m.node_id}:1")
            self._propose(lead, out, "learners_added")
        elif m.node_id in learners:
            try:
                node.members.check_learner_caught_up(m.node_id)
            except Exception:
                return
            self._propose(lead, promoted(applied, m.node_id), "promotions")
        else:
            self.victim = None  # a voter again: the cycle is complete

    def _swap(self, lead: Member, m: Member) -> None:
        """The shortcut: `m` replaced by a new machine as a voter, in one change."""
        node = lead.node
        assert node is not None
        self.spare = spare = self.world.new_machine()
        applied = node.members.applied
        out = Membership()
        out.voters.extend(x for x in applied.voters if x.id != m.node_id)
        out.voters.add(id=spare.node_id, address=f"sim-peer-{spare.node_id}:1")
        out.learners.extend(applied.learners)
        try:
            done = node.members.change(out, 1.0)
        except Exception:
            self.world.count("swaps_refused")
            return
        done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.world.count("swaps_accepted")

    def _propose(self, lead: Member, membership: Membership, what: str = "") -> None:
        node = lead.node
        assert node is not None
        try:
            done = node.members.change(membership, 1.0)
        except Exception:
            return
        done.add_done_callback(lambda f: f.cancelled() or f.exception())
        if what:
            self.world.count(what)

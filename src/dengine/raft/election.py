"""Elections and votes: campaigns (pre-vote first), vote counting, the vote rule,
check-quorum's vote lease, role changes and leadership transfer (Raft §5.2, thesis §9.6,
§3.10)."""

from __future__ import annotations

from dengine.errors import InvalidRequest, Unavailable
from dengine.proto import Entry, Message
from dengine.raft.limits import MAX_TERM
from dengine.raft.quorum import quorum_size
from dengine.raft.readonly import ReadOnly
from dengine.raft.state import CoreState
from dengine.raft.types import (
    MSG_APPEND,
    MSG_HEARTBEAT,
    MSG_PRE_VOTE,
    MSG_PRE_VOTE_RESPONSE,
    MSG_SNAPSHOT,
    MSG_TIMEOUT_NOW,
    MSG_TRANSFER_LEADER,
    MSG_VOTE,
    MSG_VOTE_RESPONSE,
    TRANSFER_CONTEXT,
    Role,
)


class ElectionMixin(CoreState):
    """Campaigns, votes and role changes of `RaftCore`."""

    def campaign(self) -> None:
        """Start an election now, as if the election timeout had passed (pre-vote first)."""
        if self.state is Role.LEADER or not self._promotable():
            return
        self._campaign(pre=self.cfg.pre_vote, transfer=False)

    def transfer_leadership(self, to: int) -> None:
        """Hand leadership to voter `to`: catch it up, then tell it to campaign at once."""
        if self.state is not Role.LEADER:
            if not self.lead:
                raise Unavailable(f"node {self.id} knows no leader to transfer leadership from")
            self._send(MSG_TRANSFER_LEADER, self.lead, index=to)
            return
        if to == self.id:
            self.lead_transferee = 0
            return
        if to not in self.voters or to not in self.prs:
            raise InvalidRequest(f"cannot transfer leadership to node {to}: not a voter")
        if self.lead_transferee == to:
            return
        self.lead_transferee = to
        self.election_elapsed = 0  # the transfer is abandoned after one election timeout
        if self.prs[to].match == self.log.last_index():
            self._send_timeout_now(to)
        else:
            self._send_append(to)

    # ------------------------------------------------------------------ votes

    def _can_grant_vote(self, m: Message) -> bool:
        """One vote per term, and only for a log at least as up to date as ours (§5.2, §5.4.1)."""
        can_vote = (
            self.vote == m.from_id
            or (self.vote == 0 and self.lead == 0)
            or (m.type == MSG_PRE_VOTE and m.term > self.term)
        )
        return can_vote and self.log.is_up_to_date(m.index, m.log_term)

    def _handle_vote_request(self, m: Message) -> None:
        pre = m.type == MSG_PRE_VOTE
        resp = MSG_PRE_VOTE_RESPONSE if pre else MSG_VOTE_RESPONSE
        if self._can_grant_vote(m):
            self._msgs.append(
                Message(type=resp, to_id=m.from_id, from_id=self.id, term=m.term)
            )
            if not pre:
                self.election_elapsed = 0
                self.vote = m.from_id
        else:
            self._send(resp, m.from_id, reject=True)

    def _in_vote_lease(self) -> bool:
        """Whether we heard from a leader within the election timeout (and must not vote)."""
        if not self.cfg.check_quorum or self.election_elapsed >= self.cfg.election_tick:
            return False
        return bool(self.lead) or (self._restarted and self.now < self.cfg.election_tick)

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        if t in (MSG_APPEND, MSG_HEARTBEAT, MSG_SNAPSHOT):
            self._become_follower(self.term, m.from_id)
            self._step_follower(m)
        elif (t == MSG_PRE_VOTE_RESPONSE and self.state is Role.PRE_CANDIDATE) or (
            t == MSG_VOTE_RESPONSE and self.state is Role.CANDIDATE
        ):
            if t == MSG_PRE_VOTE_RESPONSE and not m.reject and m.term != self.term + 1:
                return  # a grant from an earlier pre-campaign
            self._poll(m.from_id, not m.reject)

    def _poll(self, voter: int, granted: bool) -> bool:
        """Record a vote; act on the outcome. True when the election was decided."""
        if voter in self.voters:
            self.votes.setdefault(voter, granted)
        yes = sum(1 for v, g in self.votes.items() if g)
        no = len(self.votes) - yes
        if yes >= quorum_size(self.voters):
            if self.state is Role.PRE_CANDIDATE:
                self._campaign(pre=False, transfer=False)
            else:
                self._become_leader()
            return True
        if len(self.voters) - no < quorum_size(self.voters):
            self._become_follower(self.term, 0)
            return True
        return False

    # ------------------------------------------------------------------ roles

    def _promotable(self) -> bool:
        return self.id in self.voters

    def _reset_election_timeout(self) -> None:
        e = self.cfg.election_tick
        self.randomized_election_timeout = self.rng.randrange(e, 2 * e)

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = 0
        self.lead = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_election_timeout()
        self.votes = {}
        self.lead_transferee = 0
        self.prs = {}
        self.readonly = ReadOnly()
        self.term_committed = False
        self.lease_revoked = False
        self._needs_bcast = False
        self._batch = None

    def _become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.lead = lead
        self.state = Role.FOLLOWER

    def _campaign(self, pre: bool, transfer: bool) -> None:
        if self.term >= MAX_TERM:
            return  # its term would be out of bounds: every peer would drop its requests
        if pre:
            self._reset(self.term)
            self.state = Role.PRE_CANDIDATE
            vote_term = self.term + 1
            msg_type = MSG_PRE_VOTE
        else:
            self._reset(self.term + 1)
            self.vote = self.id
            self.state = Role.CANDIDATE
            vote_term = self.term
            msg_type = MSG_VOTE
        if self._poll(self.id, True):
            return
        last_index = self.log.last_index()
        last_term = self.log.last_term()
        for v in sorted(self.voters):
            if v != self.id:
                self._msgs.append(
                    Message(
                        type=msg_type,
                        to_id=v,
                        from_id=self.id,
                        term=vote_term,
                        index=last_index,
                        log_term=last_term,
                        context=TRANSFER_CONTEXT if transfer else b"",
                    )
                )

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.state = Role.LEADER
        self.lead = self.id
        next_index = self.log.last_index() + 1
        for member in (*self.membership.voters, *self.membership.learners):
            self._add_progress(member.id, next_index)
        own = self._add_progress(self.id, next_index)
        own.match = self.log.stable_last_index()
        own.become_replicate()
        own.recent_active = True
        noop = Entry(index=next_index, term=self.term)
        noop.payload.noop.SetInParent()
        entries = [noop]
        if self._base_from_bootstrap and not self._configs:
            conf = Entry(index=next_index + 1, term=self.term)
            conf.payload.config.CopyFrom(self._base_membership)
            entries.append(conf)
        self._append_as_leader(entries)

    def _send_timeout_now(self, to: int) -> None:
        # The target will win an election that ignores our followers' vote lease: our own
        # lease can no longer be trusted for the rest of this term.
        self.lease_revoked = True
        self._send(MSG_TIMEOUT_NOW, to)

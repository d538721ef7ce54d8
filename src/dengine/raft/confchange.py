"""Membership changes: single-server changes (thesis ch. 4), effective once appended,
reverted when truncated; the membership in effect at any index."""

from __future__ import annotations

from dengine.errors import InvalidRequest, NotLeader, Unavailable
from dengine.proto import Entry, LogId, Membership
from dengine.raft.state import CoreState
from dengine.raft.types import Role


def validate_membership(m: Membership) -> None:
    ids = [x.id for x in m.voters] + [x.id for x in m.learners]
    if any(i <= 0 for i in ids):
        raise InvalidRequest(f"member ids must be positive, got {sorted(ids)}")
    if len(set(ids)) != len(ids):
        raise InvalidRequest(f"a node appears twice in the membership {sorted(ids)}")
    if not m.voters:
        raise InvalidRequest("a membership needs at least one voter")


class ConfChangeMixin(CoreState):
    """Membership of `RaftCore`: proposals of changes and the config entries in the log."""

    def propose_membership(self, membership: Membership) -> LogId:
        """Append a config entry changing at most one voter; effective once appended."""
        if self.state is not Role.LEADER:
            raise NotLeader(leader_id=self.lead)
        if self.lead_transferee:
            raise Unavailable("leadership transfer in progress; retry the membership change")
        if not self.term_committed:
            raise Unavailable(
                "the leader has not committed an entry of its term yet; retry the "
                "membership change shortly"
            )
        pending = self._configs[-1][0] if self._configs else 0
        if pending > self.log.committed:
            raise Unavailable(
                f"membership change at index {pending} is not committed yet; one change at a time"
            )
        validate_membership(membership)
        old = set(self.voters)
        new = {m.id for m in membership.voters}
        if len(old ^ new) > 1:
            raise InvalidRequest(
                f"voters {sorted(old)} -> {sorted(new)} changes more than one voter; "
                "add or remove one voter per change"
            )
        entry = Entry(index=self.log.last_index() + 1, term=self.term)
        entry.payload.config.CopyFrom(membership)
        self._append_as_leader([entry])
        return LogId(term=self.term, index=entry.index)

    def membership_at(self, index: int) -> Membership:
        """The membership in effect at `index` (valid for index >= the applied index)."""
        m = self._base_membership
        for conf_index, conf in self._configs:
            if conf_index > index:
                break
            m = conf
        return m

    def _scan_configs(self) -> list[tuple[int, Membership]]:
        """Config entries in the log, newest last, back to the latest committed one.

        Only those entries are read: the log knows where they are, so a restart with a
        long log does not decode every entry to find them."""
        storage = self.log.storage
        found: list[tuple[int, Membership]] = []
        for index in reversed(storage.config_indexes()):
            found.append((index, storage.entries(index, index + 1)[0].payload.config))
            if index <= self.log.committed:
                break
        found.reverse()
        return found

    def _config_appended(self, entries: list[Entry]) -> None:
        changed = False
        for e in entries:
            if e.payload.HasField("config"):
                self._configs.append((int(e.index), e.payload.config))
                changed = True
        if changed:
            self._set_membership(self._configs[-1][1])

    def _config_truncated(self, index: int) -> None:
        configs = self._configs
        if configs and configs[-1][0] >= index:
            while configs and configs[-1][0] >= index:
                configs.pop()
            self._set_membership(configs[-1][1] if configs else self._base_membership)

    def _prune_configs(self) -> None:
        """Forget config entries superseded by a later one at or below the applied index."""
        configs = self._configs
        applied = self.log.applied
        while len(configs) > 1 and configs[1][0] <= applied:
            configs.pop(0)

    def _set_membership(self, membership: Membership) -> None:
        self.membership = membership
        self.voters = frozenset(m.id for m in membership.voters)
        self.learners = frozenset(m.id for m in membership.learners)
        if self.state is Role.LEADER:
            next_index = self.log.last_index() + 1
            members = self.voters | self.learners
            for peer in members:
                self._add_progress(peer, next_index)
            for peer in [p for p in self.prs if p not in members and p != self.id]:
                del self.prs[peer]
            if self.lead_transferee and self.lead_transferee not in self.voters:
                self.lead_transferee = 0
        elif self.state is not Role.FOLLOWER and not self._promotable():
            self._become_follower(self.term, 0)

"""Log replication and commit: proposals, appends (leader and follower side), per-peer
progress, snapshots to lagging peers, and the commit rule (Raft §5.3, §5.4.2, §7)."""

from __future__ import annotations

from collections.abc import Sequence

from dengine.errors import DengineError, NotLeader, Unavailable
from dengine.proto import Entry, LogId, Message
from dengine.raft.limits import entries_in_order
from dengine.raft.progress import Progress, ProgressState
from dengine.raft.quorum import quorum_value
from dengine.raft.readonly import decode_round
from dengine.raft.state import CoreState
from dengine.raft.storage import LogCompacted
from dengine.raft.types import MSG_APPEND, MSG_APPEND_RESPONSE, MSG_SNAPSHOT, Role

# Heartbeat rounds a follower in SNAPSHOT state may answer without progress before the
# leader assumes the snapshot was lost and probes again, in election timeouts.
SNAPSHOT_STALL_TIMEOUTS = 4
# Appends sent to one follower per trigger (proposal, acknowledgement, heartbeat response)
# while it is behind by more than that: a long backlog costs a few messages per loop turn.
CATCH_UP_MSGS_PER_CALL = 2
# An append's fields besides its entries (type, to, from, term, index, log term, commit:
# a tag byte and a varint of at most 10 bytes each) take at most this many bytes.
_APPEND_HEAD_MAX = 7 * 11


class _ProposedBatch:
    """The entries of the leader's last `propose_batch`, held in one Message.

    Copying N entries into each follower's append costs ~0.7 µs per entry and follower;
    parsing their encoding (made once, shared by every follower) costs ~0.1. By the Log
    Matching property, log entries at `first` .. `last` whose last one has `term` are these.
    """

    __slots__ = ("_encoded", "_holder", "first", "last", "term")

    def __init__(self, first: int, last: int, term: int, holder: Message) -> None:
        self.first = first
        self.last = last
        self.term = term
        self._holder = holder
        self._encoded: bytes | None = None

    def encoded(self) -> bytes:
        """The entries as the `entries` field of a Message, ready to merge into one."""
        if self._encoded is None:
            self._encoded = self._holder.SerializeToString()
        return self._encoded


class ReplicationMixin(CoreState):
    """Proposals, appends, progress and commit of `RaftCore`."""

    def propose(self, commands: list[bytes]) -> list[LogId]:
        """Append commands as entries of the current term; NotLeader on a non-leader."""
        term, first = self.propose_batch(commands)
        return [LogId(term=term, index=i) for i in range(first, first + len(commands))]

    def propose_batch(self, commands: list[bytes]) -> tuple[int, int]:
        """`propose` without a LogId per command (the node's hot path): returns the term
        and the index of the first entry; the commands take consecutive indexes."""
        if self.state is not Role.LEADER:
            raise NotLeader(leader_id=self.lead)
        if self.lead_transferee:
            raise Unavailable(
                f"leadership is being transferred to node {self.lead_transferee}; retry shortly"
            )
        first = index = self.log.last_index() + 1
        term = self.term
        if not commands:
            return term, first
        # The entries are built inside one Message so that the append messages for them
        # can be made from its encoding (see _ProposedBatch) rather than by copying each.
        holder = Message()
        add = holder.entries.add
        for command in commands:
            add(index=index, term=term).payload.command = command
            index += 1
        self.log.append(list(holder.entries))
        self._batch = _ProposedBatch(first, index - 1, term, holder)
        self._needs_bcast = True
        return term, first

    def report_unreachable(self, peer: int) -> None:
        """The transport could not reach `peer`: stop pipelining to it."""
        pr = self.prs.get(peer)
        if self.state is Role.LEADER and pr is not None and pr.state is ProgressState.REPLICATE:
            pr.become_probe()

    def report_snapshot(self, peer: int, ok: bool) -> None:
        """The snapshot transfer to `peer` finished (`ok`) or failed; resume probing."""
        pr = self.prs.get(peer)
        if self.state is not Role.LEADER or pr is None or pr.state is not ProgressState.SNAPSHOT:
            return
        if not ok:
            pr.pending_snapshot = 0
        pr.become_probe()
        pr.probe_sent = True  # wait for the next heartbeat response before probing

    # ------------------------------------------------------------------ leader

    def _maybe_commit(self) -> bool:
        """Commit the highest index a majority of voters holds, if it is of our term (§5.4.2)."""
        prs = self.prs
        index = quorum_value(self.voters, {v: prs[v].match for v in self.voters if v in prs})
        if index > self.log.committed and self.log.term(index) == self.term:
            return self.log.commit_to(index)
        return False

    def _add_progress(self, peer: int, next_index: int) -> Progress:
        pr = self.prs.get(peer)
        if pr is None:
            pr = self.prs[peer] = Progress(next_index, self.cfg.max_inflight_msgs)
        return pr

    def _append_as_leader(self, entries: list[Entry]) -> None:
        self.log.append(entries)
        self._config_appended(entries)
        self._needs_bcast = True
        if self._maybe_commit():  # a removed voter may have been all that held commit back
            self._on_commit()

    def _handle_append_response(self, m: Message) -> None:
        pr = self.prs.get(m.from_id)
        if pr is None:
            return
        if m.index > self.log.last_index():
            # Acknowledges (or rejects at) an index we never had in this term: the answer
            # to no append of ours. Taken as a match it would make us read past our log.
            self.rejected_messages += 1
            return
        pr.recent_active = True
        if m.reject:
            self._handle_reject(m, pr)
            return
        was_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT:
            if pr.match >= pr.pending_snapshot or pr.match + 1 >= self.log.first_index():
                pr.become_probe()
                pr.become_replicate()
        else:
            pr.free_inflight_to(m.index)
        if self._maybe_commit():
            self._on_commit()
        elif was_paused or pr.state is ProgressState.REPLICATE:
            self._send_append(m.from_id)
        if (
            m.from_id == self.lead_transferee
            and pr.match == self.log.last_index()
            and self.state is Role.LEADER
        ):
            self._send_timeout_now(m.from_id)

    def _handle_reject(self, m: Message, pr: Progress) -> None:
        rejected = int(m.index)
        if pr.state is ProgressState.REPLICATE:
            if rejected <= pr.match:
                return  # stale: answers an append sent before a later success
        elif pr.state is ProgressState.PROBE:
            if rejected != pr.next - 1:
                return  # stale: not the probe we are waiting for
        else:
            return
        if m.hint_term == 0:
            candidate = int(m.reject_hint) + 1  # the follower's log ends at reject_hint
        else:
            ours = self.log.last_index_of_term(int(m.hint_term), rejected)
            candidate = ours + 1 if ours else int(m.reject_hint)
        pr.become_probe()
        pr.next = max(min(candidate, rejected), pr.match + 1)
        self._send_append(m.from_id)

    def _handle_heartbeat_response(self, m: Message) -> None:
        pr = self.prs.get(m.from_id)
        if pr is None:
            return
        pr.recent_active = True
        last = self.log.last_index()
        # Read rounds make heartbeat responses as frequent as reads: retry at most once per
        # heartbeat interval, or a lagging follower is sent its whole backlog per response.
        if pr.match < last and self.now >= pr.retry_tick:
            pr.retry_tick = self.now + self.cfg.heartbeat_tick
            pr.probe_sent = False
            pr.stalled_rounds += 1
            if pr.state is ProgressState.REPLICATE:
                if pr.stalled_rounds >= 2:
                    pr.become_probe()  # appends were lost: resend from the match point
                elif len(pr.inflight) >= pr.max_inflight:
                    pr.inflight.popleft()
            elif pr.state is ProgressState.SNAPSHOT and pr.stalled_rounds >= (
                SNAPSHOT_STALL_TIMEOUTS * self.cfg.election_tick // self.cfg.heartbeat_tick
            ):
                pr.become_probe()  # the snapshot was lost and nobody reported it
            # A probing peer gets a probe even when its next index is past our log (after a
            # lost snapshot of our last index): its answer tells us where it really is.
            self._send_append(m.from_id, allow_empty=pr.state is ProgressState.PROBE)
        round_id = decode_round(m.context)
        if round_id > pr.acked_round:
            pr.acked_round = round_id
            self._check_read_quorum()

    def _on_commit(self) -> None:
        """The commit index moved on the leader: release reads, tell followers, maybe retire."""
        if not self.term_committed and self.log.term(self.log.committed) == self.term:
            self.term_committed = True
            ro = self.readonly
            for ctx, requester in ro.waiting_commit:
                ro.unsent.append((ctx, self.log.committed, requester))
            ro.waiting_commit.clear()
        self._needs_bcast = True
        conf_index = self._configs[-1][0] if self._configs else 0
        if self.id not in self.voters and conf_index <= self.log.committed:
            self._bcast_append()  # let the others learn the commit before we go quiet
            self._become_follower(self.term, 0)

    def _bcast_append(self) -> None:
        for peer in self.prs:
            if peer != self.id:
                self._send_append(peer, allow_empty=True)

    def _send_append(self, to: int, allow_empty: bool = False) -> bool:
        """Send what `to` is missing (pipelined within its window); False if nothing went."""
        pr = self.prs[to]
        log = self.log
        cfg = self.cfg
        sent = False
        n_sent = 0
        while not pr.is_paused():
            prev = pr.next - 1
            last = log.last_index()
            try:
                prev_term = log.term(prev)
                entries = (
                    log.entries(pr.next, min(last + 1, pr.next + cfg.max_entries_per_msg))
                    if pr.next <= last
                    else []
                )
            except LogCompacted:
                self._send_snapshot(to, pr)
                return True
            if not entries and not allow_empty:
                break
            msg = Message(
                type=MSG_APPEND,
                to_id=to,
                from_id=self.id,
                term=self.term,
                index=prev,
                log_term=prev_term,
                commit=log.committed,
            )
            batch = self._batch
            bound = 0  # at least the message's size, when known without measuring it
            if (
                batch is not None
                and entries
                and entries[0].index == batch.first
                and entries[-1].index == batch.last
                and entries[-1].term == batch.term
            ):
                encoded = batch.encoded()
                msg.MergeFromString(encoded)
                bound = len(encoded) + _APPEND_HEAD_MAX
            else:
                msg.entries.extend(entries)
            limit = cfg.max_bytes_per_msg
            if len(entries) > 1 and (not bound or bound > limit) and msg.ByteSize() > limit:
                entries = _within_bytes(entries, limit)
                del msg.entries[len(entries) :]
            self._msgs.append(msg)
            pr.sent(prev + len(entries), len(entries))
            sent = True
            allow_empty = False
            if not entries or pr.state is not ProgressState.REPLICATE:
                break
            n_sent += 1
            if n_sent >= CATCH_UP_MSGS_PER_CALL and pr.next <= last:
                break  # a backlog goes out a few messages per acknowledgement, not in one turn
        return sent

    def _send_snapshot(self, to: int, pr: Progress) -> None:
        snap = self.log.storage.snapshot_metadata()
        if snap is None:
            raise DengineError(
                f"entries below {self.log.first_index()} were compacted without a snapshot"
            )
        self._msgs.append(
            Message(type=MSG_SNAPSHOT, to_id=to, from_id=self.id, term=self.term, snapshot=snap)
        )
        pr.become_snapshot(int(snap.last_included.index))

    # ------------------------------------------------------------------ follower

    def _handle_append(self, m: Message) -> None:
        log = self.log
        prev = int(m.index)
        if prev < log.committed:
            self._send(MSG_APPEND_RESPONSE, m.from_id, index=log.committed)
            return
        if not log.match_term(prev, m.log_term):
            hint, hint_term = log.find_conflict_hint(prev)
            self._send(
                MSG_APPEND_RESPONSE,
                m.from_id,
                index=prev,
                reject=True,
                reject_hint=hint,
                hint_term=hint_term,
            )
            return
        last_new = prev + len(m.entries)
        if m.entries:
            entries = list(m.entries)
            if not entries_in_order(entries, prev + 1, int(m.log_term), int(m.term)):
                self.rejected_messages += 1  # a hole or a term out of order inside
                return
            conflict = self._find_conflict(entries)
            if conflict:
                new = entries[conflict - prev - 1 :]
                truncating = conflict <= log.last_index()
                log.truncate_and_append(new)
                if truncating:
                    self._config_truncated(conflict)
                self._config_appended(new)
        log.commit_to(min(int(m.commit), last_new))
        self._send(MSG_APPEND_RESPONSE, m.from_id, index=last_new)

    def _find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first entry we lack or hold with another term; 0 if we hold them all."""
        log = self.log
        last = log.last_index()
        if entries[0].index > last:
            return int(entries[0].index)
        first = log.first_index()
        for e in entries:
            i = int(e.index)
            if i > last:
                return i
            if i >= first and log.term(i) != e.term:
                return i
        return 0

    def _handle_snapshot(self, m: Message) -> None:
        log = self.log
        snap = m.snapshot
        index = int(snap.last_included.index)
        if index <= log.committed:
            self._send(MSG_APPEND_RESPONSE, m.from_id, index=log.committed)
            return
        if log.match_term(index, int(snap.last_included.term)):
            log.commit_to(index)  # we already hold it: just learn that it is committed
            self._send(MSG_APPEND_RESPONSE, m.from_id, index=index)
            return
        log.restore(snap)
        self._base_membership = snap.membership
        self._base_from_bootstrap = False
        self._configs = []
        self._set_membership(snap.membership)
        self._send(MSG_APPEND_RESPONSE, m.from_id, index=index)


def _within_bytes(entries: list[Entry], max_bytes: int) -> list[Entry]:
    """The longest prefix of `entries` within `max_bytes` (at least one entry)."""
    size = 0
    for n, e in enumerate(entries):
        size += e.ByteSize()
        if size > max_bytes and n > 0:
            return entries[:n]
    return entries

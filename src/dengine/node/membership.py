"""Membership: the configuration, changes to it, learners and their promotion, leadership
transfer, and which peers the transport talks to.

A change is one configuration entry (one voter changed at most) proposed by the leader
and complete once applied (`propose`). A learner added with `promote` is made a voter
by whichever node leads once it has caught up: replicating from the log (not a
snapshot) and within `promote_lag` entries of the leader's log (`auto_promote`, checked
every heartbeat interval). The peers the transport talks to follow the latest
configuration appended (`sync_peers`); `start_transport` makes the transport with the
members' addresses and tells it who is outside the cluster or was removed from it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from dengine.api import MemberInfo
from dengine.config import NodeConfig
from dengine.errors import DengineError, InvalidRequest, NotLeader, Unavailable
from dengine.kv.codec import LOG_FORMAT_BATCH
from dengine.node.pending import Pending, Write
from dengine.node.ports import NodeLog, PeerTransport, TransportFactory
from dengine.node.snapshot_send import SnapshotDoneHandler
from dengine.node.transport import MessageHandler, PeerHandler, SnapshotChunkHandler, Transport
from dengine.proto import LogId, Member, Membership
from dengine.raft import RaftCore
from dengine.raft.progress import ProgressState
from dengine.storage import ApplyResult

log = logging.getLogger(__name__)

_FRAME_MARGIN = 64 * 1024


def bootstrap_membership(config: NodeConfig) -> Membership:
    """The first configuration of a new cluster: this node and its configured peers."""
    voters = [Member(id=config.node_id, address=config.peer_address)]
    voters += [Member(id=i, address=a) for i, a in sorted(config.peers.items())]
    return Membership(voters=voters)


def _ids(membership: Membership) -> set[int]:
    return {m.id for m in (*membership.voters, *membership.learners)}


def promoted(membership: Membership, node_id: int) -> Membership:
    """`membership` with learner `node_id` moved to the voters."""
    out = Membership()
    out.voters.extend(membership.voters)
    for m in membership.learners:
        if m.id == node_id:
            out.voters.add(id=m.id, address=m.address)
        else:
            out.learners.append(m)
    return out


class Members:
    """The membership as this node sees and changes it (a view of the core's)."""

    def __init__(
        self,
        config: NodeConfig,
        core: RaftCore,
        raft_log: NodeLog,
        applied: int,
        pending: Pending,
        loop: asyncio.AbstractEventLoop,
        *,
        on_removed: Callable[[str], None],
        wake: Callable[[], None],
        check_running: Callable[[], None],
        not_leader: Callable[[], NotLeader],
        on_config: Callable[[Membership], None] | None = None,
        transport_factory: TransportFactory | None = None,
    ) -> None:
        self.node_id = config.node_id
        self._config = config
        self._core = core
        self._log = raft_log
        self._pending = pending
        self._loop = loop
        self._on_removed = on_removed
        self._wake = wake
        self._check_running = check_running
        self._not_leader = not_leader
        self._on_config = on_config  # a configuration was applied (the membership events)
        self._make_transport: TransportFactory = transport_factory or Transport
        self.transport: PeerTransport | None = None  # set once the transport is started
        self._seen: Membership | None = None  # the configuration the peers were set from
        self._noted = core.membership  # the latest configuration noted in `unapplied`
        # configurations appended and not applied yet: (index, membership), ascending
        self.unapplied: list[tuple[int, Membership]] = []
        current = self.applied = core.membership_at(applied)
        self._applied_ids = _ids(current)
        # members that a configuration applied here removed (the transport tells them so);
        # the log's older configurations count too, so that a restart remembers them
        self.removed_ids: set[int] = set()
        for index in raft_log.config_indexes():
            if raft_log.first_index() <= index <= applied:
                entry = raft_log.entries(index, index + 1)[0]
                self.removed_ids |= _ids(entry.payload.config)
        # Configurations appended before a restart and not applied yet: applied in turn
        # (else `applied` and the removed members stay those of before them).
        for index in raft_log.config_indexes():
            if index > applied:
                entry = raft_log.entries(index, index + 1)[0]
                self.unapplied.append((index, entry.payload.config))
        snap = raft_log.snapshot_metadata()
        # whether a configuration this node knows (its snapshot's, or one in its log up to
        # the applied point) counted it as a member
        self._was_member = self.node_id in self.removed_ids | (
            _ids(snap.membership) if snap is not None else set())
        self.removed_ids -= self._applied_ids

    async def start_transport(
        self,
        on_messages: MessageHandler,
        on_unreachable: PeerHandler,
        on_snapshot_chunk: SnapshotChunkHandler,
        on_snapshot_done: SnapshotDoneHandler,
    ) -> PeerTransport | None:
        """Start the peer transport (`self.transport`); None if a lone node has no
        `listen_peer` or cannot listen for peers (it works alone, it just cannot grow)."""
        config = self._config
        peers = self.peer_addresses()
        if not config.listen_peer:  # a lone embedded node: no peer listener asked for
            return None
        transport = self._make_transport(
            node_id=self.node_id,
            cluster_id=config.cluster_id,
            listen=config.listen_peer,
            peers=peers,
            on_messages=on_messages,
            client_address=config.client_address,
            max_frame_bytes=config.max_bytes_per_msg + config.max_request_size + _FRAME_MARGIN,
            on_unreachable=on_unreachable,
            on_snapshot_chunk=on_snapshot_chunk,
            on_snapshot_done=on_snapshot_done,
            accept_unknown=self.is_outside,
            is_removed=self.is_removed,
            on_removed=self._removed_by,
            snapshot_chunk_bytes=config.snapshot_chunk_bytes,
            max_inbound=config.max_peer_connections,
            # at least 1 s: a peer that is only slow (catching up, a loaded host) is not
            # worth its buffered messages and a new connection
            stall_timeout=max(1.0, config.election_timeout_ms / 1000),
            tls=config.peer_tls(),
        )
        try:
            await transport.start()
        except OSError as e:
            if peers or config.join:
                raise Unavailable(f"cannot listen for peers on {config.listen_peer}: {e}") from None
            log.warning("node %d: cannot listen for peers on %s (%s); running alone, "
                        "new members cannot be added until a restart",
                        self.node_id, config.listen_peer, e)
            return None
        self.transport = transport
        return transport

    def _removed_by(self, peer: int) -> None:
        """The transport: `peer` refused us as a member its applied configuration removed."""
        self._on_removed(f"node {peer} applied a configuration without it")

    def removed_at_start(self) -> bool:
        """Whether the applied configuration leaves this node out (it was removed before
        a restart). Not removed: a node that never was a member (joining: no
        configuration, or, catching up from the log, only configurations from before its
        addition), nor one whose log holds a later configuration with it (a learner added,
        restarted before it applied its own addition): it applies that one next."""
        return (bool(self._applied_ids) and self.node_id not in self._applied_ids
                and self.node_id not in _ids(self._core.membership) and self._was_member)

    def member_list(self, leader_id: int) -> list[MemberInfo]:
        """The latest configuration this node has appended, with the leader's match view."""
        core = self._core
        membership = core.membership
        leading = core.is_leader()
        out = []
        for role, group in (("voter", membership.voters), ("learner", membership.learners)):
            for m in group:
                pr = core.prs.get(m.id) if leading else None
                out.append(MemberInfo(
                    id=m.id, address=m.address, client_address=self.peer_client_address(m.id),
                    role=role, match_index=pr.match if pr is not None else 0,
                    is_leader=m.id == leader_id and leader_id != 0,
                ))
        return out

    def peer_client_address(self, node_id: int) -> str:
        if node_id == self.node_id:
            return self._config.client_address
        if self.transport is not None:
            return self.transport.peer_client_address(node_id)
        return ""

    def new_id(self) -> int:
        """An id for a member added without one (etcd's MemberAdd): one more than the
        highest id of the latest configuration, of the configurations this node's log
        holds and of the members it knows were removed, so never a current member's nor,
        as far as the log remembers, a removed one's."""
        ids = _ids(self._core.membership) | self.removed_ids | self._applied_ids
        for _, membership in self.unapplied:
            ids |= _ids(membership)
        return max(ids, default=0) + 1

    def connected(self, node_id: int) -> bool:
        """Whether this node's link to `node_id` is up (itself: True)."""
        if node_id == self.node_id:
            return True
        return self.transport is not None and self.transport.is_connected(node_id)

    def copy(self) -> Membership:
        """A copy of the latest configuration appended to this node's log."""
        out = Membership()
        out.CopyFrom(self._core.membership)
        return out

    def change(
        self, membership: Membership, timeout: float
    ) -> asyncio.Future[list[ApplyResult]]:
        """Propose a configuration (one voter changed at most); resolves once it is applied."""
        self._check_running()
        try:
            lid = self.propose(membership)
        except NotLeader:
            raise self._not_leader() from None
        future: asyncio.Future[list[ApplyResult]] = self._loop.create_future()
        pending = self._pending
        pending.waiters[lid.index] = (lid.term, Write(future, 1, timeout, pending.due(timeout)), 0)
        self._wake()
        return future

    def propose(self, membership: Membership) -> LogId:
        """Propose a configuration (leader); the entry's id. NotLeader, Unavailable."""
        try:
            lid = self._core.propose_membership(membership)
        except Unavailable as e:
            raise Unavailable(f"cannot change the membership now: {e.message}") from None
        self.sync_peers()
        return lid

    def check_learner_caught_up(self, node_id: int) -> None:
        """InvalidRequest unless `node_id` is a learner within promote_lag of our log."""
        core = self._core
        pr = core.prs.get(node_id)
        last = core.log.last_index()
        lag = self._config.promote_lag
        if pr is None or pr.match == 0 or last - pr.match > lag:
            match = pr.match if pr is not None else 0
            raise InvalidRequest(
                f"node {node_id} has not caught up: it holds the log up to {match}, the "
                f"leader up to {last} (promote_lag {lag}); retry once it has"
            )

    def auto_promote(self) -> None:
        """Leader: make learners added with `promote` voters once they have caught up."""
        core = self._core
        last = core.log.last_index()
        for m in core.membership.learners:
            if not m.promote:
                continue
            pr = core.prs.get(m.id)
            if (pr is None or pr.match == 0 or pr.state is not ProgressState.REPLICATE
                    or last - pr.match > self._config.promote_lag):
                continue
            try:
                core.propose_membership(promoted(core.membership, m.id))
            except DengineError as e:
                log.debug("node %d: auto-promotion of node %d postponed: %s",
                          self.node_id, m.id, e)
                return
            log.info("node %d: promoting learner %d to voter (caught up at %d of %d)",
                     self.node_id, m.id, pr.match, last)
            self.sync_peers()
            return

    def transfer_leadership(self, to: int) -> None:
        self._core.transfer_leadership(to)

    def transfer_target(self) -> int:
        """The node a leadership transfer under way goes to (0: none)."""
        return self._core.lead_transferee

    def is_outside(self) -> bool:
        """True while this node is in no membership (joining): it accepts any peer."""
        core = self._core
        return not core.voters and not core.learners

    def is_removed(self, node_id: int) -> bool:
        """Whether a configuration applied here removed `node_id` (it is told so)."""
        return node_id in self.removed_ids

    def after_ready(self, applied: int) -> None:
        """After each Ready: follow a configuration appended (or truncated), log the ones
        now applied."""
        membership = self._core.membership
        if membership is not self._seen:
            # A config entry was appended (or truncated): talk to the new member set.
            self.sync_peers()
        if membership is not self._noted:
            self._noted = membership
            indexes = self._log.config_indexes()
            index = indexes[-1] if indexes else applied
            self.unapplied = [(i, m) for i, m in self.unapplied if i < index]
            self.unapplied.append((index, membership))
        if self.unapplied and self.unapplied[0][0] <= applied:
            self._applied(applied)

    def _applied(self, applied: int) -> None:
        while self.unapplied and self.unapplied[0][0] <= applied:
            index, membership = self.unapplied.pop(0)
            ids = _ids(membership)
            log.info("node %d: membership change applied at index %d (term %d): voters %s, "
                     "learners %s", self.node_id, index, self._core.term,
                     sorted(m.id for m in membership.voters),
                     sorted(m.id for m in membership.learners))
            before, self._applied_ids = self._applied_ids, ids
            self.applied = membership
            if self._on_config is not None:
                self._on_config(membership)
            self.removed_ids = (self.removed_ids | (before - ids)) - ids
            if self.node_id in before and self.node_id not in ids:
                self._on_removed(f"the configuration applied at index {index} leaves it out")

    def batch_ok(self) -> bool:
        """Leader: whether this turn's writes may go as batch entries: `batch_writes` on,
        and every other member (the core's progress: voters and learners) announced a log
        format that applies them. An older release would apply one as a rejected command
        and diverge; a member not heard from since this node started counts as older."""
        if not self._config.batch_writes:
            return False
        me, transport = self.node_id, self.transport
        if transport is None:
            return all(p == me for p in self._core.prs)
        log_format = transport.peer_log_format
        return all(p == me or log_format(p) >= LOG_FORMAT_BATCH for p in self._core.prs)

    def sync_peers(self) -> None:
        """Talk to the members of the latest configuration."""
        peers = self.peer_addresses()
        if self.transport is not None:
            self.transport.set_peers(peers)

    def peer_addresses(self) -> dict[int, str]:
        """Peers to talk to: the members of the current membership (addresses from the
        membership, else from the config's peers); the config's peers while not a member."""
        membership = self._seen = self._core.membership
        members = [*membership.voters, *membership.learners]
        if not members:
            return dict(self._config.peers)
        peers = {}
        for m in members:
            address = m.address or self._config.peers.get(m.id, "")
            if m.id != self.node_id and address:
                peers[m.id] = address
        return peers

"""The node as the simulator runs it (`SimNode`), and deliberately broken variants.

`SimNode` is the real `Node` plus one hook: every chunk it applies is shown to the
world's state machine safety check. The broken variants ("teeth") each change one rule
of the real code the way real systems have shipped it; the whole-node simulator must
catch every one of them within its CI seed budget (`tests/sim/test_nodesim.py`).
Replay one with `python -m dengine.sim --whole-node --node dengine.sim.nodesim.broken:NAME`
(nodes), `--core dengine.sim.nodesim.broken:NAME` (cores) or `--disk ...:NAME` (disks).
Never use these outside tests.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Sequence

from dengine.errors import NotLeader, Unavailable
from dengine.node.lessor import Lessor
from dengine.node.node import Node
from dengine.node.snapshots import SNAPSHOT_FILE, SnapshotReceiver, _Incoming
from dengine.proto import Entry, LogId, Membership, Message
from dengine.raft import RaftCore, Ready, Role
from dengine.raft.confchange import validate_membership
from dengine.raft.quorum import quorum_value
from dengine.sim.nodesim.disk import FencedDisk
from dengine.storage import ApplyResult


class SimNode(Node):
    """The real node; what it applies is checked against what every other node applied."""

    def _on_applied(self, entries: list[Entry], results: Sequence[ApplyResult]) -> None:
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


class DroppedTicksNode(SimNode):
    """Ticks the core at most once per loop turn however long the loop stalled (a ticker
    that fires once per wake-up and drops the ticks it owes). Its lease is counted in
    ticks: after a stall (a frozen process) the leader's lease outlives real time, and it
    serves lease reads while another leader commits writes."""

    def _take_inputs(self, core: RaftCore) -> None:
        self._last_tick = max(self._last_tick, self._clock() - 1.5 * self._tick_s)
        super()._take_inputs(core)


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


class CommitWhatIHoldCore(RaftCore):
    """A follower takes every entry it holds after an append as committed, not only those
    up to the leader's commit index: it applies before commit."""

    def _handle_append(self, m: Message) -> None:
        super()._handle_append(m)
        if m.entries:
            last = m.entries[-1]
            if self.log.last_index() >= last.index and self.log.term(last.index) == last.term:
                self.log.commit_to(int(last.index))


class TruncateMatchingCore(RaftCore):
    """A follower replaces its log from the first entry of every append, even where its
    entries match (d-engine's bug 6): a late, shorter append cuts entries it acknowledged."""

    def _find_conflict(self, entries: Sequence[Entry]) -> int:
        first = int(entries[0].index)
        return first if first > self.log.committed else super()._find_conflict(entries)


class HardStateNoSyncDisk(FencedDisk):
    """Writes the Raft hard state (term, vote) without fsync: the file, then the rename,
    may be lost by a power cut after the vote left (`--disk`)."""

    def atomic_write(self, path: str, chunks: Iterable[bytes]) -> None:
        if os.path.basename(path) != "hardstate":
            super().atomic_write(path, chunks)
            return
        tmp = path + ".tmp"
        if self.exists(tmp):
            self.unlink(tmp)
        f = self.open_append(tmp)
        for chunk in chunks:
            f.write(chunk)
        f.close()
        self.rename(tmp, path)


class UnverifiedSnapshotReceiver(SnapshotReceiver):
    """Takes a transfer as whole once every chunk passed its CRC-32C on arrival, without the
    SHA-256 of the file: a partial file that a power cut tore between chunks (and that
    the transfer then resumed after) becomes a complete snapshot as it is."""

    def _finish(self, cur: _Incoming) -> str:
        io = self.store.io
        cur.file.sync()
        cur.close()
        self._current = None
        io.rename(str(cur.path), str(cur.directory / SNAPSHOT_FILE))
        final = self.store.directory(cur.metadata)
        if io.exists(str(final)):
            io.rmtree(str(cur.directory))
        else:
            io.rename(str(cur.directory), str(final))
        io.fsync_dir(str(self.store.root))
        return ""


class UnverifiedSnapshotNode(SimNode):
    """Installs snapshots its `UnverifiedSnapshotReceiver` took in (`--node`)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._receiver = UnverifiedSnapshotReceiver(self._receiver.store)


class SwapInOneStepCore(RaftCore):
    """Accepts a membership change of two voters at once (one removed, one added: a
    "replace" without the intermediate configuration or joint consensus): a majority of
    the old voters and one of the new may then not meet. The rest of
    `ConfChangeMixin.propose_membership` is kept (leader, its term committed, one change
    at a time)."""

    def propose_membership(self, membership: Membership) -> LogId:
        if self.state is not Role.LEADER:
            raise NotLeader(leader_id=self.lead)
        if not self.term_committed:
            raise Unavailable("the leader has not committed an entry of its term yet")
        pending = self._configs[-1][0] if self._configs else 0
        if pending > self.log.committed:
            raise Unavailable(f"membership change at index {pending} is not committed yet")
        validate_membership(membership)
        entry = Entry(index=self.log.last_index() + 1, term=self.term)
        entry.payload.config.CopyFrom(membership)
        self._append_as_leader([entry])
        return LogId(term=self.term, index=entry.index)


class UnconfirmedLessor(Lessor):
    """Keep-alives renewed by whoever believes it leads, with no ReadIndex round first
    (etcd before 3.5.8, issue 15247): a deposed leader renews a lease the new leader never
    hears of, and the new leader expires it before the keep-alive + TTL."""

    async def keep_alive_many(self, lease_ids: Sequence[int], timeout: float) -> list[int]:
        await self.wait_primary(timeout)
        return [self.renew(lease_id) for lease_id in lease_ids]


class IgnoresLogFormats(SimNode):
    """Makes batch entries and sends them to every peer whatever log format the peer
    announced (a release that assumes the whole cluster was upgraded at once): during a
    rolling upgrade (`--upgrade`) a member of the older release receives one, which it
    would apply as one rejected command."""

    async def start(self) -> None:
        await super().start()
        self.members.batch_ok = lambda: self.config.batch_writes  # type: ignore[method-assign]
        formats = getattr(self.members.transport, "log_formats", None)
        if formats is not None:
            formats.replicable = lambda peer, messages: messages

"""The outbox: a Ready's messages to the transport, commit-only appends held back, and
snapshot messages turned into file transfers."""

from __future__ import annotations

from collections.abc import Sequence

from dengine.node.ports import PeerTransport
from dengine.node.snapshotter import Snapshotter
from dengine.node.timing import PeerRtt
from dengine.node.transport import MessageHandler
from dengine.proto import Message, MessageType

MSG_SNAPSHOT = MessageType.MSG_SNAPSHOT
MSG_APPEND = MessageType.MSG_APPEND
MSG_HEARTBEAT = MessageType.MSG_HEARTBEAT


class Outbox:
    """Sends the node's Raft messages (the transport may be None: a lone node)."""

    def __init__(self, snaps: Snapshotter) -> None:
        self._snaps = snaps
        self.transport: PeerTransport | None = None  # set once the transport is started
        self.held: dict[int, Message] = {}  # commit-only appends, by follower
        self.held_since = 0  # the tick of the oldest held message
        self.rtt = PeerRtt()  # heartbeats' round trips (the node reports the answers)

    def timed(self, handler: MessageHandler) -> MessageHandler:
        """`handler` of the peers' messages, noting the heartbeats' answers first."""
        received = self.rtt.received

        def on_messages(from_id: int, messages: Sequence[Message]) -> None:
            received(from_id, messages)
            handler(from_id, messages)

        return on_messages

    def hold_commit_updates(self, messages: list[Message], tick: int) -> list[Message]:
        """Keep back, until the next tick at most, the entry-less appends that only carry
        the new commit index; the rest go now.

        The writes this commit completes usually lead to new ones (at once for embedded
        writers, a client round trip later for remote ones), and the append carrying
        their entries carries the commit index too, so the update is dropped (see
        `send`): one message, one follower Ready and one acknowledgement fewer per write,
        and the follower is not busy with it when the next entries arrive. Otherwise it
        leaves when the loop is idle after the next tick (`send_held`), so an idle
        follower learns the commit within a tick (10 ms by default; a ReadIndex round's
        heartbeats carry it sooner). Dropping one is a lost message to Raft: always safe.
        """
        rest = []
        held = self.held
        for msg in messages:
            if msg.type == MSG_APPEND and not msg.entries:
                if not held:
                    self.held_since = tick
                held[msg.to_id] = msg
            else:
                rest.append(msg)
        return rest

    def send_held(self) -> None:
        held = list(self.held.values())
        self.held.clear()
        self.send(held)

    def send(self, messages: list[Message]) -> None:
        held = self.held
        if held:
            for msg in messages:
                if msg.type == MSG_APPEND:
                    held.pop(msg.to_id, None)  # this one carries the commit index too
        transport = self.transport
        if transport is None:
            return
        for msg in messages:
            if msg.type == MSG_HEARTBEAT:
                self.rtt.sent(msg.to_id)
        for msg in messages:
            if msg.type == MSG_SNAPSHOT:
                transport.send([m for m in messages if m.type != MSG_SNAPSHOT])
                for m in messages:
                    if m.type == MSG_SNAPSHOT:
                        self._snaps.send(transport, m)
                return
        transport.send(messages)

"""A value that changes now and then (the leader, the membership) and who follows it.

`Changes.publish(value)` is called by the node's loop when the value may have changed (a
plain comparison: nothing is published when it did not). Followers are async iterators
(`follow()`): the current value first, then each change, in order, without polling; a
follower that does not keep up loses the oldest changes it has not read beyond
`max_queued` (the latest value is always delivered last). `wait_change(known, timeout)` is
the long-poll form the servers use: the current value once it differs from `known`.

`close(error)` ends every follower: they return (a clean stop), or raise `error` (the node
failed or was removed).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

from dengine.api import Leader, MemberSet
from dengine.proto import Membership

T = TypeVar("T")

MAX_QUEUED = 256


class _Follower(Generic[T]):
    __slots__ = ("queue", "wake")

    def __init__(self, max_queued: int) -> None:
        self.queue: collections.deque[T] = collections.deque(maxlen=max_queued)
        self.wake = asyncio.Event()


class Changes(Generic[T]):
    """The current value and its followers (see the module docstring)."""

    def __init__(self, value: T, max_queued: int = MAX_QUEUED) -> None:
        self.value = value
        self._max_queued = max_queued
        self._followers: set[_Follower[T]] = set()
        self._changed: asyncio.Future[None] | None = None  # wait_change's waiters
        self._closed = False
        self._error: BaseException | None = None

    def publish(self, value: T) -> None:
        """The value is now `value` (no-op when equal to the current one)."""
        if value == self.value or self._closed:
            return
        self.value = value
        for follower in self._followers:
            follower.queue.append(value)
            follower.wake.set()
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)

    def close(self, error: BaseException | None = None) -> None:
        """End the followers: they return, or raise `error`."""
        if self._closed:
            return
        self._closed = True
        self._error = error
        for follower in self._followers:
            follower.wake.set()
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error

    async def follow(self) -> AsyncIterator[T]:
        """The current value, then each change (see the module docstring)."""
        self._check_open()
        if self._closed:
            return
        follower: _Follower[T] = _Follower(self._max_queued)
        self._followers.add(follower)
        try:
            yield self.value
            queue, wake = follower.queue, follower.wake
            while True:
                while not queue:
                    if self._closed:
                        self._check_open()
                        return
                    wake.clear()
                    await wake.wait()
                yield queue.popleft()
        finally:
            self._followers.discard(follower)

    async def wait_change(self, known: T | None, timeout: float) -> T:
        """The current value once it differs from `known`, or after `timeout` s whatever
        it is (at once when it differs already, or `known` is None)."""
        self._check_open()
        if known is None or self.value != known or self._closed:
            return self.value
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._changed), timeout)
        self._check_open()
        return self.value


def member_set(membership: Membership) -> MemberSet:
    """The API's view of a configuration (voters and learners, id -> peer address)."""
    return MemberSet(
        voters={m.id: m.address for m in sorted(membership.voters, key=lambda m: m.id)},
        learners={m.id: m.address for m in sorted(membership.learners, key=lambda m: m.id)},
    )


class GroupEvents:
    """The Raft group's own events as one node sees them: `leader` (a new leader id, or
    the same leader elected again at a higher term; id 0: none known) and `membership`
    (each configuration this node applies)."""

    def __init__(self) -> None:
        self.leader: Changes[Leader] = Changes(Leader(0, "", 0))
        self.membership: Changes[MemberSet] = Changes(MemberSet({}, {}))

    def leader_seen(self, leader_id: int, term: int, address: Callable[[], str]) -> None:
        """After each Ready (a comparison; publishes only a change)."""
        last = self.leader.value
        if leader_id == last.id and (leader_id == 0 or term == last.term):
            return
        self.leader.publish(Leader(leader_id, address(), term))

    def config_applied(self, membership: Membership) -> None:
        self.membership.publish(member_set(membership))

    def close(self, error: BaseException | None) -> None:
        self.leader.close(error)
        self.membership.close(error)

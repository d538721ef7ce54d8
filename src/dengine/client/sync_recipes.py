"""The recipes (`dengine.recipes`) for `SyncClient`: blocking context managers and
iterators driving the async ones on the client's loop."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, Protocol, TypeVar

from dengine.api import Key, KeyValue
from dengine.recipes import Campaign, Election, Leadership, Lock

T = TypeVar("T")


class Runner(Protocol):
    def run(self, coro: Coroutine[Any, Any, T]) -> T: ...
    def iterate(self, items: Any) -> Iterator[Any]: ...


class SyncLock:
    """`with client.lock(b"name", ttl=10) as lock:` (see `dengine.recipes.Lock`)."""

    def __init__(self, runner: Runner, lock: Lock) -> None:
        self._runner = runner
        self._lock = lock

    @property
    def name(self) -> bytes:
        return self._lock.name

    @property
    def key(self) -> bytes:
        return self._lock.key

    @property
    def fencing_token(self) -> int:
        return self._lock.fencing_token

    @property
    def lease_id(self) -> int:
        return self._lock.lease_id

    @property
    def lost(self) -> bool:
        """Whether the lock's lease ended while held (the lock may be another's)."""
        return self._lock.lost.is_set()

    @property
    def held(self) -> bool:
        return self._lock.held

    def acquire(self) -> SyncLock:
        self._runner.run(self._lock.acquire())
        return self

    def release(self) -> None:
        self._runner.run(self._lock.release())

    def __enter__(self) -> SyncLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


class SyncLeadership:
    """A won campaign (see `dengine.recipes.Leadership`)."""

    def __init__(self, runner: Runner, leadership: Leadership) -> None:
        self._runner = runner
        self._leadership = leadership

    @property
    def key(self) -> bytes:
        return self._leadership.key

    @property
    def revision(self) -> int:
        return self._leadership.revision

    @property
    def lease_id(self) -> int:
        return self._leadership.lease_id

    @property
    def lost(self) -> bool:
        return self._leadership.lost.is_set()

    def proclaim(self, value: Key) -> None:
        self._runner.run(self._leadership.proclaim(value))

    def resign(self) -> None:
        self._runner.run(self._leadership.resign())


class SyncCampaign:
    def __init__(self, runner: Runner, campaign: Campaign) -> None:
        self._runner = runner
        self._campaign = campaign

    def __enter__(self) -> SyncLeadership:
        return SyncLeadership(self._runner, self._runner.run(self._campaign.start()))

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._runner.run(self._campaign.__aexit__(exc_type, exc, tb))


class SyncElection:
    """`client.election(name)` of a SyncClient (see `dengine.recipes.Election`)."""

    def __init__(self, runner: Runner, election: Election) -> None:
        self._runner = runner
        self._election = election

    @property
    def name(self) -> bytes:
        return self._election.name

    def campaign(self, value: Key, ttl: int = 10, *, timeout: float | None = None,
                 on_lost: Callable[[], Any] | None = None) -> SyncCampaign:
        """`with election.campaign(value, ttl=10) as leadership:` (waits to lead)."""
        return SyncCampaign(self._runner, self._election.campaign(
            value, ttl, timeout=timeout, on_lost=on_lost))

    def leader(self) -> KeyValue | None:
        return self._runner.run(self._election.leader())

    def observe(self) -> Iterator[KeyValue]:
        return self._runner.iterate(self._election.observe())

    def proclaim(self, value: Key) -> None:
        self._runner.run(self._election.proclaim(value))

    def resign(self) -> None:
        self._runner.run(self._election.resign())

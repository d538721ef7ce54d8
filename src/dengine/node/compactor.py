"""Automatic compaction of the MVCC history (etcd's `--auto-compaction-mode` and
`--auto-compaction-retention`): the leader proposes a compaction like a client would.

- `revision` mode, retention N: every `REVISION_CHECK_S` the leader compacts to
  (store revision - N) when that is above the last compaction: the history keeps the
  last N revisions (the default keeps 10,000: an in-memory history must be bounded).
- `periodic` mode, retention P (seconds): the leader notes the store revision every
  P/10 (at least every `MIN_SAMPLE_S`, at most every hour) and compacts to the newest
  revision noted at least P ago: the history keeps at least P of time.

A compaction is one log entry, applied by every replica at the same index. One that
fails (a manual compaction went further meanwhile, leadership lost) is only logged:
the next check tries again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from dengine.errors import DengineError
from dengine.kv import EVENTUAL
from dengine.proto.etcd.rpc_pb2 import CompactionRequest

log = logging.getLogger("dengine.node")

REVISION_CHECK_S = 1.0
MIN_SAMPLE_S = 1.0
MAX_SAMPLE_S = 3600.0
KV_COMPACTION = 6  # the WriteCommand field of a compaction request (engine.KV_COMPACTION)


def _revisions(store: Any) -> tuple[int, int]:
    return int(store.revision), int(store.compact_revision)


class AutoCompactor:
    """The leader's compaction task of one engine (does nothing on a follower)."""

    def __init__(
        self,
        mode: str,
        retention: float,
        *,
        is_leader: Callable[[], bool],
        read: Callable[[Callable[[Any], Any], str], Awaitable[Any]],
        propose: Callable[[int, bytes], Awaitable[Any]],
        check_s: float | None = None,
    ) -> None:
        self.mode = mode
        self.retention = retention
        self._is_leader = is_leader
        self._read = read
        self._propose = propose
        if mode == "revision":
            self.interval = REVISION_CHECK_S if check_s is None else check_s
        else:
            sample = min(MAX_SAMPLE_S, max(MIN_SAMPLE_S, retention / 10))
            self.interval = sample if check_s is None else check_s
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self.compactions = 0  # proposed and applied

    def start(self) -> None:
        if self.retention > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(), name="dengine-auto-compaction")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check(time.monotonic())
            except DengineError as e:  # stopped, leadership lost, raced: try again later
                log.debug("automatic compaction: %s", e.message)
            except Exception:
                log.exception("automatic compaction failed")

    async def check(self, now: float) -> int:
        """One check at time `now`: the revision compacted to (0: none)."""
        if not self._is_leader():
            self._samples.clear()  # a new leader samples from when it leads
            return 0
        revision, compacted = await self._read(_revisions, EVENTUAL)
        if self.mode == "revision":
            target = revision - int(self.retention)
        else:
            samples = self._samples
            samples.append((now, revision))
            target = 0
            while samples and now - samples[0][0] >= self.retention:
                target = samples.popleft()[1]
        if target <= compacted:
            return 0
        await self._propose(KV_COMPACTION,
                            CompactionRequest(revision=target).SerializeToString())
        self.compactions += 1
        log.info("automatic compaction (%s mode) to revision %d", self.mode, target)
        return target

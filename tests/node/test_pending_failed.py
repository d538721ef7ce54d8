"""`Pending.failed`: the proposed writes that failed, each counted once (the metrics'
`dengine_server_proposals_failed_total`); a write that was never proposed is not."""

from __future__ import annotations

import asyncio

from dengine.errors import Timeout
from dengine.node.pending import Pending, Write
from dengine.proto import Entry
from dengine.storage import ApplyResult


def test_each_failed_proposal_counts_once() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        pending = Pending(tick_s=0.01)

        def write(size: int, timeout: float = 10.0) -> Write:
            return Write(loop.create_future(), size, timeout, pending.due(timeout))

        overwritten, applied, late, stopped = write(2), write(1), write(1, 0.01), write(1)
        queued = write(1, 0.01)
        pending.register([([b"a", b"b"], overwritten), ([b"c"], applied)], term=1, index=1)
        pending.register([([b"d"], late), ([b"e"], stopped)], term=1, index=4)
        # another leader's entries at 1-2 (term 2): the two-command write fails, once
        pending.resolve([Entry(index=1, term=2), Entry(index=2, term=2), Entry(index=3, term=1)],
                        [ApplyResult(index=1), ApplyResult(index=2), ApplyResult(index=3)])
        assert pending.failed == 1 and applied.future.done() and not applied.future.exception()
        pending.ticks += 5
        pending.expire([([b"f"], queued)], [])  # the queued one was never proposed
        assert pending.failed == 2 and isinstance(late.future.exception(), Timeout)
        assert queued.future.done()
        pending.fail(Timeout("stopped"))
        assert pending.failed == 3 and stopped.future.done()
        for w in (overwritten, late, stopped, queued):
            w.future.exception()

    asyncio.run(main())

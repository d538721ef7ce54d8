"""Why a node stopped serving: a fatal (storage) failure, or its removal from the cluster.

`Standing` records the first failure and the first removal, logs them, and words the error
a request gets from a node that is not running (`unavailable`). The node does the rest:
it stops its loop, gives up its role, fails what is pending and closes its transport.
"""

from __future__ import annotations

import asyncio
import logging

from dengine.errors import DengineError, StorageError, Unavailable

log = logging.getLogger("dengine.node.node")  # the node's lines, as before


def failure_reason(e: BaseException | None) -> str:
    """One line for a fatal error: an OSError's text and file (ENOSPC: "No space left on
    device: PATH"), a DengineError's message."""
    if isinstance(e, OSError):
        return f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
    if isinstance(e, DengineError):
        return e.message
    return repr(e)


class Standing:
    """The reasons one node is not serving (none while it runs or was merely stopped)."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.failure: BaseException | None = None
        self.removed = ""  # why this node knows it was removed from the cluster
        self._failed = asyncio.Event()

    def unavailable(self) -> DengineError:
        """What a request gets from this node while it does not run (StorageError once it
        stopped on a fatal storage failure)."""
        if self.removed:
            return Unavailable(
                f"node {self.node_id} was removed from the cluster and no longer serves "
                f"requests ({self.removed}); stop it, or clear its data dir and add it again"
            )
        if self.failure is not None:
            return StorageError(
                f"node {self.node_id} stopped after a storage failure "
                f"({failure_reason(self.failure)}); nothing acknowledged is lost: "
                "restart it once the disk is fixed or has room"
            )
        return Unavailable(f"node {self.node_id} is stopped")

    def fail(self, e: BaseException) -> bool:
        """Record a fatal error; False if one was recorded already."""
        if self.failure is not None:
            return False
        log.critical("node %d: stopping after a fatal error: %s", self.node_id, e,
                     exc_info=e)
        self.failure = e
        self._failed.set()
        return True

    async def wait_failure(self) -> BaseException:
        """The error once the node stopped on a fatal (storage) failure."""
        await self._failed.wait()
        assert self.failure is not None
        return self.failure

    def remove(self, why: str, term: int) -> bool:
        """Record that this node is no longer a member; False if known already."""
        if self.removed:
            return False
        self.removed = why
        log.info("node %d: removed from the cluster at term %d (%s); it no longer serves "
                 "client requests: stop it, or clear its data dir and add it again",
                 self.node_id, term, why)
        return True

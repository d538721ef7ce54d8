"""Child process for test_sm_durability: writes keys until killed, printing each acked one.

It records, for every state machine WAL, the size that was last fdatasynced (to
`<data_dir>.synced`), so that the parent can cut each WAL back to what a power cut could
leave. With "broken" as third argument it ignores the rule that the Raft log is compacted
only below the state machine's durable point (the test's teeth).
"""

from __future__ import annotations

import asyncio
import os
import sys

from crash_writer import main

from dengine.storage import FileStateMachine, fileio

FAST = {"tick_ms": 5, "election_timeout_ms": 50, "heartbeat_interval_ms": 15,
        "clock_drift_ms": 10, "snapshot_threshold_entries": 20}


def record_syncs(journal_path: str) -> None:
    journal = open(journal_path, "a", buffering=1)  # noqa: SIM115 - lives until killed
    open_append = fileio.RealDisk.open_append

    def open_recorded(self: fileio.RealDisk, path: str, **kw: int | None) -> fileio.AppendFile:
        f = open_append(self, path, **kw)  # type: ignore[arg-type]
        if f"{os.sep}sm{os.sep}" not in path:
            return f
        sync = f.sync

        def recorded_sync() -> None:
            sync()
            journal.write(f"{path} {f._position}\n")  # type: ignore[attr-defined]

        f.sync = recorded_sync  # type: ignore[method-assign]
        return f

    fileio.RealDisk.open_append = open_recorded  # type: ignore[method-assign]


def break_the_rule() -> None:
    FileStateMachine.sync = lambda self: None  # type: ignore[method-assign]
    FileStateMachine.durable_index = lambda self: self.last_applied().index  # type: ignore


if __name__ == "__main__":
    record_syncs(sys.argv[1] + ".synced")
    if len(sys.argv) > 3 and sys.argv[3] == "broken":
        break_the_rule()
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), FAST))

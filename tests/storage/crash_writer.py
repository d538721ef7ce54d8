"""A storage writer for the kill -9 test: it prints a line after each durable step.

Entry i of term t writes key k<i % 50> = v<i>-<t>, so any entry or value found after a
crash can be checked against its index alone. Lines (flushed after each step returns):
  L <last index> <term of that entry>   the log is durable through <last index>
  T <index>                             about to truncate the log from <index>
  S <applied index>                     the state machine applied through <applied index>
  H <term>                              hard state with <term> is durable
"""

from __future__ import annotations

import random
import sys

from dengine.proto import Entry, HardState, WriteCommand
from dengine.storage import FileRaftLog, FileStateMachine

KEYS = 50


def make_entry(index: int, term: int) -> Entry:
    cmd = WriteCommand()
    cmd.insert.key = b"k%d" % (index % KEYS)
    cmd.insert.value = b"v%d-%d" % (index, term) + b"." * (index % 200)
    entry = Entry(index=index, term=term)
    entry.payload.command = cmd.SerializeToString()
    return entry


def main() -> None:
    directory, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    log = FileRaftLog(f"{directory}/raft", segment_bytes=8192)
    sm = FileStateMachine(f"{directory}/sm", checkpoint_bytes=16384)
    out = sys.stdout
    term = log.hard_state().term + 1
    log.set_hard_state(HardState(term=term, voted_for=1))
    print(f"H {term}", file=out, flush=True)
    while True:
        step = rng.random()
        applied = sm.last_applied().index
        if step < 0.1 and log.last_index() > max(applied, log.first_index()):
            index = rng.randint(max(applied, log.first_index() - 1) + 1, log.last_index())
            print(f"T {index}", file=out, flush=True)
            log.truncate_suffix(index)
            print(f"L {log.last_index()} {log.term(log.last_index())}", file=out, flush=True)
        elif step < 0.55:
            first = log.last_index() + 1
            log.append([make_entry(i, term) for i in range(first, first + rng.randint(1, 40))])
            print(f"L {log.last_index()} {term}", file=out, flush=True)
        elif step < 0.95 and log.last_index() > applied:
            hi = min(log.last_index(), applied + rng.randint(1, 30))
            sm.apply_chunk(log.entries(applied + 1, hi + 1))
            print(f"S {hi}", file=out, flush=True)
        elif applied > log.first_index() + 20:
            log.compact_prefix(applied - 10)


if __name__ == "__main__":
    main()

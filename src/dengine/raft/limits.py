"""What a peer message may carry: the core drops any message outside these bounds.

Terms and indexes are uint64 on the wire, but the core only ever holds values up to
`MAX_TERM` and `MAX_INDEX` (2**62), so `term + 1`, `index + 1` and the sums it computes
never overflow the uint64 fields they are written back to. (Without the bound, one forged
message with term 2**64 - 1 made every node of a cluster adopt and persist that term and
then fail with "Value out of range" at its next election, and again at every restart.)
At one election per millisecond, 2**62 terms last 146 million years.

`message_problem` checks a message on its own (the transport calls it where peer frames
are decoded, `RaftCore.step` again before acting); the core also drops what is absurd
against its own state (an acknowledgement of entries it never had).
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter

from dengine.proto import Entry, Message, MessageType

MAX_TERM = 1 << 62
MAX_INDEX = 1 << 62
# A ReadIndex request id or a heartbeat round (8 bytes each from dengine's own nodes).
MAX_CONTEXT_BYTES = 1024

_MSG_APPEND = MessageType.MSG_APPEND
_MSG_SNAPSHOT = MessageType.MSG_SNAPSHOT
_index = attrgetter("index")
_term = attrgetter("term")


def message_problem(m: Message) -> str:
    """Why `m` cannot come from a correct peer; "" when it is within bounds.

    Checked: the sender id is set; term <= MAX_TERM; every other term it carries
    (`log_term`, `hint_term`, the entries', the snapshot's) is at most its `term`; every
    index (`index`, `commit`, `reject_hint`, the snapshot's) at most MAX_INDEX; entries
    only in appends, the first at `index + 1` with a term >= `log_term`, the last at
    `index + len(entries)`; `context` at most MAX_CONTEXT_BYTES. Constant time: the
    entries between the first and the last are checked by the follower that appends
    them (`entries_in_order`), where it walks them anyway.
    """
    term = m.term
    if not m.from_id:
        return "no sender id"
    if term > MAX_TERM:
        return f"term {term} is above the maximum {MAX_TERM}"
    if m.log_term > term or m.hint_term > term:
        return f"log term {m.log_term} / hint term {m.hint_term} above the message's term {term}"
    if m.index > MAX_INDEX or m.commit > MAX_INDEX or m.reject_hint > MAX_INDEX:
        return (f"index {m.index} / commit {m.commit} / reject hint {m.reject_hint} above "
                f"the maximum {MAX_INDEX}")
    if len(m.context) > MAX_CONTEXT_BYTES:
        return f"context of {len(m.context)} bytes (at most {MAX_CONTEXT_BYTES})"
    entries = m.entries
    if entries:
        if m.type != _MSG_APPEND:
            return f"entries in a message of type {m.type}"
        head, tail = entries[0], entries[-1]
        first, last = m.index + 1, m.index + len(entries)
        if head.index != first or tail.index != last or last > MAX_INDEX:
            return (f"entries at {head.index}..{tail.index}, expected {first}..{last} "
                    f"(at most {MAX_INDEX})")
        if head.term < m.log_term or tail.term > term:
            return (f"entry terms {head.term}..{tail.term} outside [log term {m.log_term}, "
                    f"term {term}]")
    if m.type == _MSG_SNAPSHOT:
        snap = m.snapshot.last_included
        if snap.index > MAX_INDEX or snap.term > term:
            return (f"snapshot at index {snap.index}, term {snap.term}: above the maximum "
                    f"index or the message's term {term}")
    return ""


def entries_in_order(entries: Sequence[Entry], first: int, log_term: int, term: int) -> bool:
    """Whether `entries` sit at consecutive indexes from `first`, with terms non-decreasing
    from `log_term` and at most `term` (what Log Matching lets a correct leader send).

    ~0.4 µs per entry here (attrgetter over the entries, no Python loop body)."""
    if list(map(_index, entries)) != list(range(first, first + len(entries))):
        return False
    terms = list(map(_term, entries))
    return not terms or (log_term <= terms[0] and terms[-1] <= term and terms == sorted(terms))

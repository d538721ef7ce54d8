"""The whole-node checks on hand-made histories: each compaction rule catches its breach."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dengine.kv.codec import encode_insert
from dengine.kv.etcd_check import COMPACTED
from dengine.proto import Entry
from dengine.sim.nodesim.checks import Checks, Violation


def _checks() -> Checks:
    world = SimpleNamespace(stats={}, count=lambda what, n=1: None)
    checks = Checks(world)  # type: ignore[arg-type]
    # revisions 2, 3, 4: k = a, b, c (the first entry is a no-op: revision 1 is the store's)
    entries = [Entry(index=1, term=1)]
    entries[0].payload.noop.SetInParent()
    for i, v in enumerate((b"a", b"b", b"c"), start=2):
        e = Entry(index=i, term=1)
        e.payload.command = encode_insert(b"k", v)
        entries.append(e)
    checks.on_applied(1, entries[2:])  # out of order: the replay waits for index 1
    checks.on_applied(1, entries[:2])
    return checks


def _clients(compactions: list, past: list) -> SimpleNamespace:
    return SimpleNamespace(compactions=compactions, past_reads=past)


def test_past_reads_that_hold() -> None:
    checks = _checks()
    rev = checks.oracle.revision
    assert rev == 4
    past = [(1, b"k", rev - 1, b"b", 0.0, 1.0), (1, b"k", rev, b"c", 0.0, 1.0),
            (1, b"k", rev - 2, COMPACTED, 5.0, 6.0)]
    checks._compaction(_clients([(rev - 1, 2.0, 3.0, True)], past))


@pytest.mark.parametrize(("compactions", "read", "why"), [
    ([], (1, b"k", 3, COMPACTED, 5.0, 6.0), "no compaction above it"),
    ([(4, 7.0, 8.0, True)], (1, b"k", 3, COMPACTED, 5.0, 6.0), "no compaction above it"),
    ([(4, 1.0, 8.0, False)], (1, b"k", 3, COMPACTED, 5.0, 9.0), "no compaction above it"),
    ([(4, 1.0, 2.0, True)], (1, b"k", 3, b"b", 5.0, 6.0), "was acknowledged"),
    ([], (1, b"k", 3, b"c", 5.0, 6.0), "the log says"),
    ([], (1, b"k", 1, b"a", 5.0, 6.0), "the log says"),
])
def test_each_compaction_rule_catches_its_breach(compactions: list, read: tuple,
                                                 why: str) -> None:
    checks = _checks()
    with pytest.raises(Violation, match=why):
        checks._compaction(_clients(compactions, [read]))

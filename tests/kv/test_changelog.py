"""The MVCC changelog's columns (kv/changelog.py) against a list of change tuples."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dengine.kv.changelog import Changelog

KEYS = [b"a", b"b", b"c", b"d"]
def _with_revisions(steps):
    out, rev = [], 1
    for gap, key, new, prev in steps:
        rev += gap  # a txn's changes share a revision
        out.append((rev, key, new, prev))
    return out


changes_st = st.lists(
    st.tuples(st.integers(0, 2), st.sampled_from(KEYS),
              st.none() | st.binary(max_size=3), st.none() | st.binary(max_size=3)),
    max_size=30,
).map(_with_revisions)


@given(changes_st, st.integers(0, 40), st.sampled_from(KEYS))
def test_changelog_reads_as_the_tuples(changes, rev, key):
    log = Changelog(changes)
    assert list(log) == changes and len(log) == len(changes)
    assert list(log.copy()) == changes
    above = [c for c in changes if c[0] > rev]
    assert list(log.since(rev)) == above
    # a key as of `rev`: the prev of its oldest change above it, else the live version
    mine = [c for c in above if c[1] == key]
    assert log.packed_at(key, rev, b"live") == (mine[0][3] if mine else b"live")
    want = {}
    for _, k, _, prev in above:
        if b"b" <= k < b"d":
            want.setdefault(k, prev)
    assert log.overlay(b"b", b"d", rev) == want
    assert log.last_revision() == (changes[-1][0] if changes else 0)
    log.compact(rev)
    assert list(log) == above


def test_extend_run_numbers_the_changes():
    log = Changelog([(3, b"a", b"1", None)])
    log.extend_run(4, [b"b", b"a"], [b"2", b"3"], [None, b"1"])
    log.append(6, b"b", None, b"2")
    assert list(log) == [(3, b"a", b"1", None), (4, b"b", b"2", None), (5, b"a", b"3", b"1"),
                         (6, b"b", None, b"2")]

"""kv/gosort.py sorts (its tie order is checked against etcd in test_mvcc_vs_etcd.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dengine.kv.gosort import go_sort


@given(st.lists(st.integers(0, 5), max_size=300), st.booleans())
def test_sorts_like_any_sort(targets: list[int], descending: bool) -> None:
    pairs = [(t, i) for i, t in enumerate(targets)]
    go_sort(pairs, descending)
    assert sorted(pairs) == sorted((t, i) for i, t in enumerate(targets))
    assert [t for t, _ in pairs] == sorted(targets, reverse=descending)


def test_short_lists_keep_ties_in_order() -> None:
    """Up to 12 items Go uses insertion sort: stable, also reversed."""
    pairs = [(1, "a"), (0, "b"), (1, "c"), (0, "d")]
    go_sort(pairs, descending=True)
    assert pairs == [(1, "a"), (1, "c"), (0, "b"), (0, "d")]


def test_sorted_and_reversed_inputs() -> None:
    for n in (13, 50, 51, 200, 1000):
        up = [(i, i) for i in range(n)]
        down = list(reversed(up))
        go_sort(down)
        assert down == up
        go_sort(up, descending=True)
        assert up == [(i, i) for i in reversed(range(n))]

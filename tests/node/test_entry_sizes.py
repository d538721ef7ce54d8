"""EntrySizes never under-states the bytes of entries it claims to know (hypothesis model)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dengine.node.apply import EntrySizes

# ("add", first offset back from the end, count, size per entry) | ("apply", how many)
_steps = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 5), st.integers(1, 6), st.integers(0, 50)),
    st.tuples(st.just("apply"), st.integers(1, 8), st.just(0), st.just(0)),
), max_size=40)


@given(_steps)
def test_known_sizes_bound_the_real_ones(steps):
    sizes = EntrySizes()
    real: dict[int, int] = {}  # index -> bytes of the entry now in the log
    last = applied = 0
    for kind, back, count, each in steps:
        if kind == "add":
            first = max(applied + 1, last + 1 - back)  # a follower may replace a suffix
            for i in list(real):
                if i >= first:
                    del real[i]
            for i in range(first, first + count):
                real[i] = each
            last = first + count - 1
            sizes.add(first, last, each * count)
        else:
            applied = min(last, applied + back)
            sizes.forget_to(applied)
        for lo in range(applied + 1, last + 1):  # every range of added, unapplied entries
            for hi in range(lo, last + 1):
                bound = sizes.size(lo, hi)
                assert bound is not None, f"entries {lo}..{hi} were added; size unknown"
                assert bound >= sum(real[i] for i in range(lo, hi + 1))
        assert sizes.size(last + 1, last + 1) is None

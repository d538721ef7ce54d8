"""The core's log view (stable storage + unstable tail) against a plain-list model.

The driver may step messages between `ready()` and `advance()`, so the tail can be
replaced while an earlier part of it is being persisted. Whatever the interleaving, the
view must show the model log and storage must end up equal to it.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dengine.proto import Entry
from dengine.raft import LogView, MemoryRaftLog


def _entries(first: int, terms: list[int]) -> list[Entry]:
    out = []
    for i, t in enumerate(terms, first):
        e = Entry(index=i, term=t)
        e.payload.command = b"%d@%d" % (i, t)
        out.append(e)
    return out


ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 4)),
        st.tuples(st.just("replace"), st.integers(0, 6), st.integers(1, 4)),
        st.tuples(st.just("ready"), st.just(0)),
        st.tuples(st.just("persist"), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_log_view_matches_model_under_any_interleaving(script: list[tuple]) -> None:
    storage = MemoryRaftLog()
    view = LogView(storage)
    model: list[tuple[int, int]] = []  # (index, term) of the logical log
    term = 1
    handed: list[Entry] | None = None  # the Ready being persisted (at most one)
    for op in script:
        if op[0] == "append":
            new = _entries(len(model) + 1, [term] * op[1])
            view.append(new)
            model += [(e.index, e.term) for e in new]
        elif op[0] == "replace":
            # A new leader's entries replace our tail from `at` (never below commit = 0).
            at = max(1, len(model) + 1 - op[1])
            term += 1
            new = _entries(at, [term] * op[2])
            view.truncate_and_append(new)
            model = model[: at - 1] + [(e.index, e.term) for e in new]
        elif op[0] == "ready" and handed is None:
            handed = view.take_unstable()
        elif op[0] == "persist" and handed is not None:
            if handed:
                first = handed[0].index
                if first <= storage.last_index():
                    storage.truncate_suffix(first)
                storage.append(handed)
                view.stable_to(handed[-1].index, handed[-1].term)
            handed = None
        assert view.last_index() == len(model)
        assert [(i, view.term(i)) for i in range(1, len(model) + 1)] == model
        got = view.entries(1, len(model) + 1)
        assert [(e.index, e.term) for e in got] == model
    # Drain: every remaining entry reaches storage, which then equals the model.
    for _ in range(2):
        if handed is None:
            handed = view.take_unstable()
        if handed:
            first = handed[0].index
            if first <= storage.last_index():
                storage.truncate_suffix(first)
            storage.append(handed)
            view.stable_to(handed[-1].index, handed[-1].term)
        handed = None
    assert not view.has_unsent_entries()
    assert [(i, storage.term(i)) for i in range(1, storage.last_index() + 1)] == model
    assert view.stable_last_index() == len(model)

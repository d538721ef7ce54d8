"""The linearizability checker on known-good and known-bad histories."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dengine.errors import InvalidRequest
from dengine.sim.lincheck import Op, check


def put(c: int, k: str, v: str, call: float, ret: float | None) -> Op:
    return Op(c, "put", k, value=v, call=call, ret=ret)


def get(c: int, k: str, out: str | None, call: float, ret: float | None) -> Op:
    return Op(c, "get", k, output=out, call=call, ret=ret)


def delete(c: int, k: str, call: float, ret: float | None) -> Op:
    return Op(c, "delete", k, call=call, ret=ret)


def test_empty_history_is_linearizable() -> None:
    assert check([]).ok


def test_sequential_history() -> None:
    h = [
        get(1, "a", None, 0, 1),
        put(1, "a", "x", 2, 3),
        get(2, "a", "x", 4, 5),
        delete(2, "a", 6, 7),
        get(1, "a", None, 8, 9),
    ]
    assert check(h).ok


def test_stale_read_is_caught() -> None:
    h = [
        put(1, "a", "x", 0, 1),
        put(1, "a", "y", 2, 3),
        get(2, "a", "x", 4, 5),
    ]
    r = check(h)
    assert not r.ok
    assert r.key == "a"
    assert "get('a') -> 'x'" in r.explanation


def test_lost_acknowledged_write_is_caught() -> None:
    h = [put(1, "a", "x", 0, 1), get(2, "a", None, 2, 3)]
    r = check(h)
    assert not r.ok and "get('a') -> None" in r.explanation


def test_value_never_written_is_caught() -> None:
    h = [put(1, "a", "x", 0, 10), get(2, "a", "z", 1, 2)]
    assert not check(h).ok


def test_read_of_a_deleted_value_is_caught() -> None:
    h = [put(1, "a", "x", 0, 1), delete(1, "a", 2, 3), get(2, "a", "x", 4, 5)]
    assert not check(h).ok


def test_concurrent_overlapping_ops_may_take_either_order() -> None:
    # Two overlapping writes, then reads that each see one of them: the later read
    # fixes the order, so "y" then "x" is the only legal order.
    h = [
        put(1, "a", "x", 0, 10),
        put(2, "a", "y", 1, 9),
        get(3, "a", "y", 2, 3),
        get(3, "a", "x", 11, 12),
    ]
    assert check(h).ok


def test_reads_that_flip_back_are_caught() -> None:
    # Both writes finished; reads see y, then x, then y again: no single order explains it.
    h = [
        put(1, "a", "x", 0, 10),
        put(2, "a", "y", 1, 10),
        get(3, "a", "y", 11, 12),
        get(3, "a", "x", 13, 14),
    ]
    assert not check(h).ok


def test_read_concurrent_with_write_may_see_old_or_new() -> None:
    base = [put(1, "a", "x", 0, 1), put(1, "a", "y", 2, 6)]
    assert check([*base, get(2, "a", "x", 3, 4)]).ok
    assert check([*base, get(2, "a", "y", 3, 4)]).ok


def test_two_readers_disagree_on_order_is_caught() -> None:
    # Reader 2 sees the new value, then reader 3 (called later) sees the old one.
    h = [
        put(1, "a", "x", 0, 1),
        put(1, "a", "y", 2, 20),
        get(2, "a", "y", 3, 4),
        get(3, "a", "x", 5, 6),
    ]
    assert not check(h).ok


def test_unknown_write_that_happened() -> None:
    h = [put(1, "a", "x", 0, None), get(2, "a", "x", 5, 6)]
    assert check(h).ok


def test_unknown_write_that_did_not_happen() -> None:
    h = [put(1, "a", "x", 0, None), get(2, "a", None, 5, 6), put(2, "a", "y", 7, 8),
         get(2, "a", "y", 9, 10)]
    assert check(h).ok


def test_unknown_write_cannot_take_effect_before_its_call() -> None:
    h = [get(2, "a", "x", 0, 1), put(1, "a", "x", 5, None)]
    assert not check(h).ok


def test_unknown_write_takes_effect_once() -> None:
    # x appears, is overwritten by y, then x reappears: one write cannot do that twice.
    h = [
        put(1, "a", "x", 0, None),
        get(2, "a", "x", 1, 2),
        put(2, "a", "y", 3, 4),
        get(2, "a", "x", 5, 6),
    ]
    assert not check(h).ok


def test_unknown_delete_may_or_may_not_happen() -> None:
    base = [put(1, "a", "x", 0, 1), delete(2, "a", 2, None)]
    assert check([*base, get(3, "a", "x", 5, 6)]).ok
    assert check([*base, get(3, "a", None, 5, 6)]).ok
    assert not check([*base, get(3, "a", None, 5, 6), get(3, "a", "x", 7, 8)]).ok


def test_unknown_read_is_ignored() -> None:
    h = [put(1, "a", "x", 0, 1), get(2, "a", "nonsense", 2, None)]
    assert check(h).ok


def test_keys_are_independent_and_failure_names_the_key() -> None:
    h = [
        put(1, "a", "x", 0, 1),
        get(1, "a", "x", 2, 3),
        put(1, "b", "y", 0, 1),
        get(2, "b", None, 2, 3),
    ]
    r = check(h)
    assert not r.ok and r.key == "b"


def test_initial_state() -> None:
    assert check([get(1, "a", "x", 0, 1)], initial={"a": "x"}).ok
    assert not check([get(1, "a", None, 0, 1)], initial={"a": "x"}).ok


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(InvalidRequest, match="kind"):
        check([Op(1, "cas", "a", call=0, ret=1)])  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="returns before"):
        check([put(1, "a", "x", 5, 1)])


def _atomic_history(rng: random.Random, n_ops: int, n_keys: int, n_clients: int) -> list[Op]:
    """Run a sequential map; give every op a real-time interval around its atomic point."""
    store: dict[str, str | None] = {}
    history = []
    t = 0.0
    for i in range(n_ops):
        t += rng.random()
        key = f"k{rng.randrange(n_keys)}"
        client = rng.randrange(n_clients)
        call = t - rng.random() * 3
        ret: float | None = t + rng.random() * 3
        if rng.random() < 0.05:
            ret = None
        r = rng.random()
        if r < 0.4:
            store[key] = f"v{i}"
            history.append(put(client, key, f"v{i}", call, ret))
        elif r < 0.5:
            store[key] = None
            history.append(delete(client, key, call, ret))
        else:
            history.append(get(client, key, store.get(key), call, ret))
    return history


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    n_ops=st.integers(0, 200),
    n_keys=st.integers(1, 5),
    n_clients=st.integers(1, 6),
)
def test_atomic_register_histories_are_linearizable(
    seed: int, n_ops: int, n_keys: int, n_clients: int
) -> None:
    history = _atomic_history(random.Random(seed), n_ops, n_keys, n_clients)
    result = check(history)
    assert result.ok, result.explanation


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), n_ops=st.integers(5, 150))
def test_a_read_of_an_unwritten_value_is_always_caught(seed: int, n_ops: int) -> None:
    rng = random.Random(seed)
    history = _atomic_history(rng, n_ops, 3, 4)
    victim = rng.randrange(len(history))
    op = history[victim]
    history[victim] = Op(op.client_id, "get", op.key, output="never-written", call=op.call,
                         ret=op.call + 1)
    assert not check(history).ok


def test_large_history_is_checked() -> None:
    history = _atomic_history(random.Random(7), 4000, 20, 10)
    assert check(history).ok

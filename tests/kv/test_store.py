"""kv.Store against a dict model: apply, the batch forms, results."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from kv_helpers import command_entry, config_entry

from dengine.kv import OP_CONFIG, OP_DELETE, OP_INSERT, OP_NOOP, OP_REJECTED, ApplyResult, Store
from dengine.kv.codec import decode_entry, encode_delete, encode_insert
from dengine.kv.store import results_of
from dengine.proto import Member, Membership

KEYS = st.sampled_from([b"a", b"b", b"c", b"key-d", b""])
OPS = st.one_of(
    st.tuples(st.just(OP_INSERT), KEYS, st.binary(max_size=8)),
    st.tuples(st.just(OP_DELETE), KEYS, st.just(b"")),
    st.tuples(st.sampled_from([OP_NOOP, OP_REJECTED]), st.just(b""), st.just(b"")),
)


def model_apply(model: dict[bytes, bytes], op: int, key: bytes, value: bytes) -> bool:
    if op == OP_INSERT:
        model[key] = value
    elif op == OP_DELETE:
        model.pop(key, None)
    return op != OP_REJECTED


@settings(deadline=None)
@given(st.lists(OPS, max_size=40))
def test_apply_matches_a_dict(ops):
    store, model = Store(), {}
    for op in ops:
        assert store.apply(*op) == model_apply(model, *op)
        assert store.copy() == model and len(store) == len(model)
    for key in (b"a", b"b", b"c", b"key-d", b"", b"absent"):
        assert store.get(key) == model.get(key)


@settings(deadline=None)
@given(st.lists(OPS, max_size=40), st.integers(0, 40))
def test_apply_ops_is_apply_op_by_op(ops, split):
    one, batch = Store(), Store()
    for op in ops:
        one.apply(*op)
    indexed = [(i + 1, 1, *op) for i, op in enumerate(ops)]
    assert batch.apply_ops(indexed[:split]) is None
    assert batch.apply_ops(indexed[split:]) is None
    assert batch.copy() == one.copy()


@settings(deadline=None)
@given(st.lists(st.tuples(KEYS, st.binary(max_size=8)), max_size=30))
def test_insert_all_is_inserts_in_order(pairs):
    one, batch = Store(), Store()
    for key, value in pairs:
        one.apply(OP_INSERT, key, value)
    batch.insert_all([k for k, _ in pairs], [v for _, v in pairs])
    assert batch.copy() == one.copy()


def test_config_ops_return_the_last_membership_and_leave_the_data():
    store = Store({b"k": b"v"})
    first = Membership(voters=[Member(id=1)]).SerializeToString()
    second = Membership(voters=[Member(id=2)]).SerializeToString()
    ops = [(1, 1, OP_CONFIG, b"", first), (2, 1, OP_INSERT, b"x", b"1"),
           (3, 1, OP_CONFIG, b"", second), (4, 1, 5, b"", b""), (5, 1, 6, b"", b"meta")]
    membership = store.apply_ops(ops)
    assert membership is not None and [m.id for m in membership.voters] == [2]
    assert store.copy() == {b"k": b"v", b"x": b"1"}  # storage ops (5, 6) are skipped
    assert store.apply(OP_CONFIG, b"", first) and store.copy() == {b"k": b"v", b"x": b"1"}


def test_entries_decode_and_apply():
    store = Store()
    entries = [command_entry(1, encode_insert(b"a", b"1")), config_entry(2, [1]),
               command_entry(3, b"\x01garbage"), command_entry(4, encode_delete(b"a")),
               command_entry(5, encode_insert(b"b", b"2"))]
    ok = [store.apply(*decode_entry(e)) for e in entries]
    assert ok == [True, True, False, True, True]
    assert store.copy() == {b"b": b"2"}


def test_results():
    ops = [(7, 1, OP_INSERT, b"k", b"v"), (8, 1, OP_REJECTED, b"", b""), (9, 2, OP_NOOP, b"", b"")]
    results = results_of(ops)
    assert results == [ApplyResult(7), ApplyResult(8, succeeded=False), ApplyResult(9)]
    assert results[0].succeeded and results[0].value == b""


def test_data_is_the_live_map_and_copy_is_not():
    store = Store()
    live, copy = store.data, store.copy()
    store.apply(OP_INSERT, b"k", b"v")
    assert live == {b"k": b"v"} and copy == {}

"""Linearizability checker for key-value register histories.

A history is a list of `Op`s observed by clients. `check(history)` decides whether some
total order of the operations (1) respects real time: an op that returned before another
was called comes first; (2) is legal for a map where `put` sets a key, `delete` clears it,
and `get` returns the current value. Keys are independent registers, so each key is
checked alone (per-key partitioning keeps the search small). A `cas` (compare-and-swap)
sets the key to `value` if its value is `expected` (None: absent) and says whether it did:
`output` True or False, like an etcd txn guarded by a value (or version 0) compare.

The search is Wing & Gong's, with Lowe's memoisation as in Porcupine: a depth-first walk
over call/return events that linearizes a pending op when the model allows it, caches
every (linearized set, register value) it has visited, and backtracks at the first return
event whose op it could not place.

Outcomes that are unknown (`ret=None`: a timeout, a crash) are handled as follows:

* a write with unknown outcome may have taken effect at any point after its call, or
  never. It is modelled as returning at +infinity: it can be linearized anywhere after
  its call, and placing it after every other op is the same as "never happened".
* a read with unknown outcome observed nothing and is dropped.
* a cas with unknown outcome is a write that may have happened: wherever it is placed,
  it does what the register's value then says (swap or not), and it constrains nothing.

Use it from tests as::

    result = check(history)
    assert result.ok, result.explanation

Values are compared with `==`; give every write a unique value if you can: it makes
failures easier to read and the search faster (unknown-outcome writes of a value that no
read observed are dropped up front).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from dengine.errors import InvalidRequest

OpKind = Literal["put", "get", "delete", "cas"]
_KINDS = ("put", "get", "delete", "cas")


@dataclass(frozen=True)
class Op:
    """One client operation as a client saw it.

    `value` is the written value of a put or cas; `output` is what a get returned (None =
    absent) or whether a cas swapped (True / False); `expected` is the value a cas compares
    with (None = absent). `call` and `ret` are times on one clock; `ret=None` means the
    outcome is unknown.
    Leave out ops that definitely failed (they did not take effect).
    """

    client_id: int
    kind: OpKind
    key: Hashable
    value: Any = None
    output: Any = None
    call: float = 0.0
    ret: float | None = None
    expected: Any = None

    def describe(self) -> str:
        ret = "?" if self.ret is None else f"{self.ret:g}"
        if self.kind == "put":
            what = f"put({self.key!r}, {self.value!r})"
        elif self.kind == "delete":
            what = f"delete({self.key!r})"
        elif self.kind == "cas":
            outcome = "?" if self.ret is None else self.output
            what = f"cas({self.key!r}, {self.expected!r} -> {self.value!r}) -> {outcome}"
        else:
            what = f"get({self.key!r}) -> {self.output!r}"
        return f"client {self.client_id}: {what} [{self.call:g}, {ret}]"


@dataclass(frozen=True)
class CheckResult:
    """Outcome of `check`. When not ok, `key` and `explanation` say where it broke."""

    ok: bool
    explanation: str = ""
    key: Hashable | None = None
    ops_checked: int = 0

    def __bool__(self) -> bool:
        return self.ok


_ABSENT: Any = None


def check(history: Iterable[Op], initial: Mapping[Any, Any] | None = None) -> CheckResult:
    """Check that `history` is linearizable for a key-value map that starts as `initial`.

    Raises InvalidRequest on a malformed op (unknown kind, return before call).
    """
    by_key: dict[Hashable, list[Op]] = defaultdict(list)
    count = 0
    for op in history:
        _validate(op)
        if op.kind == "get" and op.ret is None:
            continue
        by_key[op.key].append(op)
        count += 1
    initial = initial or {}
    for key in sorted(by_key, key=repr):
        failure = _check_key(key, by_key[key], initial.get(key, _ABSENT))
        if failure is not None:
            return CheckResult(False, failure, key, count)
    return CheckResult(True, "", None, count)


def _validate(op: Op) -> None:
    if op.kind not in _KINDS:
        raise InvalidRequest(f"op kind must be one of {_KINDS}, got {op.kind!r}")
    if not isinstance(op.call, int | float) or math.isnan(op.call):
        raise InvalidRequest(f"op call time must be a number: {op!r}")
    if op.ret is not None and op.ret < op.call:
        raise InvalidRequest(f"op returns before it is called: {op.describe()}")
    if op.kind == "cas" and op.ret is not None and not isinstance(op.output, bool):
        raise InvalidRequest(f"a cas that returned says True or False: {op!r}")


def _drop_unobserved_writes(ops: list[Op]) -> list[Op]:
    """Unknown-outcome puts whose value no get returned cannot matter: drop them.

    If such a put took effect, no read saw it before it was overwritten, which a search
    can always explain by placing it right before the overwrite or at the end. A cas
    observes the value it expects when it swaps, and a failed cas observes that the value
    was anything but its `expected`: with one of those on the key nothing is dropped.
    A cas of unknown outcome counts as observing its `expected` too: if it swapped and a
    get saw its value, the put it expected had to take effect before it.
    """
    if any(op.kind == "cas" and op.ret is not None and not op.output for op in ops):
        return ops
    observed = {op.output for op in ops if op.kind == "get" and op.output is not None}
    observed |= {op.expected for op in ops if op.kind == "cas"}
    return [
        op for op in ops
        if not (op.kind == "put" and op.ret is None and op.value not in observed)
    ]


class _Node:
    """One call or return event in the doubly linked event list."""

    __slots__ = ("match", "next", "op_id", "prev")

    def __init__(self, op_id: int) -> None:
        self.op_id = op_id
        self.match: _Node | None = None  # set on call events: their return event
        self.prev: _Node | None = None
        self.next: _Node | None = None


def _check_key(key: Hashable, raw_ops: list[Op], start: Any) -> str | None:
    """Return None if the key's history is linearizable, else an explanation."""
    ops = _drop_unobserved_writes(raw_ops)
    # Events sorted by time; at equal times calls come first, so touching intervals
    # count as concurrent (never a false alarm).
    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(ops):
        events.append((op.call, 0, i))
        events.append((math.inf if op.ret is None else op.ret, 1, i))
    events.sort()
    head = _Node(-1)
    tail = head
    calls: dict[int, _Node] = {}
    for _, is_ret, i in events:
        node = _Node(i)
        if is_ret:
            calls[i].match = node
        else:
            calls[i] = node
        tail.next = node
        node.prev = tail
        tail = node

    def lift(call: _Node) -> None:
        ret = call.match
        assert call.prev is not None and ret is not None and ret.prev is not None
        call.prev.next = call.next
        if call.next is not None:
            call.next.prev = call.prev
        ret.prev.next = ret.next
        if ret.next is not None:
            ret.next.prev = ret.prev

    def unlift(call: _Node) -> None:
        ret = call.match
        assert call.prev is not None and ret is not None and ret.prev is not None
        ret.prev.next = ret
        if ret.next is not None:
            ret.next.prev = ret
        call.prev.next = call
        if call.next is not None:
            call.next.prev = call

    state = start
    linearized = 0
    seen: set[tuple[int, Any]] = set()
    stack: list[tuple[_Node, Any]] = []
    best_depth = -1
    best_blocker = -1
    best_state: Any = start
    entry = head.next
    while head.next is not None:
        assert entry is not None
        if entry.match is not None:
            op = ops[entry.op_id]
            if op.kind == "get":
                legal, new_state = op.output == state, state
            elif op.kind == "cas":
                swaps = op.expected == state
                legal = op.ret is None or op.output == swaps
                new_state = op.value if swaps else state
            else:
                legal, new_state = True, (op.value if op.kind == "put" else _ABSENT)
            if legal:
                mark = linearized | (1 << entry.op_id)
                if (mark, new_state) not in seen:
                    seen.add((mark, new_state))
                    stack.append((entry, state))
                    state = new_state
                    linearized = mark
                    lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            # A return event: its op had to be placed by now and could not be.
            if len(stack) > best_depth:
                best_depth, best_blocker, best_state = len(stack), entry.op_id, state
            if not stack:
                break
            call, state = stack.pop()
            linearized &= ~(1 << call.op_id)
            unlift(call)
            entry = call.next
    else:
        return None
    blocker = ops[best_blocker]
    return (
        f"key {key!r}: not linearizable ({len(ops)} ops). The longest legal order places "
        f"{best_depth} ops, after which the value is {best_state!r} and this op cannot be "
        f"placed: {blocker.describe()}"
    )

"""The bank workload's checker on known-good and known-bad histories (its teeth)."""

from __future__ import annotations

import random

from dengine.sim.bank import (
    BankRead,
    BankSpec,
    BankWrite,
    balances_of,
    check_bank,
    plan_transfer,
)

SPEC = BankSpec(accounts=3, initial=100)


def read(bal: tuple[int | None, ...], rev: int, call: float, ret: float,
         linearizable: bool = True, client: int = 1) -> BankRead:
    return BankRead(client, call, ret, rev, bal, linearizable)


def test_spec_keys_and_range() -> None:
    assert SPEC.keys == [b"bank/acct00", b"bank/acct01", b"bank/acct02"]
    assert SPEC.range_end == b"bank0"
    assert all(SPEC.prefix <= k < SPEC.range_end for k in SPEC.keys)
    assert SPEC.total == 300
    assert balances_of(SPEC, {b"bank/acct01": b"7"}) == (None, 7, None)


def test_a_good_history() -> None:
    reads = [
        read((None, None, None), 1, 0, 1),
        read((100, 100, 100), 2, 2, 3),
        read((90, 110, 100), 3, 5, 6),
        read((100, 100, 100), 2, 5, 7, linearizable=False),  # stale but serializable
    ]
    writes = [BankWrite(2, 1, 2, 2), BankWrite(2, 3, 4, 3)]
    assert check_bank(SPEC, reads, writes, final=(90, 110, 100)) is None


def test_money_created_or_lost_is_caught() -> None:
    problem = check_bank(SPEC, [read((90, 120, 100), 3, 0, 1)], [])
    assert problem is not None and "sum to 310" in problem
    # Also in a serializable read: every state a replica applies must keep the total.
    assert check_bank(SPEC, [read((90, 100, 100), 3, 0, 1, linearizable=False)], [])
    assert check_bank(SPEC, [], [], final=(100, 100, 99)) is not None


def test_half_an_initialisation_or_a_negative_balance_is_caught() -> None:
    assert "missing" in (check_bank(SPEC, [read((100, None, 100), 2, 0, 1)], []) or "")
    assert "negative" in (check_bank(SPEC, [read((-10, 210, 100), 2, 0, 1)], []) or "")


def test_stale_linearizable_read_is_caught() -> None:
    writes = [BankWrite(2, 0, 1, 5)]
    stale = read((100, 100, 100), 4, 2, 3)
    problem = check_bank(SPEC, [stale], writes)
    assert problem is not None and "stale" in problem
    # Concurrent with the write: either revision is fine.
    assert check_bank(SPEC, [read((100, 100, 100), 4, 0.5, 3)], writes) is None
    # A serializable read may be stale.
    assert check_bank(SPEC, [read((100, 100, 100), 4, 2, 3, linearizable=False)],
                      writes) is None
    # A linearizable read bounds later ones too.
    reads = [read((90, 110, 100), 6, 0, 1), read((100, 100, 100), 5, 2, 3)]
    assert check_bank(SPEC, reads, []) is not None


def test_replicas_disagreeing_at_one_revision_is_caught() -> None:
    reads = [read((90, 110, 100), 3, 0, 1), read((110, 90, 100), 3, 0, 1, client=2)]
    problem = check_bank(SPEC, reads, [])
    assert problem is not None and "differ" in problem


def test_lost_update_from_unguarded_transfers_is_caught() -> None:
    """Two clients transfer from account 0 after reading the same state; without the
    mod_revision compares both apply, each writing its own view of account 0."""
    state = [100, 100, 100]
    rev = 2
    seen = tuple(state)
    reads: list[BankRead] = []
    for dst, amount in ((1, 10), (2, 20)):
        # Each transfer writes the balances computed from the same stale read.
        state[0] = seen[0] - amount  # type: ignore[operator]
        state[dst] = seen[dst] + amount  # type: ignore[operator]
        rev += 1
        reads.append(read(tuple(state), rev, rev, rev + 0.5))
    assert check_bank(SPEC, reads, []) is not None


def test_plan_transfer() -> None:
    rng = random.Random(1)
    for _ in range(200):
        plan = plan_transfer(rng, (5, 0, 100))
        assert plan is not None
        src, dst, amount = plan
        assert src != dst and src in (0, 2) and 1 <= amount <= (5, 0, 100)[src]
    assert plan_transfer(rng, (0, 0, 0)) is None
    assert plan_transfer(rng, (None, None, None)) is None

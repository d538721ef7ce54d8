"""The bank workload's model and checker, shared by the simulator and the real-process run.

N accounts hold `initial` each, created together by one transaction. Clients read the
accounts (a range over all of them), pick two, and move an amount from one to the other
with a transaction guarded by both accounts' `mod_revision` as read ("compare
mod_revision(a) == ma and mod_revision(b) == mb, then put a, put b"), retrying after a
failed compare with a new read. If transactions are atomic and isolated, no read of the
store ever sees money created or lost.

`check_bank` checks a recorded history:

* every read sees either no account (before the initialising transaction) or every
  account, none negative, summing to the total (atomicity and isolation: a lost update,
  a half-applied or a stale-compared transfer changes the sum);
* reads at the same revision see the same balances (replicas agree);
* a linearizable read's revision is at least the revision of every read or transaction
  that completed before it was called (no stale linearizable read);
* the final balances (read once healed) sum to the total.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class BankSpec:
    accounts: int = 5
    initial: int = 100
    prefix: bytes = b"bank/"

    @property
    def total(self) -> int:
        return self.accounts * self.initial

    @property
    def keys(self) -> list[bytes]:
        return [self.prefix + b"acct%02d" % i for i in range(self.accounts)]

    @property
    def range_end(self) -> bytes:
        """The end of the range over every account (etcd's prefix end of `prefix`)."""
        return self.prefix[:-1] + bytes([self.prefix[-1] + 1])


Balances = tuple[int | None, ...]  # per account in key order; None: absent


@dataclass(frozen=True)
class BankRead:
    """A range over every account as a client saw it."""

    client: int | str
    call: float
    ret: float
    revision: int  # the response header's revision
    balances: Balances
    linearizable: bool


@dataclass(frozen=True)
class BankWrite:
    """An acknowledged transaction that changed the store (init or transfer)."""

    client: int | str
    call: float
    ret: float
    revision: int


def balances_of(spec: BankSpec, kvs: dict[bytes, bytes]) -> Balances:
    """The balances in key order from a range's (key -> value)."""
    return tuple(None if k not in kvs else int(kvs[k]) for k in spec.keys)


def plan_transfer(rng: random.Random, balances: Balances) -> tuple[int, int, int] | None:
    """(from, to, amount) for a transfer between two accounts, None if none can pay."""
    rich = [i for i, b in enumerate(balances) if b]
    if not rich or len(balances) < 2 or any(b is None for b in balances):
        return None
    src = rng.choice(rich)
    dst = rng.choice([i for i in range(len(balances)) if i != src])
    have = balances[src]
    assert have is not None
    return src, dst, rng.randint(1, min(have, 30))


def check_read(spec: BankSpec, read: BankRead) -> str | None:
    """What is wrong with one read's balances, or None."""
    b = read.balances
    if all(x is None for x in b):
        return None  # before the accounts were created
    if any(x is None for x in b):
        return f"some accounts missing (half an initialisation): {_describe(read)}"
    if any(x is not None and x < 0 for x in b):
        return f"a negative balance: {_describe(read)}"
    got = sum(x for x in b if x is not None)
    if got != spec.total:
        return f"the accounts sum to {got}, not {spec.total}: {_describe(read)}"
    return None


def check_bank(spec: BankSpec, reads: Sequence[BankRead], writes: Sequence[BankWrite],
               final: Balances | None = None) -> str | None:
    """None if the history keeps the bank's invariants, else the first violation found."""
    at_revision: dict[int, BankRead] = {}
    for read in reads:
        problem = check_read(spec, read)
        if problem is not None:
            return problem
        other = at_revision.setdefault(read.revision, read)
        if other.balances != read.balances:
            return (f"two reads at revision {read.revision} differ: {_describe(other)} and "
                    f"{_describe(read)}")
    # Every op that completed before a linearizable read was called: its revision is a
    # lower bound for the read's.
    done = sorted([(r.ret, r.revision, _describe(r)) for r in reads if r.linearizable]
                  + [(w.ret, w.revision, f"txn of client {w.client} at revision {w.revision} "
                      f"[{w.call:g}, {w.ret:g}]") for w in writes])
    linear = sorted((r for r in reads if r.linearizable), key=lambda r: r.call)
    best = (0, "")
    i = 0
    for read in linear:
        while i < len(done) and done[i][0] < read.call:
            if done[i][1] > best[0]:
                best = (done[i][1], done[i][2])
            i += 1
        if read.revision < best[0]:
            return (f"stale linearizable read: {_describe(read)} was called after "
                    f"{best[1]} had completed")
    if final is not None and (any(x is None for x in final)
                              or sum(x for x in final if x is not None) != spec.total):
        return f"the final balances {final} do not sum to {spec.total}"
    return None


def _describe(read: BankRead) -> str:
    kind = "linearizable" if read.linearizable else "serializable"
    return (f"{kind} read of client {read.client} at revision {read.revision} "
            f"[{read.call:g}, {read.ret:g}]: {list(read.balances)}")

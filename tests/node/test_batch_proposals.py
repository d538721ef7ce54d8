"""A leader turn's key-value writes proposed as batch entries (`pending.batch_entries`),
and their results handed back command by command (`Pending.resolve`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from node_helpers import run

from dengine import Engine
from dengine.errors import Unavailable
from dengine.kv.codec import (
    OP_BATCH,
    OP_COMPACTION,
    OP_LEASE_GRANT,
    batch_ops,
    command_count,
    decode_any_command,
    encode_insert,
    encode_request,
)
from dengine.node.pending import BATCH_MAX_COMMANDS, Pending, Write, batch_entries
from dengine.proto import Entry
from dengine.storage import ApplyResult

PUT = encode_insert(b"k", b"v")
COMPACT = encode_request(OP_COMPACTION, b"\x08\x01")
GRANT = encode_request(OP_LEASE_GRANT, b"\x08\x05\x10\x07")


def _write(n: int) -> Write:
    return Write(asyncio.get_event_loop().create_future(), n, 5.0, 500)


def test_runs_of_writes_become_batches_and_other_commands_stay_alone() -> None:
    async def main() -> None:
        a, b, c = _write(2), _write(2), _write(1)
        proposals = [([PUT, PUT], a), ([COMPACT, PUT], b), ([GRANT], c)]
        entries, slots = batch_entries(proposals, [PUT, PUT, COMPACT, PUT, GRANT], 1 << 20)
        assert decode_any_command(entries[0])[0] == OP_BATCH
        assert command_count(entries[0]) == 2
        assert entries[1:] == [COMPACT, PUT, GRANT]  # a run of one is a plain entry
        assert slots == [[(a, 0), (a, 1)], [(b, 0)], [(b, 1)], [(c, 0)]]
        assert batch_entries([([PUT], a)], [PUT], 1 << 20) == ([PUT], None)

    run(main())


def test_a_batch_is_split_at_the_byte_bound_and_the_command_cap() -> None:
    async def main() -> None:
        w = _write(300)
        commands = [PUT] * 300
        entries, slots = batch_entries([(commands, w)], commands, 1 << 20)
        assert [command_count(e) for e in entries] == [BATCH_MAX_COMMANDS] * 2 + [44]
        assert [len(s) for s in slots] == [BATCH_MAX_COMMANDS] * 2 + [44]
        entries, _ = batch_entries([(commands, w)], commands, 10 * (len(PUT) + 6))
        assert all(len(e) <= 10 * (len(PUT) + 6) + 4 for e in entries)
        assert sum(command_count(e) for e in entries) == 300
        assert [op for e in entries for op, _, _ in batch_ops(decode_any_command(e)[2])] \
            == [1] * 300

    run(main())


def test_a_batch_entry_resolves_each_write_with_its_own_results() -> None:
    async def main() -> None:
        pending = Pending(0.01)
        a, b = _write(1), _write(2)
        pending.register_entries([], [[(a, 0), (b, 0), (b, 1)], [(b, 0)]], 3, 7)
        assert pending.waiting() == 2
        results = [ApplyResult(7, revision=r) for r in (2, 3, 4)] + [ApplyResult(8)]
        pending.resolve([Entry(index=7, term=3), Entry(index=8, term=4)], results)
        assert a.future.result() == [results[0]]
        assert b.future.result() == [results[1], results[2]]
        assert pending.waiting() == 0

    run(main())


def test_a_batch_entry_replaced_by_another_leaders_is_a_definite_failure() -> None:
    async def main() -> None:
        pending = Pending(0.01)
        a, b = _write(1), _write(1)
        pending.register_entries([], [[(a, 0), (b, 0)]], 3, 7)
        pending.resolve([Entry(index=7, term=4)], [ApplyResult(7)])
        for w in (a, b):
            with pytest.raises(Unavailable, match="leadership changed"):
                w.future.result()
        assert pending.waiting() == 0

    run(main())


def test_concurrent_writes_share_one_entry_each_with_its_own_revision(tmp_path: Path) -> None:
    async def main() -> None:
        async with await Engine.start(str(tmp_path), tick_ms=5, election_timeout_ms=50,
                                      heartbeat_interval_ms=15, batch_writes=True) as engine:
            await engine.wait_ready()
            before = engine.status().commit_index
            results = await asyncio.gather(*(engine.put(b"k%d" % i, b"v") for i in range(20)))
            assert engine.status().commit_index - before < 20  # fewer entries than writes
            assert sorted(r.revision for r in results) == list(range(2, 22))
            assert [(await engine.get_kv(b"k%d" % i)).mod_revision for i in range(20)] == [
                r.revision for r in results]

    run(main())


def test_writes_are_batched_by_default_and_not_when_switched_off(tmp_path: Path) -> None:
    """On by default (a lone node has no peer of an older release to wait for);
    `batch_writes=False`: one entry per write."""
    async def main() -> None:
        for batch, data_dir in ((None, tmp_path / "a"), (False, tmp_path / "b")):
            settings = {} if batch is None else {"batch_writes": batch}
            async with await Engine.start(str(data_dir), tick_ms=5, election_timeout_ms=50,
                                          heartbeat_interval_ms=15, **settings) as engine:
                await engine.wait_ready()
                before = engine.status().commit_index
                await asyncio.gather(*(engine.put(b"k%d" % i, b"v") for i in range(20)))
                entries = engine.status().commit_index - before
                assert entries >= 20 if batch is False else entries < 20

    run(main())


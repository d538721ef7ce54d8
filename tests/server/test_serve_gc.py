"""`dengine serve` tunes the cyclic garbage collector (process.GC_THRESHOLDS, and what the
imports made frozen); a process embedding the engine keeps its own settings."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from dengine.config import NodeConfig
from dengine.server import process


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_tune_gc_sets_thresholds_and_freezes(restore_gc: None) -> None:
    gc.unfreeze()
    process.tune_gc()
    assert gc.get_threshold() == process.GC_THRESHOLDS
    assert gc.get_freeze_count() > 0


def test_run_server_tunes_gc_before_serving(monkeypatch: pytest.MonkeyPatch,
                                            restore_gc: None) -> None:
    seen: list[tuple[int, ...]] = []

    async def serve(config: Any) -> None:
        seen.append(gc.get_threshold())

    monkeypatch.setattr(process, "serve", serve)
    monkeypatch.setattr(process, "configure_logs", lambda *args: None)
    assert process.run_server(NodeConfig(node_id=1)) == 0
    assert seen == [process.GC_THRESHOLDS]

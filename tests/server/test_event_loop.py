"""`dengine serve` runs on uvloop when it is installed, unless told otherwise."""

from __future__ import annotations

import pytest

from dengine.server import process

uvloop = pytest.importorskip("uvloop")


def test_serve_uses_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DENGINE_EVENT_LOOP", raising=False)
    assert process._loop_factory() is uvloop.new_event_loop


def test_asyncio_loop_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DENGINE_EVENT_LOOP", "asyncio")
    assert process._loop_factory() is None

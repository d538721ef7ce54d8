"""Engine, Client and SyncClient are one API (dengine.api), with one set of result types.

`mypy src` checks the conformance statically (dengine/__init__.py); these tests check the
signatures at run time too, and that the result types are shared, not look-alikes."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from client_fakes import free_port

import dengine
from dengine import api
from dengine.client import Client, SyncClient
from dengine.node import Engine

API_METHODS = ["put", "delete", "write", "get", "get_many", "leader", "get_kv", "range",
               "delete_range", "txn", "compare_and_swap", "compact", "lease_grant",
               "lease_revoke", "lease_keepalive_once", "lease_time_to_live", "leases"]
# Calls that return an async iterator (SyncClient: a blocking one), not a coroutine.
ITERATOR_METHODS = ["leader_changes", "membership_changes", "watch"]


def _params(fn: object) -> list[tuple[str, object, object]]:
    sig = inspect.signature(fn)  # type: ignore[arg-type]
    return [(p.name, p.kind, p.default) for p in sig.parameters.values() if p.name != "self"]


def test_the_protocols_list_the_api_methods() -> None:
    protocol_methods = {n for n in vars(api.ClientApi) if not n.startswith("_")}
    assert protocol_methods == set(API_METHODS + ITERATOR_METHODS)
    assert {n for n in vars(api.SyncClientApi) if not n.startswith("_")} == set(
        API_METHODS + ITERATOR_METHODS)


@pytest.mark.parametrize("cls", [Engine, Client, SyncClient])
@pytest.mark.parametrize("name", ITERATOR_METHODS)
def test_front_doors_have_the_iterator_calls(cls: type, name: str) -> None:
    method = getattr(cls, name)
    assert not inspect.iscoroutinefunction(method)
    assert _params(method) == _params(getattr(api.ClientApi, name))


@pytest.mark.parametrize("cls", [Engine, Client])
@pytest.mark.parametrize("name", API_METHODS)
def test_async_front_doors_have_the_protocols_signatures(cls: type, name: str) -> None:
    method = getattr(cls, name)
    assert inspect.iscoroutinefunction(method)
    assert _params(method) == _params(getattr(api.ClientApi, name))


@pytest.mark.parametrize("name", API_METHODS)
def test_sync_client_has_the_same_signatures_blocking(name: str) -> None:
    method = getattr(SyncClient, name)
    assert not inspect.iscoroutinefunction(method)
    assert _params(method) == _params(getattr(api.SyncClientApi, name))
    assert _params(method) == _params(getattr(api.ClientApi, name))


def test_result_types_are_shared() -> None:
    import dengine.client as client_pkg
    import dengine.node as node_pkg
    import dengine.storage as storage_pkg

    for name in ("NodeStatus", "MemberInfo"):
        assert getattr(node_pkg, name) is getattr(api, name) is getattr(client_pkg, name)
    assert client_pkg.WriteResult is api.WriteResult is storage_pkg.ApplyResult
    assert client_pkg.Leader is api.Leader is dengine.Leader


def test_mypy_rejects_a_front_door_that_does_not_conform(tmp_path: Path) -> None:
    """The static check has teeth: a class missing one call, or with another signature,
    is not a ClientApi."""
    pytest.importorskip("mypy")
    src = tmp_path / "probe.py"
    src.write_text(textwrap.dedent("""
        from dengine.api import ClientApi, Leader, Key

        class Partial:
            async def put(self, key: Key, value: Key, *, timeout: float | None = None
                          ) -> None: ...
            async def leader(self, *, timeout: float | None = None) -> Leader: ...

        def conforms(p: Partial) -> ClientApi:
            return p
    """))
    out = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental",
                          "--follow-imports=silent", str(src)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "ClientApi" in out.stdout, out.stdout


def test_engine_leader_and_status_use_the_shared_types(tmp_path: Path) -> None:
    import asyncio

    async def main() -> None:
        engine = await Engine.start(str(tmp_path / "d"), tick_ms=5, election_timeout_ms=50,
                                    heartbeat_interval_ms=15, clock_drift_ms=10,
                                    listen_peer=f"127.0.0.1:{free_port()}",
                                    listen_client="127.0.0.1:9999")
        try:
            leader = await engine.leader(timeout=10)
            st = engine.status()
            assert leader == api.Leader(1, "127.0.0.1:9999", st.term)
            assert isinstance(st, api.NodeStatus) and st.leader_address == "127.0.0.1:9999"
            assert list(st.voters) == [1]
            [result] = await engine.write([dengine.client.insert(b"k", b"v")])
            assert isinstance(result, api.WriteResult) and result.succeeded
        finally:
            await engine.stop()

    asyncio.run(main())

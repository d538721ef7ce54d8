"""Some layering rules of docs/architecture.md, checked on the source files' imports."""

from __future__ import annotations

import ast
from pathlib import Path

import dengine

SRC = Path(dengine.__file__).parent


def _imports(package: str) -> dict[str, set[str]]:
    """Every module a file of `package` imports (top-level and function-level imports)."""
    out: dict[str, set[str]] = {}
    for path in sorted((SRC / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
        out[str(path.relative_to(SRC))] = names
    return out


def _offending(package: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    return {
        path: sorted(n for n in names if n == "socket" or n.startswith(forbidden))
        for path, names in _imports(package).items()
        if any(n.startswith(forbidden) for n in names)
    }


def test_proto_holds_formats_only() -> None:
    """No sockets, event loop or upper layers in dengine.proto."""
    assert _offending("proto", ("asyncio", "socket", "dengine.client", "dengine.server",
                                "dengine.node", "dengine.storage", "dengine.netutil")) == {}


def test_client_imports_no_server_side_code() -> None:
    """A remote client installs without the node; the server process may use the client
    (a joining node asks the cluster through it), not the other way round."""
    assert _offending("client", ("dengine.server", "dengine.node")) == {}


def test_recipes_use_the_api_only() -> None:
    """The recipes are written against dengine's API (Engine, Client, SyncClient alike)."""
    assert _offending("recipes", ("socket", "grpc", "dengine.node", "dengine.server",
                                  "dengine.client", "dengine.storage")) == {}


def test_storage_knows_nothing_of_the_network() -> None:
    assert _offending("storage", ("asyncio", "socket", "grpc", "dengine.node",
                                  "dengine.server", "dengine.client", "dengine.netutil")) == {}


def test_raft_is_sans_io() -> None:
    """The consensus core owns its log contract (raft/storage.py) and touches no I/O."""
    assert _offending("raft", ("asyncio", "socket", "os", "io", "threading", "time",
                               "pathlib", "subprocess", "shutil", "tempfile", "grpc",
                               "dengine.storage", "dengine.node", "dengine.server",
                               "dengine.client", "dengine.netutil")) == {}


def test_rooms_stay_readable() -> None:
    """Hand-written modules stay under 700 lines and classes under 40 methods (issue 15):
    a concern that outgrows that becomes a module of its own."""
    too_big = []
    for path in sorted(SRC.rglob("*.py")):
        if "_pb2" in path.name:
            continue
        text = path.read_text()
        if text.count("\n") > 700:
            too_big.append(f"{path.relative_to(SRC)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                methods = sum(isinstance(b, ast.FunctionDef | ast.AsyncFunctionDef)
                              for b in node.body)
                if methods > 40:
                    too_big.append(f"{path.relative_to(SRC)}: {node.name} has {methods} methods")
    assert too_big == []

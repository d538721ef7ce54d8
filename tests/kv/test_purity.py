"""dengine.kv is pure: it imports no I/O, concurrency or network module."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import dengine.kv

KV_DIR = pathlib.Path(dengine.kv.__file__).parent
ALLOWED = {"__future__", "array", "collections", "dataclasses", "enum", "heapq", "itertools", "struct",
           "base64", "bisect", "hashlib", "hmac",  # auth: password hashes (pure computation)
           "crc32c",  # hashkv: etcd's HashKV (pure computation)
           "typing",
           "sortedcontainers",
           "google", "dengine"}
ALLOWED_DENGINE = ("dengine.api", "dengine.errors", "dengine.kv", "dengine.proto")


def imported_modules(path: pathlib.Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import"
            out.add(node.module or "")
    return out


def test_kv_sources_import_only_pure_modules():
    files = sorted(KV_DIR.glob("*.py"))
    assert files
    for path in files:
        for module in imported_modules(path):
            assert module.split(".")[0] in ALLOWED, f"{path.name} imports {module}"
            if module.startswith("dengine"):
                assert module.startswith(ALLOWED_DENGINE), f"{path.name} imports {module}"
            if module.startswith("google"):
                assert module == "google.protobuf.message", f"{path.name} imports {module}"


def test_importing_kv_loads_no_io_module():
    """Beyond what the generated protobuf modules load (protobuf's runtime imports
    threading), importing dengine.kv loads nothing that does I/O or concurrency."""
    code = (
        "import sys; import dengine.proto; before = set(sys.modules); import dengine.kv; "
        "bad = {'asyncio', 'socket', 'threading', 'grpc', 'selectors', 'subprocess', 'io',"
        " 'os', 'dengine.storage', 'dengine.node', 'dengine.server', 'dengine.client'}; "
        "print(sorted(bad & (set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"

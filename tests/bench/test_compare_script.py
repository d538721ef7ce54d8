"""bench/compare.py without running any cluster: options and the side-by-side tables."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "compare.py"


@pytest.fixture(scope="module")
def compare() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_compare", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_compare"] = module
    spec.loader.exec_module(module)
    return module


def row(system: str, workload: str, concurrency: int, ops_s: float) -> dict[str, Any]:
    return {"system": system, "workload": workload, "concurrency": concurrency,
            "throughput_ops_s": ops_s, "errors": 0,
            "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 3.0, "p999": 4.0}}


def test_ratios_and_missing_workloads(compare: ModuleType) -> None:
    data = {"rows": [
        row("dengine", "put", 1, 300.0), row("etcd", "put", 1, 100.0),
        row("pysyncobj", "put", 1, 600.0),
        row("dengine", "get-linearizable", 1, 50.0), row("etcd", "get-linearizable", 1, 200.0),
    ]}
    text = compare.markdown_table(data)
    lines = text.splitlines()
    assert lines[0] == ("| workload | in flight | dengine | etcd | pysyncobj | dengine ÷ etcd | "
                        "dengine ÷ pysyncobj |")
    assert lines[2].endswith("| 3.00x | 0.50x |")
    assert lines[3].endswith("| n/a | 0.25x | n/a |")  # PySyncObj has no linearizable read


@pytest.mark.parametrize("args", [
    ["--systems", "dengine,zookeeper"], ["--concurrency", "0"], ["--workloads", "scan"],
    ["--key-size", "2"], ["--duration", "0"],
])
def test_bad_options_exit_with_a_message(compare: ModuleType, args: list[str],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        compare.parse_args(args)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_defaults_cover_every_system_and_level(compare: ModuleType) -> None:
    args = compare.parse_args([])
    assert args.systems == list(compare.SYSTEMS)
    assert args.concurrency == [1, 16, 64, 256]
    assert args.workloads == ["put", "get-linearizable", "get-serializable"]

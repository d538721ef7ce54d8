"""bench/etcd_perf.py reads etcdctl's `check perf` verdicts (the bench itself is not in CI)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "etcd_perf.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("etcd_perf", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parses_pass_and_fail() -> None:
    parse = load().parse_check_perf
    passed = (" 60 / 60 Booooo! 100.00% 1m0s\rPASS: Throughput is 147 writes/s\n"
              "PASS: Slowest request took 0.247948s\nPASS: Stddev is 0.017304s\nPASS\n")
    r = parse(passed, 0)
    assert (r["throughput"], r["slowest_s"], r["stddev_s"], r["verdict"]) == (
        147, 0.247948, 0.017304, "PASS")
    failed = ("FAIL: Throughput too low: 6808 writes/s\n"
              "Slowest request took too long: 0.912s\nStddev too high: 0.2s\nFAIL\n")
    r = parse(failed, 1)
    assert (r["throughput"], r["throughput_ok"], r["slowest_s"], r["stddev_s"],
            r["verdict"]) == (6808, False, 0.912, 0.2, "FAIL")
    r = parse('{"level":"warn"}\nError: rpc error: code = Unimplemented desc = x\n', 1)
    assert r["verdict"] == "ERROR" and r["error"].startswith("Error: rpc error")

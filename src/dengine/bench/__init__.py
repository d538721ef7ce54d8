"""Benchmarks behind `dengine bench ...` (not tests: they print numbers, never assert)."""

"""Deterministic cluster simulator and linearizability checker (`python -m dengine.sim`)."""

"""The read consistency levels: their names (API, CLI, config) and wire values (client.proto).

The one definition; the engine, the server, the clients, the CLI and the benchmarks use
these names.
"""

from __future__ import annotations

import enum
from typing import Any

from dengine.errors import InvalidRequest
from dengine.proto.client_pb2 import ReadConsistency


class Consistency(enum.StrEnum):
    """How fresh a read must be.

    LINEARIZABLE: confirmed with a quorum (ReadIndex) — sees every write acknowledged
    before the read started. LEASE: the leader answers from its lease without a quorum
    round (relies on bounded clock drift; a follower falls back to ReadIndex). EVENTUAL:
    this node's state machine as it is, possibly stale.
    """

    LINEARIZABLE = "linearizable"
    LEASE = "lease"
    EVENTUAL = "eventual"


LINEARIZABLE = Consistency.LINEARIZABLE.value
LEASE = Consistency.LEASE.value
EVENTUAL = Consistency.EVENTUAL.value
LEVELS: tuple[str, ...] = tuple(c.value for c in Consistency)  # strongest first

# name <-> client.proto's ReadConsistency
WIRE_LEVELS: dict[str, int] = {
    LINEARIZABLE: ReadConsistency.READ_CONSISTENCY_LINEARIZABLE,
    LEASE: ReadConsistency.READ_CONSISTENCY_LEASE,
    EVENTUAL: ReadConsistency.READ_CONSISTENCY_EVENTUAL,
}
WIRE_NAMES: dict[int, str] = {wire: name for name, wire in WIRE_LEVELS.items()}

_BY_NAME = {name: name for name in LEVELS}  # a StrEnum member hashes as its value


def consistency_name(value: Any) -> str:
    """The level's name for "linearizable" | "lease" | "eventual" (any case, or a
    `Consistency`); InvalidRequest otherwise."""
    level = _BY_NAME.get(value) if isinstance(value, str) else None
    if level is None and isinstance(value, str):
        level = _BY_NAME.get(value.lower())
    if level is None:
        raise InvalidRequest(
            f"unknown consistency level {value!r} (expected {', '.join(LEVELS)})"
        )
    return level


def consistency_from_wire(value: int) -> str:
    """The level's name for a ReadConsistency wire value; InvalidRequest otherwise."""
    name = WIRE_NAMES.get(value)
    if name is None:
        known = ", ".join(f"{wire}={name}" for wire, name in WIRE_NAMES.items())
        raise InvalidRequest(f"unknown consistency level {value} (expected {known})")
    return name


def consistency_to_wire(value: Any) -> int:
    """The ReadConsistency wire value of a level name; InvalidRequest otherwise."""
    return WIRE_LEVELS[consistency_name(value)]

"""Majority arithmetic over voters only: learners never count toward commit or reads."""

from __future__ import annotations

from collections.abc import Collection, Mapping


def quorum_size(voters: Collection[int]) -> int:
    """Smallest number of voters that forms a majority."""
    return len(voters) // 2 + 1


def quorum_value(voters: Collection[int], values: Mapping[int, int]) -> int:
    """The largest value that a majority of `voters` has reached (0 when there are no voters).

    Used for the commit index (values = match indexes) and for the acknowledged
    heartbeat round (values = highest round each voter acknowledged). Ids missing from
    `values` count as 0.
    """
    if not voters:
        return 0
    ranked = sorted((values.get(v, 0) for v in voters), reverse=True)
    return ranked[len(voters) // 2]


def has_quorum(voters: Collection[int], yes: Collection[int]) -> bool:
    """Whether the voters in `yes` form a majority of `voters`."""
    return bool(voters) and sum(1 for v in voters if v in yes) >= quorum_size(voters)

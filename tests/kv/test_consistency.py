"""The consistency levels: one list of names, one wire mapping."""

from __future__ import annotations

import pytest

from dengine.errors import InvalidRequest
from dengine.kv import LEVELS, Consistency, consistency_from_wire, consistency_name
from dengine.kv.consistency import WIRE_LEVELS, WIRE_NAMES, consistency_to_wire
from dengine.proto.client_pb2 import ReadConsistency


def test_names_and_wire_values():
    assert LEVELS == ("linearizable", "lease", "eventual")
    assert [c.value for c in Consistency] == list(LEVELS)
    assert set(WIRE_LEVELS) == set(LEVELS)
    assert sorted(WIRE_LEVELS.values()) == sorted(ReadConsistency.values())
    for name in LEVELS:
        assert consistency_from_wire(consistency_to_wire(name)) == name
        assert WIRE_NAMES[WIRE_LEVELS[name]] == name


def test_names_are_accepted_as_str_enum_or_any_case():
    assert consistency_name(Consistency.LEASE) == "lease"
    assert consistency_name("EVENTUAL") == "eventual"
    assert type(consistency_name(Consistency.LEASE)) is str


@pytest.mark.parametrize("value", ["strong", "", None, 1])
def test_unknown_names(value):
    with pytest.raises(InvalidRequest) as e:
        consistency_name(value)
    assert e.value.message == (
        f"unknown consistency level {value!r} (expected linearizable, lease, eventual)"
    )


def test_unknown_wire_value():
    with pytest.raises(InvalidRequest) as e:
        consistency_from_wire(7)
    assert e.value.message == (
        "unknown consistency level 7 (expected 0=linearizable, 1=lease, 2=eventual)"
    )

"""A key's packed version: etcd's metadata (`<qqqq>` create_revision, mod_revision,
version, lease) followed by the value; shared by the store and its transactions."""

from __future__ import annotations

import struct

_META = struct.Struct("<qqqq")  # create_revision, mod_revision, version, lease
META_SIZE = _META.size
pack_meta = _META.pack
unpack_meta = _META.unpack_from


def range_end(end: bytes) -> bytes | None:
    """etcd's mkGteRange: "\\0" means every key >= key (None here)."""
    return None if end == b"\x00" else end

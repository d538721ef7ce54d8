"""The commands of `Client.write` (a batch of puts and deletes in one request)."""

from __future__ import annotations

from dengine.api import Key
from dengine.kv.validate import as_bytes
from dengine.proto import WriteCommand


def insert(key: Key, value: Key) -> WriteCommand:
    """A put command for `Client.write`."""
    return WriteCommand(insert=WriteCommand.Insert(key=as_bytes(key),
                                                   value=as_bytes(value, "value")))


def delete(key: Key) -> WriteCommand:
    """A delete command for `Client.write`."""
    return WriteCommand(delete=WriteCommand.Delete(key=as_bytes(key)))

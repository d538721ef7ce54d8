"""Saving a backup of a cluster member's store: etcd's `Maintenance/Snapshot` stream
written to a file (`dengine snapshot save`, or `await save_snapshot(client, path)`).

The stream is written to `PATH.part`, checked as etcdctl checks it (its size is a
multiple of 512 plus 32) and against its trailing SHA-256, and renamed to PATH only when
whole, so PATH is never a partial backup. The endpoints are tried in order until one
streams. (What the content is, a dengine backup file, is `dengine.storage.backup`'s.)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from dengine.client.client import Client
from dengine.errors import DengineError, StorageError, Unavailable, kv_error
from dengine.proto.etcd import rpc_pb2

_METHOD = "/etcdserverpb.Maintenance/Snapshot"

# on_progress(bytes received, total bytes expected)
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SavedSnapshot:
    path: str
    endpoint: str
    size: int  # bytes
    sha256: str  # hex, the trailing one
    revision: int  # the store's revision in the responses' header


async def save_snapshot(client: Client, path: str, on_progress: Progress | None = None,
                        endpoint: str | None = None) -> SavedSnapshot:
    """Stream a backup from `endpoint` (default: the first of the client's endpoints that
    answers) into `path`."""
    errors: list[str] = []
    for addr in [endpoint] if endpoint else client.endpoints:
        try:
            return await _save_from(client, addr, path, on_progress)
        except _Unreachable as e:
            errors.append(str(e))
    raise Unavailable("; ".join(errors))


class _Unreachable(Exception):
    """Nothing was received from that endpoint: try the next one."""


async def _save_from(client: Client, addr: str, path: str,
                     on_progress: Progress | None) -> SavedSnapshot:
    call = client.grpc_channel(addr).unary_stream(
        _METHOD, request_serializer=None,
        response_deserializer=rpc_pb2.SnapshotResponse.FromString)
    part = path + ".part"
    received = revision = 0
    try:
        with open(part, "wb") as f:
            try:
                try:
                    metadata = await client.grpc_metadata(addr)
                except Unavailable as e:
                    raise _Unreachable(str(e)) from None
                async for resp in call(rpc_pb2.SnapshotRequest().SerializeToString(),
                                       metadata=metadata):
                    f.write(resp.blob)
                    received += len(resp.blob)
                    revision = resp.header.revision or revision
                    if on_progress is not None:
                        on_progress(received, received + resp.remaining_bytes)
            except grpc.aio.AioRpcError as e:
                if received == 0 and e.code() == grpc.StatusCode.UNAVAILABLE:
                    reason = (e.details() or "").rsplit(": ", 1)[-1].rstrip("]")
                    raise _Unreachable(f"cannot connect to {addr}: {reason}") from None
                if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                    raise DengineError(f"{addr} does not serve Maintenance/Snapshot") from None
                if received:
                    raise StorageError(f"{addr}: the snapshot stream broke after {received} "
                                       f"bytes ({e.code().name}: {e.details()}); nothing "
                                       f"saved") from None
                raise kv_error(e.code().name, e.details() or "") from None
            f.flush()
            os.fsync(f.fileno())
        sha256 = _check(part, received)
        os.replace(part, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise
    return SavedSnapshot(path, addr, received, sha256, revision)


def _check(path: str, size: int) -> str:
    """etcdctl's check (size modulo 512 is 32), then the trailing SHA-256; its hex."""
    if size % 512 != 32:
        raise StorageError(f"{path}: sha256 checksum not found ({size} bytes: not a multiple "
                           "of 512 plus 32); nothing saved")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        remaining = size - 32
        while remaining > 0:
            block = f.read(min(1 << 20, remaining))
            if not block:
                break
            digest.update(block)
            remaining -= len(block)
        trailer = f.read(32)
    if digest.digest() != trailer:
        raise StorageError(f"{path}: the stream's SHA-256 {digest.hexdigest()} does not match "
                           f"its trailer {trailer.hex()}; nothing saved")
    return trailer.hex()

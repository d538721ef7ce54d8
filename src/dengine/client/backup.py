"""Saving a backup of a cluster member's store: etcd's `Maintenance/Snapshot` stream
written to a file (`dengine snapshot save`, or `await save_snapshot(client, path)`).

The stream is written to `PATH.part`, checked (`dengine.storage.backup.backup_info`: the
size rule and the trailing SHA-256 of the content) and renamed to PATH only when whole, so
PATH is never a partial backup. The endpoints are tried in order until one streams.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from dengine.client.client import Client
from dengine.errors import DengineError, StorageError, Unavailable, kv_error
from dengine.proto.etcd import rpc_pb2
from dengine.storage.backup import BackupInfo, backup_info

_METHOD = "/etcdserverpb.Maintenance/Snapshot"

# on_progress(bytes received, total bytes expected)
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SavedSnapshot:
    path: str
    endpoint: str
    info: BackupInfo


async def save_snapshot(client: Client, path: str, on_progress: Progress | None = None,
                        endpoint: str | None = None) -> SavedSnapshot:
    """Stream a backup from `endpoint` (default: the first of the client's endpoints that
    answers) into `path`."""
    errors: list[str] = []
    for addr in [endpoint] if endpoint else client.endpoints:
        try:
            info = await _save_from(client, addr, path, on_progress)
        except _Unreachable as e:
            errors.append(str(e))
            continue
        return SavedSnapshot(path, addr, info)
    raise Unavailable("; ".join(errors))


class _Unreachable(Exception):
    """Nothing was received from that endpoint: try the next one."""


async def _save_from(client: Client, addr: str, path: str,
                     on_progress: Progress | None) -> BackupInfo:
    call = client.grpc_channel(addr).unary_stream(
        _METHOD, request_serializer=None,
        response_deserializer=rpc_pb2.SnapshotResponse.FromString)
    part = path + ".part"
    received = 0
    try:
        with open(part, "wb") as f:
            try:
                async for resp in call(rpc_pb2.SnapshotRequest().SerializeToString()):
                    f.write(resp.blob)
                    received += len(resp.blob)
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
        info = backup_info(part)
        os.replace(part, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise
    return info

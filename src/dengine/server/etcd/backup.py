"""etcd's `etcdserverpb.Maintenance/Snapshot` on a node: a backup of its store, streamed.

As etcd streams it: `SnapshotResponse` messages of 64 KiB blobs with `remaining_bytes`,
the last blob the 32-byte SHA-256 of all the bytes before it, the whole a multiple of 512
bytes plus 32 (what `etcdctl snapshot save` checks). The bytes are a dengine backup file
(`dengine.storage.backup`): `dengine snapshot status|restore` read it, etcd's bbolt tools
do not.

The store is copied at one point of this member's applied state (as etcd's snapshot of its
own backend: not a linearizable read), on the loop (a dict copy, ~80 ms per million keys),
then encoded and hashed in a worker thread into DATA_DIR/snapshots/tmp-backup-N (removed
when the stream ends; a leftover from a crash is removed at the next start).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from dengine.kv import EVENTUAL
from dengine.proto import LogId, Member, Membership
from dengine.proto.etcd import rpc_pb2
from dengine.server.etcd.checks import decode
from dengine.server.etcd.kv import EtcdBase
from dengine.storage.backup import BackupBody
from dengine.storage.state_machine import image_of

BLOB_BYTES = 64 * 1024
_SEQUENCE = itertools.count(1)


class BackupService(EtcdBase):
    """`etcdserverpb.Maintenance/Snapshot`."""

    def generic_handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler("etcdserverpb.Maintenance", {
            "Snapshot": grpc.unary_stream_rpc_method_handler(
                self.snapshot, request_deserializer=None, response_serializer=None)})

    async def snapshot(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        body: BackupBody | None = None
        try:
            decode(rpc_pb2.SnapshotRequest, request)
            await self.gate.maintenance_admin(context)
            st = self._engine.status()
            image = await self._engine.read_query(image_of, EVENTUAL)
            membership = Membership(
                voters=[Member(id=i, address=a) for i, a in sorted(st.voters.items())],
                learners=[Member(id=i, address=a) for i, a in sorted(st.learners.items())])
            last = LogId(index=st.applied_index, term=st.term)
            work = Path(self._config.data_dir) / "snapshots" / f"tmp-backup-{next(_SEQUENCE)}"
            body = await asyncio.to_thread(BackupBody, work, image, last, membership)
            chunks = body.chunks(BLOB_BYTES)
            remaining = body.size
            while (blob := await asyncio.to_thread(next, chunks, None)) is not None:
                remaining -= len(blob)
                resp = rpc_pb2.SnapshotResponse(remaining_bytes=remaining, blob=blob)
                self.stamp(resp.header, body.revision)
                yield resp.SerializeToString()
        except Exception as exc:
            await self.fail(context, exc)
        finally:
            if body is not None:
                await asyncio.to_thread(body.close)

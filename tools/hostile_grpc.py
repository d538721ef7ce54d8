"""Hostile inputs on a node's gRPC port (etcd's API and dengine's own service), for
tools/hostile_inputs.py (`--only grpc-size,grpc-garbage,grpc-amplify,grpc-nested,
grpc-partial`). Each returns one line of what the node answered.

grpc-partial speaks HTTP/2 by hand (no gRPC library sends half a message): streams that
announce an 8 MiB message and send as much of it as the server's flow control lets them,
then nothing: what a slow or stalled sender can make the server hold.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections import Counter
from typing import Any

import grpc

from dengine.proto.etcd import rpc_pb2

MiB = 1024 * 1024
_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


async def _call(channel: grpc.aio.Channel, path: str, body: bytes, timeout: float = 30
                ) -> tuple[str, str, int]:
    """(status code name, details, response bytes) of a raw unary call."""
    try:
        answer = await channel.unary_unary(path)(body, timeout=timeout)
        return "OK", "", len(answer)
    except grpc.aio.AioRpcError as e:
        return e.code().name, (e.details() or "")[:90], 0


async def attack_size(addr: str) -> str:
    """Put messages of 3, 9 and 100 MiB to etcd's KV (etcd: ResourceExhausted above
    max-request-bytes + 512 KiB)."""
    out = []
    async with grpc.aio.insecure_channel(addr, options=_OPTIONS) as ch:
        for size in (3 * MiB, 9 * MiB, 100 * MiB):
            body = rpc_pb2.PutRequest(key=b"big", value=b"x" * size).SerializeToString()
            code, details, _ = await _call(ch, "/etcdserverpb.KV/Put", body)
            out.append(f"{size // MiB} MiB: {code} {details!r}")
    return "; ".join(out)


GARBAGE = [b"\xff" * 7, b"\x0a\xff\xff\xff\xff\x0f", b"\x08" + b"\xff" * 10 + b"\x01",
           b"\x12\x05ab", bytes(range(256)) * 64]
METHODS = ["/etcdserverpb.KV/Range", "/etcdserverpb.KV/Put", "/etcdserverpb.KV/DeleteRange",
           "/etcdserverpb.KV/Txn", "/etcdserverpb.KV/Compact",
           "/etcdserverpb.Maintenance/Status", "/etcdserverpb.Cluster/MemberList",
           "/dengine.RaftClientService/Write", "/dengine.RaftClientService/Read",
           "/dengine.RaftClientService/KvRead", "/dengine.RaftClientService/Status"]


async def attack_garbage(addr: str) -> str:
    """Bytes that are no protobuf message, to every method: an error each, never a crash."""
    codes: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(addr, options=_OPTIONS) as ch:
        for path in METHODS:
            for body in GARBAGE:
                code, details, _ = await _call(ch, path, body, 10)
                codes[f"{path.rsplit('/', 1)[1]}:{code}"] += 1
                if code in ("UNKNOWN", "UNAVAILABLE", "DEADLINE_EXCEEDED"):
                    codes[f"  {details}"] += 1
    return ", ".join(f"{k} x{v}" for k, v in sorted(codes.items()))


async def attack_amplify(addr: str, keys: int = 4) -> str:
    """`keys` values of 1 MiB, then a Range of them all, and a read-only Txn of 128 such
    ranges (a 5 KB request asking for 128 x `keys` MiB)."""
    async with grpc.aio.insecure_channel(addr, options=_OPTIONS) as ch:
        value = b"v" * (MiB - 64)
        for i in range(keys):
            code, details, _ = await _call(ch, "/etcdserverpb.KV/Put", rpc_pb2.PutRequest(
                key=b"/amp/%03d" % i, value=value).SerializeToString())
            if code != "OK":
                return f"put {i}: {code} {details}"
        every = rpc_pb2.RangeRequest(key=b"/amp/", range_end=b"/amp0")
        t0 = time.monotonic()
        code, details, size = await _call(ch, "/etcdserverpb.KV/Range",
                                          every.SerializeToString())
        out = [f"range of {keys} MiB: {code} {details!r} {size / MiB:.0f} MiB in "
               f"{time.monotonic() - t0:.1f} s"]
        txn = rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_range=every)] * 128)
        body = txn.SerializeToString()
        t0 = time.monotonic()
        code, details, size = await _call(ch, "/etcdserverpb.KV/Txn", body, 60)
        out.append(f"txn of 128 such ranges ({len(body)} B): {code} {details!r} "
                   f"{size / MiB:.0f} MiB in {time.monotonic() - t0:.1f} s")
        await _call(ch, "/etcdserverpb.KV/DeleteRange", rpc_pb2.DeleteRangeRequest(
            key=b"/amp/", range_end=b"/amp0").SerializeToString())
    return "; ".join(out)


def nested_txn(depth: int, width: int) -> rpc_pb2.TxnRequest:
    """A txn whose success branch holds `width` ranges and one txn like it, `depth` deep."""
    txn = rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(
        request_range=rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0"))] * width)
    for _ in range(depth - 1):
        inner = txn
        txn = rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(
            request_range=rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0"))] * (width - 1)
            + [rpc_pb2.RequestOp(request_txn=inner)])
    return txn


async def attack_nested(addr: str) -> str:
    """Deep nested txns (etcd checks each level's op count, not the total) and one of
    100,000 levels (past protobuf's recursion limit)."""
    out = []
    async with grpc.aio.insecure_channel(addr, options=_OPTIONS) as ch:
        for depth, width in ((3, 128), (64, 2), (1000, 1)):
            try:
                body = nested_txn(depth, width).SerializeToString()
            except Exception as e:  # the client's own protobuf may refuse it
                out.append(f"depth {depth} x {width}: not encodable here ({e})")
                continue
            t0 = time.monotonic()
            code, details, size = await _call(ch, "/etcdserverpb.KV/Txn", body, 60)
            out.append(f"depth {depth} x {width} ({len(body)} B): {code} {details!r} "
                       f"{size} B in {time.monotonic() - t0:.1f} s")
        # 100,000 levels, encoded by hand: field 2 (success) RequestOp{field 4 request_txn}
        body = b""
        for _ in range(100_000):
            op = _field(4, body)
            body = _field(2, op)
        code, details, _ = await _call(ch, "/etcdserverpb.KV/Txn", body, 30)
        out.append(f"100,000 levels ({len(body)} B): {code} {details!r}")
    return "; ".join(out)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


# ---------------------------------------------------------------- HTTP/2 by hand

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST, _SETTINGS, _PING, _GOAWAY, _WINDOW = 0, 1, 3, 4, 6, 7, 8


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(
        ">I", stream) + payload


def _literal(name: bytes, value: bytes) -> bytes:
    """HPACK: a literal header field without indexing, new name, no Huffman."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


class PartialSender:
    """One HTTP/2 connection whose streams each announce a gRPC message of `announce`
    bytes and send as much of it as the server's windows allow, never the end."""

    def __init__(self, addr: str, path: str, streams: int, announce: int) -> None:
        self.addr, self.path, self.streams, self.announce = addr, path, streams, announce
        self.sent = 0
        self.closed_by_server = False
        self.goaway = False
        self.reset = 0  # streams the server refused or reset (never sent to again)
        self._conn_window = 65535
        self._windows: dict[int, int] = {}
        self._initial = 65535
        self._more = asyncio.Event()

    async def run(self, seconds: float) -> None:
        host, _, port = self.addr.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(_PREFACE + _frame(_SETTINGS, 0, 0, b""))
        reading = asyncio.create_task(self._read(reader, writer))
        headers = b"".join(_literal(n, v) for n, v in (
            (b":method", b"POST"), (b":scheme", b"http"), (b":path", self.path.encode()),
            (b":authority", self.addr.encode()), (b"content-type", b"application/grpc"),
            (b"te", b"trailers")))
        ids = [1 + 2 * i for i in range(self.streams)]
        for sid in ids:
            writer.write(_frame(_HEADERS, 0x4, sid, headers))
            self._windows[sid] = self._initial
        left = {sid: self.announce - 1 for sid in ids}
        prefix = {sid: b"\x00" + struct.pack(">I", self.announce) for sid in ids}
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline and not reading.done():
                progressed = False
                for sid in ids:
                    room = min(self._conn_window, self._windows[sid], 16384, left[sid])
                    if room <= 0:
                        continue
                    payload = prefix.pop(sid, b"") + b"\0" * room
                    payload = payload[:room]
                    writer.write(_frame(_DATA, 0, sid, payload))
                    self._conn_window -= len(payload)
                    self._windows[sid] -= len(payload)
                    left[sid] -= len(payload)
                    self.sent += len(payload)
                    progressed = True
                await writer.drain()
                if not progressed:
                    self._more.clear()
                    try:
                        await asyncio.wait_for(self._more.wait(),
                                               max(0.01, deadline - time.monotonic()))
                    except TimeoutError:
                        break
        except (ConnectionError, OSError):
            self.closed_by_server = True
        finally:
            reading.cancel()
            writer.close()

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(9)
                length = int.from_bytes(head[:3], "big")
                kind, flags = head[3], head[4]
                stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
                payload = await reader.readexactly(length)
                if kind == _SETTINGS and not flags & 1:
                    for i in range(0, len(payload), 6):
                        ident, value = struct.unpack(">HI", payload[i:i + 6])
                        if ident == 4:  # SETTINGS_INITIAL_WINDOW_SIZE
                            for sid in self._windows:
                                self._windows[sid] += value - self._initial
                            self._initial = value
                    writer.write(_frame(_SETTINGS, 1, 0, b""))
                elif kind == _PING and not flags & 1:
                    writer.write(_frame(_PING, 1, 0, payload))
                elif kind == _WINDOW:
                    inc = int.from_bytes(payload, "big") & 0x7FFFFFFF
                    if stream == 0:
                        self._conn_window += inc
                    elif stream in self._windows:
                        self._windows[stream] += inc
                    self._more.set()
                elif kind == _GOAWAY:
                    self.goaway = True
                elif kind == _RST and self._windows.get(stream, -1) > -(1 << 40):
                    self._windows[stream] = -(1 << 41)
                    self.reset += 1
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            self.closed_by_server = True
            self._more.set()


async def attack_partial(addr: str, connections: int = 4, streams: int = 50,
                         hold: float = 8.0) -> str:
    """`connections` x `streams` streams, each announcing an 8 MiB Put and sending what
    the server lets it, held `hold` seconds; then a normal put must work."""
    senders = [PartialSender(addr, "/etcdserverpb.KV/Put", streams, 8 * MiB)
               for _ in range(connections)]
    await asyncio.gather(*(s.run(hold) for s in senders))
    sent = sum(s.sent for s in senders)
    closed = sum(s.closed_by_server for s in senders)
    reset = sum(s.reset for s in senders)
    goaway = sum(s.goaway for s in senders)
    async with grpc.aio.insecure_channel(addr, options=_OPTIONS) as ch:
        code, details, _ = await _call(ch, "/etcdserverpb.KV/Put", rpc_pb2.PutRequest(
            key=b"after-partial", value=b"1").SerializeToString(), 10)
    return (f"{connections} connections x {streams} streams announcing 8 MiB each: the "
            f"server took {sent / MiB:.0f} MiB of unfinished messages in {hold:.0f} s; "
            f"{reset} streams reset or refused, {closed} connections closed by it, "
            f"{goaway} GOAWAYs; a put after: {code} "
            f"{details}")


ATTACKS: dict[str, Any] = {
    "grpc-size": attack_size,
    "grpc-garbage": attack_garbage,
    "grpc-amplify": attack_amplify,
    "grpc-nested": attack_nested,
    "grpc-partial": attack_partial,
}

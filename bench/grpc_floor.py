"""The floor of a gRPC front end: a bare etcd KV server with fixed answers, per front end.

    .venv/bin/python bench/grpc_floor.py --rounds 3                  # all front ends
    .venv/bin/python bench/grpc_floor.py --fronts aio,raw --rounds 3 --json out.json
    .venv/bin/python bench/grpc_floor.py serve --front raw --port 2379   # one server

`etcdctl check perf` (3.4) calls etcd's KV Range (the prefix, limit 1: must find no key),
then Put at up to 8,000/s from 500 clients (load l; one connection each), then DeleteRange
of the prefix. Each front end below answers those (and Txn, Maintenance.Status) with a fixed
encoded response after decoding the request; no store, no Raft. What it costs per call is
what any dengine node pays before its own work:

* `aio`: grpc.aio on uvloop (dengine's front end today); `aio-asyncio`: the same on asyncio's
  own loop.
* `sync`: grpc's synchronous server, 16 threads.
* `grpclib`: the pure-Python gRPC server over asyncio and the `h2` library (uvloop).
* `h2`: a minimal gRPC server on an asyncio Protocol driving `h2.connection.H2Connection`.
* `raw`: HTTP/2 framing by hand on an asyncio Protocol (uvloop): `hpack` decodes the request
  headers (a block that leaves the dynamic table as it was is cached per connection, so
  a client's repeated indexed headers cost a dict lookup), the response's headers and
  trailers are constant bytes; connection-level flow control, SETTINGS and PING answered.
  `raw-task`: the same, each call's handler run as an asyncio task (as an async handler
  that awaits the engine would be).
* `wire`: dengine's own hand-framed server (`dengine.server.grpcwire`) with the grpc.aio
  front end's handlers (a task per call, grpc method handlers, a context per call).

For every (round, front end), alternated: the server in a child process, `etcdctl check
perf --load l --endpoints 127.0.0.1:PORT`, and between 10 s and 50 s of its 60 s the
server's user + system CPU (/proc/PID/stat) and its count of calls (asked with SIGUSR1):
ms of server CPU per 1,000 calls, calls/s, etcdctl's CPU per 1,000 calls, the load
average, and etcdctl's verdict. Medians over the rounds at the end. Not part of CI.
Run it under `flock /work/bench.lock` on a shared machine. grpclib, h2 and hpack are not
dengine's dependencies: `pip install grpclib h2` (h2 brings hpack) for those front ends.
Results: docs/performance.md, "A cheaper gRPC front end?".
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

from etcd_perf import ETCDCTL, _cpu_seconds, parse_check_perf

from dengine.bench.cluster import free_port_run
from dengine.proto.etcd import rpc_pb2 as pb

FRONTS = ("aio", "aio-asyncio", "sync", "grpclib", "h2", "raw", "raw-task", "wire")
WINDOW_S = (10.0, 50.0)
GC_THRESHOLDS = (20_000, 10, 10)  # dengine serve's (server/process.py)

_HEADER = pb.ResponseHeader(cluster_id=0x1234, member_id=0x5678, revision=2, raft_term=2)
# path -> (request class, the encoded fixed response)
METHODS: dict[str, tuple[Any, bytes]] = {
    "/etcdserverpb.KV/Range": (pb.RangeRequest,
                               pb.RangeResponse(header=_HEADER).SerializeToString()),
    "/etcdserverpb.KV/Put": (pb.PutRequest, pb.PutResponse(header=_HEADER).SerializeToString()),
    "/etcdserverpb.KV/DeleteRange": (
        pb.DeleteRangeRequest, pb.DeleteRangeResponse(header=_HEADER).SerializeToString()),
    "/etcdserverpb.KV/Txn": (
        pb.TxnRequest, pb.TxnResponse(header=_HEADER, succeeded=True).SerializeToString()),
    "/etcdserverpb.Maintenance/Status": (
        pb.StatusRequest,
        pb.StatusResponse(header=_HEADER, version="3.4.0", leader=0x5678, raftIndex=2,
                          raftTerm=2, raftAppliedIndex=2).SerializeToString()),
}

CALLS = itertools.count()


def _calls() -> int:
    """Calls answered so far (itertools.count's next() is atomic under the GIL)."""
    return int(repr(CALLS)[6:-1])


# ---------------------------------------------------------------------------------------
# grpc (aio and sync)

def _grpc_handlers(asynchronous: bool) -> list[Any]:
    import grpc

    def unary(response: bytes, request_class: Any) -> Any:
        if asynchronous:
            async def handle(request: Any, context: Any) -> bytes:
                next(CALLS)
                return response
        else:
            def handle(request: Any, context: Any) -> bytes:  # type: ignore[misc]
                next(CALLS)
                return response
        return grpc.unary_unary_rpc_method_handler(
            handle, request_deserializer=request_class.FromString)

    services: dict[str, dict[str, Any]] = {}
    for path, (request_class, response) in METHODS.items():
        service, method = path[1:].split("/")
        services.setdefault(service, {})[method] = unary(response, request_class)
    return [grpc.method_handlers_generic_handler(s, m) for s, m in services.items()]


GRPC_OPTIONS = [  # as dengine's client port (server/process.py), so Go clients may ping
    ("grpc.so_reuseport", 0),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_permit_without_calls", 1),
]


async def serve_aio(port: int) -> None:
    from grpc import aio
    server = aio.server(options=GRPC_OPTIONS)
    server.add_generic_rpc_handlers(_grpc_handlers(asynchronous=True))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def serve_wire(port: int) -> None:
    from dengine.server.grpcwire import GrpcWireServer
    server = GrpcWireServer()
    server.add_generic_rpc_handlers(_grpc_handlers(asynchronous=True))
    await server.start("127.0.0.1", port)
    await asyncio.Event().wait()


def serve_sync(port: int) -> None:
    import grpc
    server = grpc.server(futures.ThreadPoolExecutor(16), options=GRPC_OPTIONS)
    server.add_generic_rpc_handlers(_grpc_handlers(asynchronous=False))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    while True:  # the main thread stays free for SIGUSR1
        time.sleep(1)


# ---------------------------------------------------------------------------------------
# grpclib

async def serve_grpclib(port: int) -> None:
    from grpclib.const import Cardinality, Handler
    from grpclib.encoding.base import CodecBase
    from grpclib.server import Server

    class FixedCodec(CodecBase):
        """Decodes requests with their class; responses are already encoded bytes."""
        __content_subtype__ = "proto"

        def encode(self, message: Any, message_type: Any) -> bytes:
            return message  # type: ignore[no-any-return]

        def decode(self, data: bytes, message_type: Any) -> Any:
            return message_type.FromString(data)

    def handler(response: bytes) -> Callable[[Any], Any]:
        async def handle(stream: Any) -> None:
            await stream.recv_message()
            next(CALLS)
            await stream.send_message(response)
        return handle

    class Servable:
        def __mapping__(self) -> dict[str, Handler]:
            return {path: Handler(handler(resp), Cardinality.UNARY_UNARY, cls, bytes)
                    for path, (cls, resp) in METHODS.items()}

    server = Server([Servable()], codec=FixedCodec())
    await server.start("127.0.0.1", port)
    await server.wait_closed()


# ---------------------------------------------------------------------------------------
# h2 (the library), one H2Connection per TCP connection

class H2Protocol(asyncio.Protocol):
    RESPONSE_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]
    TRAILERS = [(b"grpc-status", b"0")]
    UNIMPLEMENTED = [(b"grpc-status", b"12"), (b"grpc-message", b"unknown method")]

    def __init__(self) -> None:
        import h2.config
        import h2.connection
        import h2.events
        self.ev = h2.events
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=False,
            validate_outbound_headers=False, normalize_inbound_headers=False,
            normalize_outbound_headers=False))
        self.paths: dict[int, bytes] = {}
        self.bodies: dict[int, bytearray] = {}

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        ev, conn = self.ev, self.conn
        for event in conn.receive_data(data):
            if isinstance(event, ev.RequestReceived):
                self.paths[event.stream_id] = dict(event.headers)[b":path"]
                self.bodies[event.stream_id] = bytearray()
            elif isinstance(event, ev.DataReceived):
                self.bodies[event.stream_id] += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, ev.StreamEnded):
                self.respond(event.stream_id)
            elif isinstance(event, ev.StreamReset):
                self.paths.pop(event.stream_id, None)
                self.bodies.pop(event.stream_id, None)
            elif isinstance(event, ev.ConnectionTerminated):
                self.transport.close()
        out = conn.data_to_send()
        if out:
            self.transport.write(out)

    def respond(self, sid: int) -> None:
        path = self.paths.pop(sid).decode()
        body = self.bodies.pop(sid)
        if path not in METHODS:
            self.conn.send_headers(sid, self.RESPONSE_HEADERS + self.UNIMPLEMENTED,
                                   end_stream=True)
            return
        request_class, response = METHODS[path]
        request_class.FromString(bytes(body[5:]))
        next(CALLS)
        self.conn.send_headers(sid, self.RESPONSE_HEADERS)
        self.conn.send_data(sid, b"\0" + struct.pack(">I", len(response)) + response)
        self.conn.send_headers(sid, self.TRAILERS, end_stream=True)


# ---------------------------------------------------------------------------------------
# raw: HTTP/2 framing by hand

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0, 1, 3, 4, 6, 7, 8, 9)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
RECV_WINDOW = 1 << 30  # per stream (SETTINGS) and for the connection
HEADER_CACHE = 64  # header blocks kept per connection


def _frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return struct.pack(">BHBBI", len(payload) >> 16, len(payload) & 0xFFFF, ftype, flags,
                       sid) + payload


def _literal(name: bytes, value: bytes) -> bytes:
    """HPACK literal header field without indexing, new name, no Huffman (lengths < 127):
    the same bytes on every response, whatever the peer's decoder holds."""
    return bytes([0, len(name)]) + name + bytes([len(value)]) + value


_RESP_HEADERS = b"\x88" + _literal(b"content-type", b"application/grpc")  # 0x88: :status 200
_TRAILERS = _literal(b"grpc-status", b"0")


def _response_parts(response: bytes) -> tuple[tuple[bytes, bytes, bytes, bytes], int]:
    """The three frames of a unary answer around their stream ids (joined per call), and
    the size of its DATA (what it takes of the connection's send window)."""
    data = b"\0" + struct.pack(">I", len(response)) + response
    h = _frame(HEADERS, END_HEADERS, 0, _RESP_HEADERS)
    d = _frame(DATA, 0, 0, data)
    t = _frame(HEADERS, END_HEADERS | END_STREAM, 0, _TRAILERS)
    return (h[:5], h[9:] + d[:5], d[9:] + t[:5], t[9:]), len(data)


RAW_METHODS = {path.encode(): (cls, _response_parts(resp))
               for path, (cls, resp) in METHODS.items()}
_UNIMPLEMENTED = (b"\x88" + _literal(b"content-type", b"application/grpc")
                  + _literal(b"grpc-status", b"12")
                  + _literal(b"grpc-message", b"unknown method"))
_SERVER_SETTINGS = (
    _frame(SETTINGS, 0, 0, struct.pack(">HIHI", 0x3, 1000, 0x4, RECV_WINDOW))
    + _frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", RECV_WINDOW - 65535)))


class RawProtocol(asyncio.Protocol):
    """One HTTP/2 connection; unary calls only (what the floor needs), answered in order."""

    def __init__(self, as_task: bool) -> None:
        import hpack
        self.decoder = hpack.Decoder()
        self.decoder.max_allowed_table_size = 4096
        self.header_cache: dict[bytes, dict[bytes, bytes]] = {}  # at most HEADER_CACHE
        self.buf = b""
        self.preface = True
        self.streams: dict[int, list[Any]] = {}  # sid -> [path, body]
        self.cont: tuple[int, int, bytes] | None = None  # sid, flags, block so far
        self.received = 0
        self.send_window = 65535
        self.pending: list[tuple[bytes, int]] = []
        self.as_task = as_task

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(_SERVER_SETTINGS)

    def headers(self, block: bytes) -> dict[bytes, bytes]:
        """The decoded header block; cached while the dynamic table stays as it was."""
        cached = self.header_cache.get(block)
        if cached is not None:
            return cached
        table = self.decoder.header_table.dynamic_entries
        before = tuple(table)
        fields = dict(self.decoder.decode(block, raw=True))
        if tuple(table) != before or len(self.header_cache) >= HEADER_CACHE:
            self.header_cache.clear()
        if tuple(table) == before:
            self.header_cache[block] = fields
        return fields

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos = 0
        if self.preface:
            if len(buf) < 24:
                self.buf = buf
                return
            if buf[:24] != PREFACE:
                self.transport.close()
                return
            self.preface = False
            pos = 24
        out: list[bytes] = []
        n = len(buf)
        unpack = struct.unpack_from
        while n - pos >= 9:
            hi, lo, ftype, flags, sid = unpack(">BHBBI", buf, pos)
            end = pos + 9 + (hi << 16 | lo)
            if end > n:
                break
            sid &= 0x7FFFFFFF
            if ftype == DATA:
                self.received += end - pos - 9
                stream = self.streams.get(sid)
                if stream is not None:
                    payload = buf[pos + 9:end]
                    if flags & PADDED:
                        payload = payload[1:len(payload) - payload[0]]
                    stream[1] = stream[1] + payload if stream[1] else payload
                    if flags & END_STREAM:
                        self.call(sid, out)
            elif ftype == HEADERS:
                block = buf[pos + 9:end]
                if flags & PADDED:
                    block = block[1:len(block) - block[0]]
                if flags & PRIORITY:
                    block = block[5:]
                if flags & END_HEADERS:
                    self.stream_headers(sid, flags, block, out)
                else:
                    self.cont = (sid, flags, block)
            elif ftype == CONTINUATION and self.cont is not None:
                csid, cflags, block = self.cont
                block += buf[pos + 9:end]
                if flags & END_HEADERS:
                    self.cont = None
                    self.stream_headers(csid, cflags, block, out)
                else:
                    self.cont = (csid, cflags, block)
            elif ftype == SETTINGS:
                if not flags & ACK:
                    out.append(_frame(SETTINGS, ACK, 0, b""))
            elif ftype == PING:
                if not flags & ACK:
                    out.append(_frame(PING, ACK, 0, buf[pos + 9:end]))
            elif ftype == WINDOW_UPDATE:
                if sid == 0:
                    self.send_window += int.from_bytes(buf[pos + 9:end]) & 0x7FFFFFFF
                    if self.pending:
                        pending, self.pending = self.pending, []
                        for frames, size in pending:
                            self.send(frames, size, out)
            elif ftype == RST_STREAM:
                self.streams.pop(sid, None)
            elif ftype == GOAWAY:
                self.transport.close()
                return
            pos = end
        self.buf = buf[pos:]
        if self.received > RECV_WINDOW // 2:
            out.append(_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.received)))
            self.received = 0
        if out:
            self.transport.write(b"".join(out))

    def stream_headers(self, sid: int, flags: int, block: bytes, out: list[bytes]) -> None:
        fields = self.headers(block)
        if sid in self.streams:  # trailers of a client stream: none in unary calls
            return
        self.streams[sid] = [fields.get(b":path"), b""]
        if flags & END_STREAM:
            self.call(sid, out)

    def call(self, sid: int, out: list[bytes]) -> None:
        path, body = self.streams.pop(sid)
        method = RAW_METHODS.get(path)
        if method is None:
            out.append(_frame(HEADERS, END_HEADERS | END_STREAM, sid, _UNIMPLEMENTED))
            return
        request_class, (parts, size) = method
        if self.as_task:
            asyncio.get_running_loop().create_task(
                self.handle_async(sid, request_class, parts, size, body))
            return
        request_class.FromString(body[5:])
        next(CALLS)
        s = sid.to_bytes(4)
        self.send(b"".join((parts[0], s, parts[1], s, parts[2], s, parts[3])), size, out)

    async def handle_async(self, sid: int, request_class: Any, parts: Any, size: int,
                           body: bytes) -> None:
        request_class.FromString(body[5:])
        next(CALLS)
        out: list[bytes] = []
        s = sid.to_bytes(4)
        self.send(b"".join((parts[0], s, parts[1], s, parts[2], s, parts[3])), size, out)
        if out and not self.transport.is_closing():
            self.transport.write(out[0])

    def send(self, frames: bytes, size: int, out: list[bytes]) -> None:
        """Appends a call's frames to `out`, or holds them while the connection's send
        window is short (the stream's own window, 64 KiB or more, is never short here)."""
        if self.pending or size > self.send_window:
            self.pending.append((frames, size))
            return
        self.send_window -= size
        out.append(frames)


async def serve_protocol(port: int, factory: Callable[[], asyncio.Protocol]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# ---------------------------------------------------------------------------------------

def serve(front: str, port: int, stats: Path) -> None:
    """Runs one front end until killed; SIGUSR1 writes "SEQ CALLS" into `stats`."""
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()
    seq = itertools.count(1)

    def dump(*_: Any) -> None:
        tmp = stats.with_suffix(".tmp")
        tmp.write_text(f"{next(seq)} {_calls()}")
        tmp.replace(stats)

    if front == "sync":
        signal.signal(signal.SIGUSR1, dump)
        serve_sync(port)
        return
    import uvloop
    factory = None if front == "aio-asyncio" else uvloop.new_event_loop
    main = {
        "aio": lambda: serve_aio(port), "aio-asyncio": lambda: serve_aio(port),
        "grpclib": lambda: serve_grpclib(port),
        "h2": lambda: serve_protocol(port, H2Protocol),
        "raw": lambda: serve_protocol(port, lambda: RawProtocol(as_task=False)),
        "raw-task": lambda: serve_protocol(port, lambda: RawProtocol(as_task=True)),
        "wire": lambda: serve_wire(port),
    }[front]
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.get_loop().add_signal_handler(signal.SIGUSR1, dump)
        runner.run(main())


# ---------------------------------------------------------------------------------------
# the measurement

def _ask_calls(proc: subprocess.Popen[bytes], stats: Path, last_seq: int) -> tuple[int, int]:
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            seq, calls = map(int, stats.read_text().split())
            if seq > last_seq:
                return seq, calls
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    raise RuntimeError("the server did not answer SIGUSR1")


def _cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode})")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("the server did not listen")


def run_one(front: str, load: str, workdir: Path) -> dict[str, Any]:
    port = free_port_run(1)
    stats = workdir / f"{front}-{port}.stats"  # new per run: SIGUSR1's answers count from 1
    stats.unlink(missing_ok=True)
    log = open(workdir / f"{front}-{port}.log", "ab")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, __file__, "serve", "--front", front, "--port", str(port),
         "--stats", str(stats)], stdout=log, stderr=subprocess.STDOUT)
    result: dict[str, Any] = {"front": front, "load": load,
                              "loadavg": os.getloadavg()[0]}
    try:
        _wait_port(port, server)
        with open(workdir / f"{front}-{port}-check.out", "w+") as out:
            checker = subprocess.Popen(
                [ETCDCTL, f"--endpoints=127.0.0.1:{port}", "check", "perf", "--load", load],
                env={**os.environ, "ETCDCTL_API": "3"}, stdout=out, stderr=subprocess.STDOUT,
                text=True)
            try:
                time.sleep(WINDOW_S[0])
                seq, calls0 = _ask_calls(server, stats, 0)
                cpu0, ctl0, t0 = (_cpu_split(server.pid), _cpu_seconds(checker.pid),
                                  time.monotonic())
                time.sleep(WINDOW_S[1] - WINDOW_S[0])
                _, calls1 = _ask_calls(server, stats, seq)
                cpu1, ctl1, t1 = (_cpu_split(server.pid), _cpu_seconds(checker.pid),
                                  time.monotonic())
                checker.wait(timeout=120)
            finally:
                if checker.poll() is None:
                    checker.kill()
                    checker.wait()
            out.seek(0)
            verdict = parse_check_perf(out.read(), checker.returncode)
        calls = max(1, calls1 - calls0)
        result.update(
            calls_per_s=round(calls / (t1 - t0)),
            server_ms_per_1000=round((sum(cpu1) - sum(cpu0)) * 1e6 / calls, 1),
            server_sys_ms_per_1000=round((cpu1[1] - cpu0[1]) * 1e6 / calls, 1),
            etcdctl_ms_per_1000=round((ctl1 - ctl0) * 1e6 / calls, 1),
            throughput=verdict["throughput"], slowest_s=verdict.get("slowest_s"),
            verdict=verdict["verdict"], error=verdict.get("error"),
            loadavg_end=os.getloadavg()[0])
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        result.update(verdict="ERROR", error=str(e))
    finally:
        server.kill()
        server.wait()
        log.close()
    return result


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        ap = argparse.ArgumentParser(prog="grpc_floor.py serve")
        ap.add_argument("serve")
        ap.add_argument("--front", choices=FRONTS, required=True)
        ap.add_argument("--port", type=int, required=True)
        ap.add_argument("--stats", type=Path, default=Path(os.devnull))
        args = ap.parse_args()
        serve(args.front, args.port, args.stats)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fronts", default=",".join(FRONTS))
    ap.add_argument("--load", default="l", choices=("s", "m", "l", "xl"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    fronts = [f for f in args.fronts.split(",") if f]
    if bad := [f for f in fronts if f not in FRONTS]:
        ap.error(f"unknown front end: {', '.join(bad)}")
    # SIGTERM unwinds like ^C, so that the server and etcdctl of the current run are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    workdir = Path(tempfile.mkdtemp(prefix="grpc-floor-"))
    print(f"work dir {workdir}; {os.cpu_count()} cores; load {args.load}")
    results: list[dict[str, Any]] = []
    for rnd in range(args.rounds):
        for front in fronts:
            r = run_one(front, args.load, workdir)
            r["round"] = rnd
            results.append(r)
            print(f"round {rnd} {front:11} " + (
                f"{r['server_ms_per_1000']:6.1f} ms/1000 calls "
                f"({r['server_sys_ms_per_1000']:.1f} system), {r['calls_per_s']:5d} calls/s, "
                f"etcdctl {r['etcdctl_ms_per_1000']:5.1f} ms/1000, load "
                f"{r['loadavg']:.1f}-{r['loadavg_end']:.1f}; {r['throughput']} writes/s "
                f"slowest {r['slowest_s']} s {r['verdict']}"
                if "server_ms_per_1000" in r else f"{r['verdict']}: {r.get('error')}"),
                flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))
    print(f"\n{'front end':11} {'server ms/1000 calls':>22} {'calls/s':>8} "
          f"{'etcdctl ms/1000':>16} {'load avg':>9}")
    for front in fronts:
        rs = [r for r in results if r["front"] == front and "server_ms_per_1000" in r]
        if not rs:
            print(f"{front:11} no run completed")
            continue
        ms = [r["server_ms_per_1000"] for r in rs]
        print(f"{front:11} {statistics.median(ms):8.1f} ({min(ms):.0f}-{max(ms):.0f})"
              f"{statistics.median(r['calls_per_s'] for r in rs):>11.0f} "
              f"{statistics.median(r['etcdctl_ms_per_1000'] for r in rs):>16.1f} "
              f"{statistics.median(r['loadavg'] for r in rs):>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

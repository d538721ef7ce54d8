"""The hand-framed gRPC front end's Python cost per unary call, without sockets.

    .venv/bin/python bench/grpcwire_calls.py                 # 5 rounds of 50,000 calls
    PYTHONPATH=<other tree>/src .venv/bin/python bench/grpcwire_calls.py   # another tree

`dengine.server.grpcwire`'s Connection fed, in this process and on uvloop, what etcdctl
3.4's clients send under `check perf`: on each of `--connections` connections, a KV Put
(its HEADERS block as grpc-go repeats it, indexed, and one DATA frame of a 1 KiB value
with END_STREAM), followed by the client's WINDOW_UPDATE and BDP PING (`--no-ping`:
without them); the handler answers a fixed PutResponse at once. Prints the process CPU
per call of each round (the frame loop, the call, its task and context, the answer's
frames; no system calls: the transport only counts bytes). Steadier than a cluster run
on a shared machine; docs/performance.md, "Session 19".
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from typing import Any

import grpc
import hpack
import uvloop

from dengine.proto.etcd import rpc_pb2
from dengine.server.grpcwire import frames as f
from dengine.server.grpcwire.connection import Connection
from dengine.server.grpcwire.server import GrpcWireServer
from dengine.server.process import GC_THRESHOLDS

_ANSWER = rpc_pb2.PutResponse(header=rpc_pb2.ResponseHeader(
    cluster_id=1, member_id=2, revision=3, raft_term=4)).SerializeToString()
_HEADERS = [(":method", "POST"), (":scheme", "http"), (":path", "/etcdserverpb.KV/Put"),
            (":authority", "127.0.0.1:2379"), ("content-type", "application/grpc"),
            ("user-agent", "grpc-go/1.26.0"), ("te", "trailers")]


async def _put(request: bytes, context: Any) -> bytes:
    context.invocation_metadata()  # as the etcd handlers ask (token, forwarded)
    context.time_remaining()
    return _ANSWER


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def write(self, data: Any) -> None:
        self.written += len(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def main(calls: int, connections: int, rounds: int, ping: bool) -> None:
    server = GrpcWireServer()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "etcdserverpb.KV", {"Put": grpc.unary_unary_rpc_method_handler(_put)})])
    conns = []
    for _ in range(connections):
        conn = Connection(server)
        conn.connection_made(_Transport())
        conn.data_received(f.PREFACE + f.settings())
        conns.append(conn)
    body = rpc_pb2.PutRequest(key=b"k" * 8, value=b"v" * 1024).SerializeToString()
    data = f.MESSAGE_PREFIX.pack(0, len(body)) + body
    control = (f.window_update(0, len(_ANSWER) + 5) + f.frame(f.PING, 0, 0, b"12345678")
               if ping else b"")
    encoders = [hpack.Encoder() for _ in conns]
    blocks = [encoder.encode(_HEADERS) for encoder in encoders]  # the first: indexing
    sids = [1] * connections

    def request(i: int) -> bytes:
        sid = sids[i]
        sids[i] += 2
        block = blocks[i]
        if sid == 3:  # from the second call on, the indexed block grpc-go repeats
            block = blocks[i] = encoders[i].encode(_HEADERS)
        return (f.frame(f.HEADERS, f.END_HEADERS, sid, block)
                + f.frame(f.DATA, f.END_STREAM, sid, data) + control)

    per_round = max(1, calls // connections)
    results = []
    for n in range(rounds):
        frames = [[request(i) for i in range(connections)] for _ in range(per_round)]
        t0 = time.process_time()
        for turn in frames:
            for conn, frame in zip(conns, turn, strict=True):
                conn.data_received(frame)
            for _ in range(3):  # the handlers' tasks, then the answers' writes
                await asyncio.sleep(0)
        us = (time.process_time() - t0) / (per_round * connections) * 1e6
        open_calls = sum(len(c._calls) for c in conns)
        closed = sum(c._closed for c in conns)
        print(f"round {n}: {us:.2f} us CPU per call ({open_calls} calls open, "
              f"{closed} connections closed)")
        results.append(us)
        release = getattr(server, "_release_acks", None)  # trees that hold PING acks
        if release is not None:
            release(everything=True)  # as its timer would
    print(f"median {statistics.median(results):.2f} us CPU per call")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=50_000, help="per round")
    ap.add_argument("--connections", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-ping", action="store_true")
    args = ap.parse_args()
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()
    uvloop.run(main(args.calls, args.connections, args.rounds, not args.no_ping))

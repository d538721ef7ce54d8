"""A TCP proxy in front of each node's peer listener, with faults per directed link.

Peers talk over one TCP connection per ordered pair: node A dials B's peer address,
both send a Hello, and from then on only A writes on it (B answers A on its own
connection to A). So the directed link A->B is exactly "the connections to B whose Hello
says node_id=A". One listener per destination node sits on the address every node knows
that node by (its `public` address, the one in the membership); it reads the first frame,
takes the source node from the Hello, connects to the node's real (`private`) listener and
forwards, applying the link's state:

* ``pass``: forward, after ``delay`` seconds when set (order kept, both directions).
* ``drop``: reset (RST) every connection of the link; new ones are reset on arrival,
  like a host that rejects packets. The node reconnects with its backoff once healed.
* ``blackhole``: stop reading and forwarding and hold the connections open: the sender's
  socket buffers fill and its writes stall, nothing reaches the other side, not even a
  close. Connections made meanwhile are accepted and held without reading. When healed
  the held bytes flow, as TCP's retransmissions would deliver them.

Runs in its own process (`python fault_proxy.py SPEC_JSON`) so that the load generator in
the test process cannot delay peer traffic. Control: one JSON object per line on stdin,
``{"op": "set", "links": [[src, dst], ...], "mode": "pass|drop|blackhole", "delay": s}``
or ``{"op": "stats"}``; each is answered with one JSON line on stdout. EOF on stdin stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import sys
import time
from typing import Any

from dengine.proto import PeerFrame

HEADER = struct.Struct("<II")
MODES = ("pass", "drop", "blackhole")
_HELLO_TIMEOUT_S = 10.0


def split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


class Link:
    """The state of one directed link and its live connections."""

    def __init__(self, src: int, dst: int) -> None:
        self.src = src
        self.dst = dst
        self.mode = "pass"
        self.delay = 0.0
        self.open = asyncio.Event()  # set unless black-holed
        self.open.set()
        self.conns: set[Conn] = set()
        self.accepted = 0
        self.resets = 0
        self.bytes = 0

    def set(self, mode: str, delay: float) -> None:
        self.mode = mode
        self.delay = delay
        if mode == "blackhole":
            self.open.clear()
        else:
            self.open.set()
        if mode == "drop":
            for conn in list(self.conns):
                conn.reset()


class Conn:
    """One proxied connection: two pumps (src->dst data, dst->src Hello reply / EOF)."""

    def __init__(self, link: Link, down: asyncio.StreamWriter) -> None:
        self.link = link
        self.down = down
        self.up: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.closed = False

    def reset(self) -> None:
        """RST both sides."""
        if self.closed:
            return
        self.link.resets += 1
        self.close(abort=True)

    def close(self, abort: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self.link.conns.discard(self)
        for w in (self.down, self.up):
            if w is None:
                continue
            with contextlib.suppress(Exception):
                if abort:
                    w.transport.abort()
                else:
                    w.close()
        for t in self.tasks:
            if t is not asyncio.current_task():
                t.cancel()

    async def pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   count: bool) -> None:
        """Forward reader -> writer through the link's gate and delay, in order."""
        link = self.link
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await link.open.wait()
                if not data:
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(send())
        self.tasks.append(sender)
        try:
            while True:
                await link.open.wait()
                data = await reader.read(65536)
                await link.open.wait()
                if count:
                    link.bytes += len(data)
                queue.put_nowait((time.monotonic() + link.delay, data))
                if not data:
                    break
            await sender
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.close()


class FaultProxy:
    """One listener per node at its public address, forwarding to its private one."""

    def __init__(self, public: dict[int, str], private: dict[int, str]) -> None:
        self.public = public
        self.private = private
        self.links = {(a, b): Link(a, b) for a in public for b in public if a != b}
        self.servers: list[asyncio.Server] = []
        self.handlers: set[asyncio.Task[None]] = set()
        self.stalls: list[tuple[float, float]] = []  # (monotonic time, seconds) of loop lag

    async def watch_lag(self) -> None:
        """Record when this process's loop ran late (> 0.1 s): its forwarding stalled."""
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.05)
            late = time.monotonic() - before - 0.05
            if late > 0.1:
                self.stalls.append((before, round(late, 3)))

    async def start(self) -> None:
        self.handlers.add(asyncio.create_task(self.watch_lag()))
        for dst, address in self.public.items():
            host, port = split(address)
            self.servers.append(await asyncio.start_server(
                lambda r, w, dst=dst: self._accept(dst, r, w), host, port))

    async def close(self) -> None:
        for s in self.servers:
            s.close()
        for link in self.links.values():
            for conn in list(link.conns):
                conn.close(abort=True)
        for t in list(self.handlers):
            t.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)

    def set(self, links: list[tuple[int, int]], mode: str, delay: float) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        for src, dst in links:
            self.links[(src, dst)].set(mode, delay)

    def stats(self) -> dict[str, Any]:
        links = {f"{a}->{b}": {"mode": link.mode, "delay": link.delay, "conns": len(link.conns),
                               "accepted": link.accepted, "resets": link.resets,
                               "bytes": link.bytes}
                 for (a, b), link in self.links.items()}
        return {"links": links, "stalls": self.stalls}

    async def _accept(self, dst: int, reader: asyncio.StreamReader,
                      down: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            await self._serve(dst, reader, down)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            with contextlib.suppress(Exception):
                down.transport.abort()
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                down.transport.abort()
        finally:
            self.handlers.discard(task)

    async def _serve(self, dst: int, reader: asyncio.StreamReader,
                     down: asyncio.StreamWriter) -> None:
        header = await asyncio.wait_for(reader.readexactly(HEADER.size), _HELLO_TIMEOUT_S)
        length, _ = HEADER.unpack(header)
        if length > 1 << 20:
            raise ValueError("first frame too big for a Hello")
        payload = await asyncio.wait_for(reader.readexactly(length), _HELLO_TIMEOUT_S)
        frame = PeerFrame.FromString(payload)
        src = frame.hello.node_id if frame.WhichOneof("frame") == "hello" else 0
        link = self.links.get((src, dst))
        if link is None:
            raise ValueError(f"no link {src}->{dst}")
        link.accepted += 1
        conn = Conn(link, down)
        link.conns.add(conn)
        if link.mode == "drop":
            conn.reset()
            return
        await link.open.wait()  # a black-holed link holds new connections unread
        if conn.closed:
            return
        if link.delay:
            await asyncio.sleep(link.delay)
        host, port = split(self.private[dst])
        try:
            up_reader, up = await asyncio.wait_for(asyncio.open_connection(host, port), 5.0)
        except (OSError, TimeoutError):
            # The node is down: refuse like it would.
            conn.close(abort=True)
            return
        conn.up = up
        if conn.closed:
            up.transport.abort()
            return
        up.write(header + payload)
        conn.tasks = [asyncio.create_task(conn.pump(reader, up, True)),
                      asyncio.create_task(conn.pump(up_reader, down, False))]
        await asyncio.gather(*conn.tasks, return_exceptions=True)


async def serve(spec: dict[str, Any]) -> None:
    proxy = FaultProxy({int(k): v for k, v in spec["public"].items()},
                       {int(k): v for k, v in spec["private"].items()})
    await proxy.start()
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply({"ok": True, "ready": True})
    try:
        while line := await stdin.readline():
            try:
                cmd = json.loads(line)
                if cmd["op"] == "set":
                    proxy.set([(int(a), int(b)) for a, b in cmd["links"]], cmd["mode"],
                              float(cmd.get("delay", 0.0)))
                    reply({"ok": True})
                elif cmd["op"] == "stats":
                    reply({"ok": True, "stats": proxy.stats()})
                else:
                    reply({"ok": False, "error": f"unknown op {cmd['op']!r}"})
            except (KeyError, ValueError, TypeError) as e:
                reply({"ok": False, "error": repr(e)})
    finally:
        await proxy.close()


def main() -> None:
    spec = json.loads(sys.argv[1])
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(spec))


if __name__ == "__main__":
    main()

"""`dengine watch` against a real server: etcdctl's output, history and live, stays open."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time

from dengine import SyncClient

CLI = [sys.executable, "-c", "from dengine.cli import main; main()"]


class Watching:
    """`dengine watch ARGS` in the background; `lines(n)` reads n lines of its output."""

    def __init__(self, endpoint: str, *args: str) -> None:
        self.proc = subprocess.Popen([*CLI, "watch", *args, "--endpoints", endpoint],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._buf = b""

    def lines(self, n: int, timeout: float = 20.0) -> list[str]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while self._buf.count(b"\n") < n:
            left = deadline - time.monotonic()
            assert left > 0, (self._buf, self.proc.poll())
            if sel.select(left):
                chunk = os.read(fd, 65536)
                assert chunk, (self._buf, self.proc.stderr.read() if self.proc.stderr else b"")
                self._buf += chunk
        sel.close()
        out = self._buf.split(b"\n")
        self._buf = b"\n".join(out[n:])
        return [line.decode() for line in out[:n]]

    def stop(self) -> int:
        self.proc.terminate()
        self.proc.communicate(timeout=10)
        return self.proc.returncode


def test_watch_history_and_live_like_etcdctl(endpoint: str) -> None:
    with SyncClient(endpoint) as c:
        first = c.put(b"/cw/a", b"1").revision
        c.put(b"/cw/a", b"2")
        c.delete(b"/cw/a")
        simple = Watching(endpoint, "/cw/", "--prefix", "--rev", str(first), "--prev-kv")
        as_json = Watching(endpoint, "/cw/a", "--rev", str(first), "-w", "json")
        try:
            assert simple.lines(13) == ["PUT", "/cw/a", "1",
                                        "PUT", "/cw/a", "1", "/cw/a", "2",
                                        "DELETE", "/cw/a", "2", "/cw/a", ""]
            docs = [json.loads(line) for line in as_json.lines(3)]
            assert [d["Header"]["revision"] for d in docs] == [first, first + 1, first + 2]
            assert docs[0]["Events"] == [{"kv": {
                "key": "L2N3L2E=", "create_revision": first, "mod_revision": first,
                "version": 1, "value": "MQ=="}}]
            assert docs[2]["Events"] == [{"type": 1, "kv": {"key": "L2N3L2E=",
                                                            "mod_revision": first + 2}}]
            assert all(d["CompactRevision"] == 0 and d["Created"] is False for d in docs)
            # it stays open: live events follow
            c.put(b"/cw/b", b"live")
            assert simple.lines(3) == ["PUT", "/cw/b", "live"]
        finally:
            simple.stop()
            as_json.stop()


def test_watch_of_a_compacted_revision_is_an_error(endpoint: str) -> None:
    with SyncClient(endpoint) as c:
        first = c.put(b"/cc/a", b"1").revision
        c.put(b"/cc/a", b"2")
        c.compact(first + 1)
    done = subprocess.run([*CLI, "watch", "/cc/a", "--rev", str(first), "--endpoints",
                           endpoint], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1
    assert "required revision has been compacted" in done.stderr
    assert "Traceback" not in done.stderr

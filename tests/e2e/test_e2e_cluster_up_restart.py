"""`dengine cluster up` after a node was restarted by hand as the README says (issue 18
item 7): the restart command it prints works as printed, and Ctrl-C stops that node too."""

from __future__ import annotations

import json
import queue
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path

from e2e_support import CLI, pid_alive
from test_e2e_cli import distinct_port_runs


def test_ctrl_c_stops_a_node_restarted_by_hand(tmp_path: Path) -> None:
    client_base, peer_base, native_base = distinct_port_runs(3, 2)
    proc = subprocess.Popen(
        [*CLI, "cluster", "up", "--nodes", "2", "--base-dir", str(tmp_path / "c"),
         "--client-port", str(client_base), "--peer-port", str(peer_base),
         "--native-port", str(native_base), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    events: list[dict] = []
    by_hand: subprocess.Popen[bytes] | None = None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout],  # type: ignore[union-attr]
                     daemon=True).start()

    def logs() -> str:
        return "\n".join(p.read_text() for p in sorted((tmp_path / "c").glob("*.log")))

    def next_event(kind: str) -> dict:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert proc.poll() is None, (events, logs())
                continue
            events.append(json.loads(line))  # every line is JSON
            if events[-1]["event"] == kind:
                return events[-1]
        raise AssertionError((events, logs()))

    try:
        next_event("ready")
        nodes = {e["node_id"]: e for e in events if e["event"] == "node"}
        assert set(nodes) == {1, 2}
        subprocess.run(["kill", "-9", str(nodes[2]["pid"])], check=True)
        exited = next_event("exited")
        restart = exited["restart"]
        assert exited["node_id"] == 2 and restart.endswith(f"serve --config {nodes[2]['config']}")
        # the printed command runs as printed (no `dengine` on PATH needed)
        with open(tmp_path / "by-hand.log", "wb") as log:
            by_hand = subprocess.Popen(shlex.split(restart), stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        pid_file = tmp_path / "c" / "node2.pid"
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text().strip() == str(by_hand.pid)):
            assert time.monotonic() < deadline and by_hand.poll() is None, (
                (tmp_path / "by-hand.log").read_text())
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        next_event("stopped")
        assert {"event": "stopping", "node_id": 2, "pid": by_hand.pid} in events, events
        assert events[-1] == {"event": "stopped"}
        assert by_hand.wait(15) == 0  # a clean stop (SIGTERM)
        assert not pid_file.exists()
        assert not pid_alive(nodes[1]["pid"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if by_hand is not None and by_hand.poll() is None:
            by_hand.kill()
            by_hand.wait()
        for e in events:
            if e["event"] == "node" and pid_alive(e["pid"]):
                subprocess.run(["kill", "-9", str(e["pid"])], check=False)

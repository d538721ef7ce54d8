"""Server child processes: start, watch, stop; and stop with the parent when it dies.

`dengine cluster up` and the benchmarks' local clusters run `dengine serve --config FILE`
children through `ServerProcess`, and stop them with `stop_all` (SIGTERM to every one,
then SIGKILL to those still running after the grace).

When the parent dies, however it dies (kill -9 included), each child stops too:

* the child's stdin is a pipe whose only write end the parent holds; the kernel closes it
  when the parent exits, and a watchdog thread in the child (`watch_parent`) reads EOF,
  sends the child SIGTERM (a clean stop: the node closes its files and listeners), and
  ends the process with `os._exit` if it is still running `STOP_GRACE_S` later. This
  works on every platform.
* on Linux the child also asks the kernel for SIGTERM when its parent dies
  (`prctl(PR_SET_PDEATHSIG)`), so the clean stop starts even if the watchdog thread
  could not run. It is set in the child's own code, not in a `preexec_fn`, so that
  starting a child never runs Python between fork and exec in a parent with threads.
  The kernel sends it when the *thread* that started the child exits: start children
  from a thread that lives as long as they should (the main thread).

Children run in their own session: a terminal's Ctrl-C reaches only the parent, which
stops them in order (and reports) instead of racing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# How long a child has to stop after SIGTERM (from its parent, or its parent's death)
# before it is killed.
STOP_GRACE_S = 10.0

_PR_SET_PDEATHSIG = 1
# The child's entry point: argv[1] is the parent's pid, the rest is the CLI's arguments.
_CHILD_BOOT = "from dengine.server.supervisor import child_main; child_main()"


def child_main() -> None:
    """Entry point of a supervised child: watch the parent, then run the CLI."""
    parent = int(sys.argv[1])
    del sys.argv[1]
    watch_parent(parent)
    from dengine.cli import main

    main()


def watch_parent(parent: int) -> None:
    """Stop this process when `parent` dies (see the module docstring)."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before prctl, or before we got here
        os._exit(1)
    threading.Thread(target=wait_for_eof, args=(sys.stdin.fileno(),), daemon=True,
                     name="parent-watchdog").start()


def wait_for_eof(fd: int, grace: float = STOP_GRACE_S,
                 kill: Callable[[int, int], None] = os.kill,
                 exit_now: Callable[[int], object] = os._exit) -> None:
    """Read `fd` until EOF (the parent is gone), then SIGTERM this process and, if it is
    still running `grace` seconds later, exit at once."""
    while True:
        try:
            if not os.read(fd, 4096):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace)
    exit_now(1)


# Runs argv[2:] after asking Linux to SIGKILL it when the thread that started it exits
# (PR_SET_PDEATHSIG survives exec); argv[1] is that parent's pid.
_DIE_WITH_PARENT = """
import os, signal, sys
if sys.platform == "linux":
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != int(sys.argv[1]):
        os._exit(1)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def die_with_parent(argv: Sequence[str]) -> list[str]:
    """`argv` wrapped so that, on Linux, the process is killed (SIGKILL, even when paused)
    when this process dies, however it dies: what tests and tools use for the servers they
    start, so a killed pytest leaves no orphans. The setting is made in the child (a small
    Python wrapper that then execs `argv`, same pid), not in a `preexec_fn`, so that Popen
    never runs Python between fork and exec in a parent with gRPC threads. The kernel
    sends it when the *thread* that started the child exits: start from the main thread."""
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *argv]


@dataclass
class ServerProcess:
    """One `dengine serve --config FILE` child; restartable (same config, same log)."""

    node_id: int
    config_file: Path
    log_file: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, extra_args: Sequence[str] = ()) -> None:
        """Spawn it, output appended to `log_file`. Call from the main thread (see the
        module docstring)."""
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _CHILD_BOOT, str(os.getpid()),
                 "serve", "--config", str(self.config_file), *extra_args],
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        """kill -9 and reap (nothing if it is not running)."""
        if self.alive:
            assert self.process is not None
            self.process.kill()
            self._reap()

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM, then SIGKILL if it is still running after `grace` seconds."""
        stop_all([self], grace)

    def _reap(self) -> None:
        assert self.process is not None
        self.process.wait()
        if self.process.stdin is not None:
            self.process.stdin.close()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def stop_all(children: Iterable[ServerProcess], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM every live child (SIGCONT first, in case it is paused), then SIGKILL
    those still running after `grace` seconds; every one is reaped."""
    children = list(children)
    running = [c for c in children if c.alive]
    for child in running:
        assert child.process is not None
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signal.SIGCONT)
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in running:
        assert child.process is not None
        try:
            child.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
    for child in children:
        if child.process is not None:
            child._reap()


async def supervise(children: Sequence[ServerProcess], stop: asyncio.Event,
                    on_exit: Callable[[ServerProcess], None], poll_s: float = 0.2) -> bool:
    """Watch the children until `stop` is set (True) or none is left running (False);
    `on_exit(child)` is called once for each child that exits meanwhile."""
    reported: set[int] = set()
    while not stop.is_set():
        for child in children:
            if not child.alive and id(child) not in reported:
                reported.add(id(child))
                on_exit(child)
        if len(reported) == len(children):
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), poll_s)
    return True


def config_toml(settings: Mapping[str, object], peers: Mapping[int, str],
                comment: Sequence[str] = ()) -> str:
    """A `dengine serve --config` file (JSON scalars are valid TOML scalars)."""
    lines = [f"# {line}" for line in comment]
    lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    lines += ["", "[peers]"]
    lines += [f'"{node_id}" = {json.dumps(addr)}' for node_id, addr in sorted(peers.items())]
    return "\n".join(lines) + "\n"

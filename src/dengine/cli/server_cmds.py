"""`dengine serve` (one node) and `dengine cluster up` (a local multi-process cluster)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dengine.config import NATIVE_PORT_OFFSET, NodeConfig, parse_peer
from dengine.errors import ConfigError, DengineError

if TYPE_CHECKING:
    from dengine.server.supervisor import ServerProcess

# How long `cluster up` waits for a leader before saying so.
READY_TIMEOUT_S = 30.0


# One line per NodeConfig field: the help of its `dengine serve` flag and of its row in
# docs/operations.md ("Configuration").
SETTINGS_HELP = {
    "data_dir": "Directory of this node's log, state machine and snapshots.",
    "node_id": "This node's id (a positive integer, unique in the cluster).",
    "cluster_id": "The cluster's id (default: derived from the initial cluster token and "
                  "members at the first start, then kept in the data dir); data dirs and "
                  "peers of another cluster are refused.",
    "initial_cluster_token": "A token unique to this cluster, from which (with the initial "
                             "members) its id is derived at the first start (etcd's flag).",
    "listen_peer": "HOST:PORT (or http://HOST:PORT) to bind for Raft traffic from the other "
                   "nodes (etcd: --listen-peer-urls).",
    "listen_client": "HOST:PORT (or http://HOST:PORT) to bind for the gRPC client API "
                     "(etcd: --listen-client-urls).",
    "initial_advertise_peer_urls": "The peer address the other members reach this node at "
                                   "(its address in the membership; default: listen_peer).",
    "advertise_client_urls": "The client address clients reach this node at (redirects, "
                             "Status, MemberList; default: listen_client).",
    "listen_client_native": "HOST:PORT of the native client protocol (port 0: any free "
                            "port; auto: listen_client's host and port + 200; empty: off).",
    "peers": "The other members at first start: ID=HOST:PORT of their peer listener.",
    "join": "Client address(es) of a running cluster to join as a learner (first start).",
    "auto_promote": "With --join: the leader promotes this learner to voter once caught up.",
    "tick_ms": "Logical clock period of the Raft core.",
    "election_timeout_ms": "Minimum election timeout; each node picks one in [min, 2*min).",
    "heartbeat_interval_ms": "How often the leader sends heartbeats.",
    "lease_read": "Serve 'lease' reads from the leader's lease (else as linearizable).",
    "clock_drift_ms": "Assumed clock drift bound; lease = election timeout - drift.",
    "max_entries_per_msg": "Entries per AppendEntries message.",
    "max_bytes_per_msg": "Bytes per AppendEntries message.",
    "max_inflight_msgs": "AppendEntries in flight per follower (pipelining window).",
    "batch_writes": "Propose the key-value writes of one loop turn as one log entry "
                    "(while every other member announces that it applies them).",
    "max_key_size": "Largest key accepted, in bytes.",
    "max_value_size": "Largest value accepted, in bytes.",
    "max_request_size": "Largest client request (a batch of commands or keys), in bytes.",
    "max_read_keys": "Most keys in one Read request.",
    "max_response_bytes": "Largest Read response (the values it returns), in bytes; a larger "
                          "one is refused with INVALID_REQUEST.",
    "max_client_connections": "Most connections on each client listener (gRPC, native); "
                              "more are closed as they arrive.",
    "max_peer_connections": "Most inbound connections on the peer listener.",
    "max_client_rpcs": "gRPC calls in progress at once on the client port (streams "
                       "included); more are refused (ResourceExhausted): with the largest "
                       "message, this bounds what partial requests can hold.",
    "max_client_streams": "gRPC calls at once on one client connection (more wait in the "
                          "client).",
    "client_idle_timeout_s": "Close a client connection with no request for this long "
                             "(clients reconnect by themselves; 0: never).",
    "client_frontend": "The client port's gRPC server: wire (framed by hand, about a "
                       "quarter of grpc.aio's CPU per call; docs/grpc-frontend.md) or "
                       "grpcio (grpc.aio, the fallback). DENGINE_CLIENT_FRONTEND sets the "
                       "default.",
    "client_frame_timeout_s": "A native request frame must arrive whole within this many "
                              "seconds of its first byte, or the connection is closed.",
    "max_client_buffer_bytes": "Bytes of partial native request frames held for all "
                               "connections together; beyond, reading pauses.",
    "max_pending_writes": "Write requests being served at once; more get OVERLOADED "
                          "(retryable, not applied).",
    "max_pending_write_bytes": "Bytes of the write requests being served; more get "
                               "OVERLOADED (retryable, not applied).",
    "max_pending_proposals": "Writes proposed through the node (embedded and remote "
                             "callers together) not yet answered; more get 'etcdserver: "
                             "too many requests' (OVERLOADED: retryable, not applied).",
    "max_pending_proposal_bytes": "Bytes of those writes; more get 'etcdserver: too many "
                                  "requests' (a lone write is always admitted).",
    "max_request_bytes": "Largest etcd API request, in bytes (etcd's --max-request-bytes); "
                         "larger: 'etcdserver: request is too large'.",
    "max_txn_ops": "Most compares, and most ops of each branch, in one etcd Txn (etcd's "
                   "--max-txn-ops).",
    "auto_compaction_mode": "Automatic compaction of the MVCC history (etcd's flag): "
                            "revision (keep the last N revisions) or periodic (keep a "
                            "duration of history).",
    "auto_compaction_retention": "Revisions to keep (revision mode), or a duration such as "
                                 "1h, 30m (periodic; a bare number is hours); 0: off.",
    "watch_progress_notify_interval_s": "An etcd watch that asked for progress_notify gets "
                                        "an empty response after this long without one "
                                        "(etcd's --experimental-watch-progress-notify-"
                                        "interval; 0: never).",
    "wal_checkpoint_bytes": "State machine WAL size that triggers a checkpoint.",
    "snapshot_threshold_entries": "Applied entries since the last snapshot that trigger one "
                                  "(0: no entry-count trigger).",
    "snapshots_to_keep": "Snapshots kept on disk.",
    "snapshot_interval_s": "Also take a snapshot this often when entries were applied (0: off).",
    "snapshot_chunk_bytes": "Chunk size when a snapshot is streamed to a follower.",
    "log_segment_bytes": "Raft log segment size; compaction frees whole segments.",
    "promote_lag": "A learner within this many entries of the leader counts as caught up.",
    "cert_file": "TLS on the client ports (gRPC with etcd's API, native): this node's "
                 "certificate, PEM (etcd's --cert-file).",
    "key_file": "The key of cert_file, PEM (etcd's --key-file).",
    "trusted_ca_file": "CA whose client certificates client_cert_auth accepts; also "
                       "trusted when forwarding to other nodes' client ports (etcd's "
                       "--trusted-ca-file).",
    "client_cert_auth": "Require a client certificate signed by trusted_ca_file on the "
                        "client ports (etcd's --client-cert-auth).",
    "peer_cert_file": "Mutual TLS on the peer links: this node's peer certificate, used as "
                      "server and as client (etcd's --peer-cert-file).",
    "peer_key_file": "The key of peer_cert_file (etcd's --peer-key-file).",
    "peer_trusted_ca_file": "The cluster's CA: peers must present a certificate it signed, "
                            "both ways (etcd's --peer-trusted-ca-file).",
    "listen_metrics": "HOST:PORT of the HTTP endpoint serving /metrics (Prometheus) and "
                      "/health (empty: off).",
    "log_level": "debug, info, warning or error.",
    "log_format": "text, or json: one JSON object per line with the node id and term.",
    "pid_file": "Write the server's pid to this file while it runs (removed at exit).",
}


def _setting_flag(name: str) -> str:
    return {"node_id": "--id", "peers": "--peer"}.get(name, "--" + name.replace("_", "-"))


# etcd's names of the same flags
_FLAG_ALIASES = {"listen_peer": ("--listen-peer-urls",),
                 "listen_client": ("--listen-client-urls",)}


def _setting_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """One `dengine serve` flag per NodeConfig field (unset flags are None: TOML wins)."""
    defaults = NodeConfig()
    for f in reversed(dataclasses.fields(NodeConfig)):
        flag, default = _setting_flag(f.name), getattr(defaults, f.name)
        text = SETTINGS_HELP.get(f.name, f.name.replace("_", " "))
        shown = default if default != "" else "none"
        if f.name == "peers":
            option = click.option(flag, "peers", multiple=True, metavar="ID=HOST:PORT",
                                  help=text + " Repeat for each.")
        elif isinstance(default, bool):
            option = click.option(f"{flag}/--no-{flag[2:]}", f.name, default=None,
                                  help=f"{text}  [default: {shown}]")
        else:
            option = click.option(flag, *_FLAG_ALIASES.get(f.name, ()), f.name,
                                  type=type(default), default=None,
                                  help=f"{text}  [default: {shown}]")
        command = option(command)
    return command


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="TOML file of settings, same names as the flags with underscores "
                   "(flags win over it).")
@_setting_options
def serve(config_file: str | None, peers: tuple[str, ...], **settings: Any) -> None:
    """Run one node with its client API until SIGTERM or Ctrl-C."""
    from dengine.server import run_server

    config = serve_config(config_file, peers, settings)
    with pid_file(config.pid_file):
        code = run_server(config)
    sys.exit(code)


@contextlib.contextmanager
def pid_file(path: str) -> Iterator[None]:
    """Write this process's pid to `path` ("" = nothing) for as long as it runs."""
    if not path:
        yield
        return
    target = Path(path)
    try:
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, target)
    except OSError as e:
        raise ConfigError(f"cannot write the pid file {path}: {e.strerror}") from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            if int(target.read_text().strip()) == os.getpid():
                target.unlink()


def serve_config(config_file: str | None, peers: Sequence[str], settings: dict[str, Any]
                 ) -> NodeConfig:
    """Defaults, then the TOML file, then the flags that were given (None = not given)."""
    config = NodeConfig.from_toml(config_file) if config_file else NodeConfig()
    return config.replace(
        **settings, peers=dict(parse_peer(p) for p in peers) if peers else None
    ).validate()


@click.group()
def cluster() -> None:
    """A local multi-process cluster for development and demos."""


def dengine_command() -> str:
    """How to run this same `dengine` from a shell: `dengine` when that is what is on
    PATH, else the script's full path, else `python -m dengine` of this interpreter."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is not None and script.name == "dengine" and script.is_file():
        on_path = shutil.which("dengine")
        if on_path is not None and Path(on_path).resolve() == script.resolve():
            return "dengine"
        return shlex.quote(str(script.resolve()))
    return shlex.join([sys.executable, "-m", "dengine"])


class _Report:
    """What `cluster up` tells: lines of text, or one JSON object per line (--json)."""

    def __init__(self, as_json: bool) -> None:
        self.json = as_json

    def __call__(self, event: str, text: str, *, err: bool = False, **fields: Any) -> None:
        if self.json:
            click.echo(json.dumps({"event": event, **fields}))
        else:
            click.echo(text, err=err)


@cluster.command("up")
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True)
@click.option("--base-dir", default="./dengine-cluster", show_default=True,
              type=click.Path(file_okay=False), help="Holds node<N>/ data, .toml and .log.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--client-port", type=click.IntRange(1, 65535), default=9081, show_default=True,
              help="Client port of node 1; node N uses client-port + N - 1.")
@click.option("--peer-port", type=click.IntRange(1, 65535), default=9181, show_default=True,
              help="Peer port of node 1; node N uses peer-port + N - 1.")
@click.option("--native-port", type=click.IntRange(1, 65535), default=None,
              help="Native client port of node 1; node N uses native-port + N - 1  "
                   "[default: client-port + 200]")
@click.option("--cluster-id", default="",
              help="The cluster's id  [default: derived from the token and the members]")
@click.option("--initial-cluster-token", default="",
              help="Token the cluster's id is derived from  [default: the base dir's path]")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object per line (events: node, endpoints, ready, exited, "
                   "stopping, stopped).")
def cluster_up(nodes: int, base_dir: str, host: str, client_port: int, peer_port: int,
               native_port: int | None, cluster_id: str, initial_cluster_token: str,
               log_level: str, as_json: bool) -> None:
    """Start NODES local server processes in the foreground; Ctrl-C stops them all.

    The processes stop too if this command dies, even by kill -9 (docs/operations.md).
    A node restarted by hand with the command this prints is stopped by Ctrl-C too (it
    writes DIR/node<N>.pid).
    """
    from dengine.server.process import ensure_port_free
    from dengine.server.supervisor import ServerProcess, config_toml

    base = Path(base_dir).resolve()
    clients = {n: f"{host}:{client_port + n - 1}" for n in range(1, nodes + 1)}
    peers = {n: f"{host}:{peer_port + n - 1}" for n in range(1, nodes + 1)}
    native_base = client_port + NATIVE_PORT_OFFSET if native_port is None else native_port
    natives = {n: f"{host}:{native_base + n - 1}" for n in clients}
    for n in clients:
        for addr in (clients[n], peers[n], natives[n]):
            ensure_port_free(addr, "; pick other ports with --client-port, --peer-port and "
                                   "--native-port")
    base.mkdir(parents=True, exist_ok=True)
    command = dengine_command()
    children = []
    for n in clients:
        settings: dict[str, Any] = {
            "data_dir": str(base / f"node{n}"), "node_id": n,
            "initial_cluster_token": initial_cluster_token or str(base),
            "listen_client": clients[n], "listen_peer": peers[n],
            "listen_client_native": natives[n], "log_level": log_level,
            "pid_file": str(base / f"node{n}.pid")}
        if cluster_id:
            settings["cluster_id"] = cluster_id
        child = ServerProcess(n, base / f"node{n}.toml", base / f"node{n}.log")
        child.config_file.write_text(config_toml(
            settings, {i: a for i, a in peers.items() if i != n},
            ["Written by `dengine cluster up`; restart this node with",
             f"{command} serve --config {shlex.quote(str(child.config_file))}"]))
        children.append(child)
    sys.exit(asyncio.run(_run_cluster(children, clients, peers, natives, command,
                                      _Report(as_json))))


async def _run_cluster(children: list[ServerProcess], clients: dict[int, str],
                       peers: dict[int, str], natives: dict[int, str], command: str,
                       report: _Report) -> int:
    """Start the children, report readiness, and stop every one of them on the way out
    (and the nodes restarted by hand meanwhile)."""
    from dengine.server.supervisor import stop_all, supervise

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        for child in children:
            child.start()
            n = child.node_id
            report("node", f"node {n}: pid {child.pid}, client {clients[n]} (native "
                   f"{natives[n]}), peer {peers[n]}, log {child.log_file}", node_id=n,
                   pid=child.pid, client=clients[n], native=natives[n], peer=peers[n],
                   log=str(child.log_file), config=str(child.config_file))
        endpoints = ",".join(clients.values())
        report("endpoints", f"endpoints: {endpoints}", endpoints=list(clients.values()))
        await _report_ready(children, endpoints, stop, report)

        def exited(child: ServerProcess) -> None:
            code = child.process.returncode if child.process is not None else None
            restart = f"{command} serve --config {shlex.quote(str(child.config_file))}"
            report("exited", f"node {child.node_id} exited with code {code} (see "
                   f"{child.log_file}); restart it with: {restart}", err=True,
                   node_id=child.node_id, code=code, log=str(child.log_file), restart=restart)

        if await supervise(children, stop, exited):
            return 0
        report("exited", "every node has exited", err=True, node_id=None)
        return 1
    finally:
        report("stopping", "stopping the cluster ...")
        by_hand = _restarted_by_hand(children)
        stop_all(children)
        for node_id, pid in by_hand:
            report("stopping", f"stopping node {node_id} (pid {pid}, restarted by hand)",
                   node_id=node_id, pid=pid)
        _stop_pids([pid for _, pid in by_hand])
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        report("stopped", "stopped")


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _restarted_by_hand(children: list[ServerProcess]) -> list[tuple[int, int]]:
    """(node id, pid) of the nodes of this cluster that run outside `cluster up` (its own
    child exited, and the pid file of its config names a live `dengine serve` of it)."""
    from dengine.config import NodeConfig

    out = []
    for child in children:
        if child.alive:
            continue
        try:
            path = NodeConfig.from_toml(str(child.config_file)).pid_file
            pid = int(Path(path).read_text().strip()) if path else 0
        except (DengineError, OSError, ValueError):
            continue
        if pid > 0 and _serves(pid, child.config_file):
            out.append((child.node_id, pid))
    return out


def _serves(pid: int, config_file: Path) -> bool:
    """Whether `pid` is a live process running `serve --config config_file` (where /proc
    tells; elsewhere whether it is alive)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    return b"serve" in argv and any(
        Path(os.fsdecode(a)).name == config_file.name for a in argv if a)


def _stop_pids(pids: list[int], grace: float = 10.0) -> None:
    """SIGTERM each, SIGKILL those still alive after `grace` seconds (not our children:
    polled)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _alive(p)]
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _report_ready(children: list[ServerProcess], endpoints: str,
                        stop: asyncio.Event, report: _Report) -> None:
    from dengine.client import Client

    deadline = time.monotonic() + READY_TIMEOUT_S
    async with Client(endpoints, timeout=1.0) as client:
        while not stop.is_set() and time.monotonic() < deadline:
            if not any(c.alive for c in children):
                return
            try:
                leader = await client.leader(timeout=1.0)
            except DengineError:
                await asyncio.sleep(0.1)
                continue
            report("ready", f"ready: leader is node {leader.id} at {leader.address or '?'} "
                   f"(term {leader.term}); press Ctrl-C to stop", leader_id=leader.id,
                   leader_address=leader.address, term=leader.term)
            return
    if not stop.is_set():
        report("no_leader", f"no leader after {READY_TIMEOUT_S:g}s; check the node logs",
               err=True)

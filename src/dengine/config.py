"""Node configuration: one dataclass, loadable from TOML, overridable by flags.

Every setting has the same name in TOML and (with dashes) as a `dengine serve` flag.
Flags win over the file; the file wins over the defaults below.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tomllib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dengine.errors import ConfigError

CLIENT_FRONTENDS = ("grpcio", "wire")  # the client port's gRPC servers

if TYPE_CHECKING:
    from dengine.raft import RaftConfig
    from dengine.tls import ClientTls, PeerTls, ServerTls


@dataclass
class NodeConfig:
    """Everything a node needs to run. Defaults give a one-node cluster on localhost."""

    data_dir: str = "./dengine-data"
    node_id: int = 1
    # The cluster's id: "" = derived from initial_cluster_token and the initial members
    # (this node and `peers`) at the first start, then read from the data dir.
    cluster_id: str = ""
    initial_cluster_token: str = ""
    # What this node binds (etcd's --listen-peer-urls / --listen-client-urls; HOST:PORT or
    # http://HOST:PORT). listen_peer "" = no peer listener: a lone node that cannot grow
    # (the embedded Engine's default).
    listen_peer: str = "127.0.0.1:9181"
    listen_client: str = "127.0.0.1:9081"
    # What the others are told (etcd's flags): the address the members reach this node's
    # peer listener at (in the membership), and the one clients reach its client port at
    # (redirects, Status, MemberList); "" = the listen address. Behind NAT or in a
    # container, where the bound address is not the reachable one.
    initial_advertise_peer_urls: str = ""
    advertise_client_urls: str = ""
    # The native (framed TCP) client listener of `dengine serve`: HOST:PORT (port 0: any
    # free port, new at every start), "auto" = listen_client's host and its port +
    # NATIVE_PORT_OFFSET (9281 by default), "" = none (gRPC only).
    listen_client_native: str = "auto"
    # Other members at first start: {node_id: "host:port" of their peer listener}.
    peers: dict[int, str] = field(default_factory=dict)
    # Ask this cluster (a client endpoint) to add us as a learner instead of bootstrapping.
    join: str = ""
    auto_promote: bool = True

    # Timing. The Raft core counts ticks; the driver ticks every tick_ms of monotonic time.
    tick_ms: int = 10
    election_timeout_ms: int = 300  # minimum; each node randomizes in [min, 2*min)
    heartbeat_interval_ms: int = 50
    lease_read: bool = True
    clock_drift_ms: int = 30  # lease = election timeout - drift bound

    # Replication batching.
    max_entries_per_msg: int = 4096
    max_bytes_per_msg: int = 4 * 1024 * 1024
    max_inflight_msgs: int = 64
    # The key-value writes proposed in one loop turn as one log entry (a batch: docs/
    # formats.md, "Batch entries"), while every other member announces that it applies
    # them (its Hello's log_format; an older release would apply one as a rejected command
    # and diverge). DENGINE_BATCH_WRITES=0 sets the default off (benchmarks, test runs).
    batch_writes: bool = field(
        default_factory=lambda: os.environ.get("DENGINE_BATCH_WRITES", "1") != "0")

    # Limits on client input.
    max_key_size: int = 4 * 1024
    max_value_size: int = 1024 * 1024
    max_request_size: int = 8 * 1024 * 1024
    max_read_keys: int = 10_000  # keys in one Read request
    max_response_bytes: int = 32 * 1024 * 1024  # values in one Read response

    # Limits on client and peer connections (per listener) and on the load they bring.
    max_client_connections: int = 1024  # each of the gRPC and the native listener
    max_peer_connections: int = 64  # inbound connections of the peer listener
    max_client_rpcs: int = 1024  # gRPC calls in progress at once (streams too); beyond: refused
    max_client_streams: int = 1024  # gRPC calls at once on one connection
    client_idle_timeout_s: float = 600.0  # close a client connection idle this long (0: never)
    # The gRPC server of the client port: "wire" (framed by hand, ~4x less CPU per call
    # than grpc.aio; docs/grpc-frontend.md) or "grpcio" (grpc.aio, the fallback for one
    # release). DENGINE_CLIENT_FRONTEND sets the default, so that a test suite can run
    # against either.
    client_frontend: str = dataclasses.field(
        default_factory=lambda: os.environ.get("DENGINE_CLIENT_FRONTEND", "wire"))
    client_frame_timeout_s: float = 30.0  # a native request frame must arrive whole in this
    max_client_buffer_bytes: int = 64 * 1024 * 1024  # partial native frames, all connections
    max_pending_writes: int = 4096  # write requests being served; beyond: OVERLOADED
    max_pending_write_bytes: int = 1024 * 1024  # their bytes; beyond: OVERLOADED
    # Commands (and their bytes) proposed through this node's Engine and not yet answered,
    # whoever proposed them (embedded callers and the listeners together); beyond: etcd's
    # "too many requests" (OVERLOADED). Above the listeners' own limits, so that these
    # bind first for remote clients.
    max_pending_proposals: int = 16384
    max_pending_proposal_bytes: int = 64 * 1024 * 1024
    # etcd's API: etcd's flags and defaults.
    max_request_bytes: int = 1536 * 1024  # an etcd request; beyond: "request is too large"
    max_txn_ops: int = 128  # compares, and ops of each branch, in one etcd Txn
    # Automatic compaction of the MVCC history: "revision" keeps the last
    # `auto_compaction_retention` revisions (an integer), "periodic" keeps that long a
    # history (a duration: 1h, 30m, 90s; a bare number is hours, as etcd's); retention
    # "0" turns it off.
    auto_compaction_mode: str = "revision"
    auto_compaction_retention: str = "10000"
    # etcd's --experimental-watch-progress-notify-interval: an etcd watch that asked for
    # progress_notify gets an empty response after this long without one (0: never).
    watch_progress_notify_interval_s: float = 600.0

    # Storage and compaction.
    wal_checkpoint_bytes: int = 64 * 1024 * 1024
    snapshot_threshold_entries: int = 100_000  # 0: no entry-count trigger
    snapshots_to_keep: int = 2
    snapshot_interval_s: float = 0.0  # also snapshot this often when entries were applied (0: off)
    snapshot_chunk_bytes: int = 1024 * 1024  # InstallSnapshot streaming chunk size
    log_segment_bytes: int = 64 * 1024 * 1024  # compaction frees whole segments
    promote_lag: int = 1000  # a learner within this many entries of the leader is caught up

    # TLS (etcd's flags; docs/operations.md "TLS"). Client listeners (gRPC with etcd's
    # API, native): a certificate and key turn TLS on; client_cert_auth also requires a
    # client certificate signed by trusted_ca_file. Peers: all three peer files turn on
    # mutual TLS (both sides present a certificate of the cluster's CA).
    cert_file: str = ""
    key_file: str = ""
    trusted_ca_file: str = ""
    client_cert_auth: bool = False
    peer_cert_file: str = ""
    peer_key_file: str = ""
    peer_trusted_ca_file: str = ""

    # Prometheus metrics and /health over HTTP: HOST:PORT ("" = off; port 0: any free port).
    listen_metrics: str = ""

    log_level: str = "info"
    log_format: str = "text"  # or "json": one object per line, with node id and term
    # `dengine serve` writes its pid here while it runs ("" = nowhere).
    pid_file: str = ""

    def initial_cluster_id(self) -> str:
        """The cluster id a first start derives (etcd's way): 16 hex digits of the SHA-256
        of the initial cluster token and the initial members (this node at listen_peer
        and `peers`), so that every initial member, configured alike, derives the same id
        and two clusters differ (give each its own token: members alone may repeat)."""
        text = "\n".join(["dengine-cluster", self.initial_cluster_token,
                          *self.initial_members().split(",")])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def __post_init__(self) -> None:
        # etcd's URL form (http://HOST:PORT) is accepted wherever an address is
        for name in _ADDRESS_SETTINGS:
            value = getattr(self, name)
            if isinstance(value, str) and "://" in value:
                setattr(self, name, url_address(value))

    @property
    def peer_address(self) -> str:
        """Where the other members reach this node's peer listener (advertised)."""
        return self.initial_advertise_peer_urls or self.listen_peer

    @property
    def client_address(self) -> str:
        """Where clients reach this node's gRPC client port (advertised)."""
        return self.advertise_client_urls or self.listen_client

    def initial_members(self) -> str:
        """The initial members, "ID=HOST:PORT,..." in id order (this node and `peers`)."""
        members = {self.node_id: self.peer_address, **self.peers}
        return ",".join(f"{i}={a}" for i, a in sorted(members.items()))

    @property
    def election_ticks(self) -> int:
        return max(2, self.election_timeout_ms // self.tick_ms)

    @property
    def heartbeat_ticks(self) -> int:
        return max(1, self.heartbeat_interval_ms // self.tick_ms)

    @property
    def lease_ticks(self) -> int:
        return max(0, (self.election_timeout_ms - self.clock_drift_ms) // self.tick_ms)

    def raft_config(self, applied: int) -> RaftConfig:
        """The Raft core's settings, for a node whose state machine applied `applied`."""
        from dengine.raft import RaftConfig  # not at import: clients read this module too

        return RaftConfig(
            id=self.node_id,
            election_tick=self.election_ticks,
            heartbeat_tick=self.heartbeat_ticks,
            max_entries_per_msg=self.max_entries_per_msg,
            max_bytes_per_msg=self.max_bytes_per_msg,
            max_inflight_msgs=self.max_inflight_msgs,
            lease_ticks=self.lease_ticks if self.lease_read else 0,
            applied=applied,
        )

    def validate(self) -> NodeConfig:
        """Raise ConfigError on a setting that cannot work; return self."""
        if self.node_id <= 0:
            raise ConfigError(f"node_id must be a positive integer, got {self.node_id}")
        if self.node_id in self.peers:
            raise ConfigError(f"peers must not contain this node's own id {self.node_id}")
        for name in ("tick_ms", "election_timeout_ms", "heartbeat_interval_ms",
                     "max_key_size", "max_value_size", "max_request_size",
                     "max_entries_per_msg", "max_bytes_per_msg", "max_inflight_msgs",
                     "max_read_keys", "max_response_bytes", "max_client_connections",
                     "max_peer_connections", "max_client_rpcs", "max_client_streams",
                     "client_frame_timeout_s",
                     "max_client_buffer_bytes", "max_pending_writes",
                     "max_pending_write_bytes", "max_pending_proposals",
                     "max_pending_proposal_bytes", "max_request_bytes", "max_txn_ops"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("snapshots_to_keep", "snapshot_chunk_bytes", "log_segment_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_response_bytes < self.max_value_size + 64:
            raise ConfigError("max_response_bytes must leave room for one value "
                              f"(max_value_size {self.max_value_size} + 64 bytes)")
        if self.max_client_buffer_bytes < self.max_request_size + 64:
            raise ConfigError("max_client_buffer_bytes must hold one request "
                              f"(max_request_size {self.max_request_size} + 64 bytes)")
        for name in ("snapshot_threshold_entries", "snapshot_interval_s", "promote_lag",
                     "client_idle_timeout_s", "watch_progress_notify_interval_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.heartbeat_interval_ms >= self.election_timeout_ms:
            raise ConfigError("heartbeat_interval_ms must be below election_timeout_ms")
        if self.lease_read and self.clock_drift_ms >= self.election_timeout_ms:
            raise ConfigError("clock_drift_ms must be below election_timeout_ms")
        if not self.listen_peer and (self.peers or self.join):
            raise ConfigError("listen_peer is needed with peers or join (\"\" = no peer "
                              "listener, for a node that stays alone)")
        for addr in [self.listen_peer or "0:1", self.listen_client, *self.peers.values()]:
            parse_address(addr)
        for name in ("initial_advertise_peer_urls", "advertise_client_urls"):
            value = getattr(self, name)
            if value:
                host, _ = parse_address(value)
                if host in ("0.0.0.0", "::"):
                    raise ConfigError(f"{name} must be an address others can reach, not the "
                                      f"wildcard {value!r}")
        if self.client_frontend not in CLIENT_FRONTENDS:
            raise ConfigError(f"client_frontend must be one of {', '.join(CLIENT_FRONTENDS)}, "
                              f"got {self.client_frontend!r}")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format must be 'text' or 'json', got {self.log_format!r}")
        self.auto_compaction()
        self.client_tls()
        self.peer_tls()
        if self.listen_metrics:
            parse_address(self.listen_metrics, allow_port_zero=True)
        if self.listen_client_native not in ("", "auto"):
            parse_address(self.listen_client_native, allow_port_zero=True)
        return self

    def auto_compaction(self) -> tuple[str, float]:
        """(mode, retention): revisions to keep ("revision") or seconds of history
        ("periodic"); retention 0 = no automatic compaction. ConfigError when invalid."""
        mode, text = self.auto_compaction_mode, str(self.auto_compaction_retention).strip()
        if mode == "revision":
            if not text.isdigit():
                raise ConfigError("auto_compaction_retention must be a number of revisions "
                                  f"in revision mode, got {text!r}")
            return mode, float(int(text))
        if mode == "periodic":
            return mode, parse_duration(text, "auto_compaction_retention")
        raise ConfigError(
            f"auto_compaction_mode must be 'revision' or 'periodic', got {mode!r}")

    def client_tls(self) -> ServerTls | None:
        """The client listeners' TLS, None for plaintext; ConfigError when incomplete or
        the files cannot be read."""
        if not (self.cert_file or self.key_file or self.trusted_ca_file
                or self.client_cert_auth):
            return None
        from dengine.tls import ServerFiles, ServerTls

        if not (self.cert_file and self.key_file):
            raise ConfigError("client TLS needs both cert_file and key_file "
                              "(--cert-file, --key-file)")
        return ServerTls(ServerFiles(self.cert_file, self.key_file, self.trusted_ca_file),
                         client_cert_auth=self.client_cert_auth, what="client TLS")

    def peer_tls(self) -> PeerTls | None:
        """The peer links' mutual TLS, None for plaintext; ConfigError when incomplete."""
        if not (self.peer_cert_file or self.peer_key_file or self.peer_trusted_ca_file):
            return None
        from dengine.tls import PeerTls, ServerFiles

        return PeerTls(ServerFiles(self.peer_cert_file, self.peer_key_file,
                                   self.peer_trusted_ca_file))

    def forward_tls(self) -> ClientTls | None:
        """How this node reaches other nodes' client ports (a follower forwarding a write
        to the leader, a joining node asking the cluster): TLS when its own client port
        has it, with its certificate as the client certificate, trusting trusted_ca_file
        (else peer_trusted_ca_file, else the system's CAs)."""
        if not self.cert_file:
            return None
        from dengine.tls import ClientTls

        return ClientTls(self.trusted_ca_file or self.peer_trusted_ca_file or None,
                         self.cert_file, self.key_file)

    @property
    def native_listen_address(self) -> str:
        """Where the native client listener binds: HOST:PORT, or "" when it is off."""
        if self.listen_client_native != "auto":
            return self.listen_client_native
        host, port = parse_address(self.listen_client)
        native = port + NATIVE_PORT_OFFSET
        if native > 65535:
            raise ConfigError(f"listen_client_native auto: port {port} + "
                              f"{NATIVE_PORT_OFFSET} is not a port; set listen_client_native")
        return f"[{host}]:{native}" if ":" in host else f"{host}:{native}"

    def advertised_native(self, bound: str) -> str:
        """The native listener's address announced in Status: the bound one, on the
        advertised client host when advertise_client_urls is set (publish the native port
        under the same number)."""
        if not self.advertise_client_urls or not bound:
            return bound
        host, _ = parse_address(self.advertise_client_urls)
        port = parse_address(bound, allow_port_zero=True)[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def replace(self, **changes: Any) -> NodeConfig:
        """A copy with `changes` applied (None values are ignored: unset flags)."""
        known = {f.name for f in dataclasses.fields(self)}
        for key in changes:
            if key not in known:
                raise ConfigError(f"unknown setting {key!r}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_toml(cls, path: str) -> NodeConfig:
        """Load a TOML file whose top-level keys are the field names of this class."""
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from None
        for alias, name in _TOML_ALIASES.items():  # etcd's names
            if alias in raw:
                if name in raw:
                    raise ConfigError(f"{path}: {alias} and {name} are the same setting")
                raw[name] = raw.pop(alias)
        if "peers" in raw:
            peers = raw["peers"]
            if not isinstance(peers, dict):
                raise ConfigError(f"{path}: peers must be a table of id = \"host:port\"")
            try:
                raw["peers"] = {int(k): str(v) for k, v in peers.items()}
            except ValueError:
                raise ConfigError(f"{path}: peer ids must be integers") from None
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        for key, value in raw.items():
            if key not in types:
                raise ConfigError(f"{path}: unknown setting {key!r}")
            expected = {"int": int, "str": str, "bool": bool}.get(str(types[key]))
            if expected is not None and (
                not isinstance(value, expected) or (expected is int and isinstance(value, bool))
            ):
                raise ConfigError(f"{path}: {key} must be {expected.__name__}, got {value!r}")
        return cls().replace(**raw)


# The native client port when listen_client_native is "auto": the client port + this
# (9081 -> 9281; peers are on 9181), the same at every start.
NATIVE_PORT_OFFSET = 200
_ADDRESS_SETTINGS = ("listen_peer", "listen_client", "listen_client_native",
                     "initial_advertise_peer_urls", "advertise_client_urls")
# etcd's names of two settings, accepted in a TOML file (and as flags).
_TOML_ALIASES = {"listen_peer_urls": "listen_peer", "listen_client_urls": "listen_client"}


def url_address(url: str) -> str:
    """HOST:PORT of etcd's URL form "http://HOST:PORT" (or "https://"); one URL only."""
    text = url.strip()
    if "," in text:
        raise ConfigError(f"{text!r}: one address only (dengine binds and advertises one)")
    scheme, _, rest = text.partition("://")
    if scheme not in ("http", "https") or not rest or "/" in rest.rstrip("/"):
        raise ConfigError(f"invalid URL {text!r}: expected http://HOST:PORT")
    return rest.rstrip("/")


def parse_address(addr: str, *, allow_port_zero: bool = False) -> tuple[str, int]:
    """Split "host:port" (IPv6 as "[::1]:port"); ConfigError when malformed. Port 0 (any
    free port) only where the bound address is announced (`allow_port_zero`)."""
    host, sep, port = addr.rpartition(":")
    low = 0 if allow_port_zero else 1
    if not sep or not host or not port.isdigit() or not low <= int(port) < 65536:
        raise ConfigError(f"invalid address {addr!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str, name: str) -> float:
    """Seconds of a duration as etcd's flags take it ("1h", "30m", "1h30m", "90s",
    "500ms"; a bare number is hours); ConfigError when malformed or negative."""
    text = text.strip()
    try:
        if text.replace(".", "", 1).isdigit():
            return float(text) * 3600.0
        total, number = 0.0, ""
        i = 0
        while i < len(text):
            c = text[i]
            if c.isdigit() or c == ".":
                number += c
                i += 1
                continue
            unit = "ms" if text.startswith("ms", i) else c
            if unit not in _UNITS or not number:
                raise ValueError(text)
            total += float(number) * _UNITS[unit]
            number = ""
            i += len(unit)
        if number or not text:
            raise ValueError(text)
        return total
    except ValueError:
        raise ConfigError(f"{name} must be a duration such as 1h, 30m or 90s (a bare "
                          f"number is hours), got {text!r}") from None


def parse_peer(spec: str) -> tuple[int, str]:
    """Parse a `--peer ID=HOST:PORT` flag."""
    node_id, sep, addr = spec.partition("=")
    if not sep or not node_id.isdigit() or int(node_id) <= 0:
        raise ConfigError(f"invalid peer {spec!r}: expected ID=HOST:PORT (ID a positive integer)")
    parse_address(addr)
    return int(node_id), addr

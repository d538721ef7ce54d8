"""The embedded API: a dengine node inside your asyncio program.

    async with await dengine.Engine.start("./data") as engine:
        await engine.wait_ready()
        await engine.put(b"k", b"v")
        value = await engine.get(b"k")            # linearizable by default

Keys and values are bytes; a `str` is accepted and encoded as UTF-8. Every error is a
`dengine.errors` exception: `NotLeader` (writes on a follower; carries the leader's id
and client address), `InvalidRequest` (bad input), `Timeout` (deadline passed, or its
subclass `LeadershipLost`: the leader was deposed and no leader settled the write; a
write's outcome is then unknown), `Unavailable` (stopped, no leader known for a read).

The servers' glue for etcd's API: `kv_request` proposes an encoded etcd request as it is,
`read_query(fn, consistency)` answers `fn(store)` on the MVCC store at a consistency
level, `header_ids()` gives an etcd response header's ids; `compactor` is the automatic
compaction of the history (on the leader; `auto_compaction_*` settings).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, NamedTuple

from dengine.api import (
    Key,
    Leader,
    NodeStatus,
    PutResult,
    WatchFilter,
    WatchStream,
    WriteResult,
)
from dengine.config import NodeConfig
from dengine.errors import (
    InvalidRequest,
    KvError,
    Overloaded,
    Timeout,
    Unavailable,
)
from dengine.kv import (
    EVENTUAL,
    Consistency,
    Limits,
    as_bytes,
    check_encoded_commands,
    check_key,
    check_keys,
    check_value,
    check_write_size,
    consistency_name,
    encode_commands,
    encode_delete,
    encode_insert,
    etcd_check,
)
from dengine.kv import ops as kvops
from dengine.kv import watch as kvwatch
from dengine.kv.codec import OP_TXN, decode_request, stamp_command, stamp_request
from dengine.kv.etcd_check import TOO_MANY_REQUESTS
from dengine.node.compactor import KV_COMPACTION, AutoCompactor
from dengine.node.coordination import Coordination
from dengine.node.kv_api import EtcdKv
from dengine.node.lease_api import KV_LEASE_GRANT, KV_LEASE_REVOKE, EtcdLeases
from dengine.node.lessor import Lessor, min_ttl, read_index_round
from dengine.node.member_api import MemberApi
from dengine.node.node import Node
from dengine.node.watch import LocalWatch, WatchHub
from dengine.proto import WriteCommand
from dengine.proto.etcd.rpc_pb2 import TxnRequest
from dengine.raft import Role

DEFAULT_TIMEOUT = 5.0
_LOCAL_READS_PER_YIELD = 64  # eventual reads between two yields to the event loop

# The WriteCommand fields that carry an etcd request's bytes (common.proto).
KV_PUT, KV_DELETE_RANGE, KV_TXN = 3, 4, 5
KV_AUTH = 10  # an encoded dengine.AuthCommand (kv/auth.py; server/etcd/auth.py makes them)
KV_FIELDS = (KV_PUT, KV_DELETE_RANGE, KV_TXN, KV_COMPACTION, KV_LEASE_GRANT, KV_LEASE_REVOKE,
             KV_AUTH)


def wrap_kv_request(field: int, request: bytes) -> bytes:
    """The WriteCommand whose `field` (3-8, 10) holds `request` (an encoded etcd request), made
    without decoding it: tag byte, varint length, the bytes."""
    if field not in KV_FIELDS:
        raise InvalidRequest(f"not a request field of WriteCommand: {field}")
    n = len(request)
    head = bytearray((field << 3 | 2,))
    while n >= 0x80:
        head.append(n & 0x7F | 0x80)
        n >>= 7
    head.append(n)
    return bytes(head) + request


def etcd_cluster_id(cluster_id: str) -> int:
    """The cluster id of etcd's response headers (a uint64): the first 8 bytes, big-endian,
    of the SHA-256 of dengine's cluster id string."""
    return int.from_bytes(hashlib.sha256(cluster_id.encode()).digest()[:8], "big")


class HeaderIds(NamedTuple):
    """What an etcd response header says of the member that answers (its `revision` is
    the store's)."""

    cluster_id: int
    member_id: int
    raft_term: int


class Engine(EtcdKv, EtcdLeases, MemberApi, Coordination):
    """One dengine node running in this process. Create it with `await Engine.start(...)`."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._limits = Limits.of(node.config)
        self._local_reads = 0
        # writes proposed through this engine and not yet answered (see `_admit`)
        self._pending_proposals = 0
        self._pending_proposal_bytes = 0
        self._max_pending_proposals = node.config.max_pending_proposals
        self._max_pending_proposal_bytes = node.config.max_pending_proposal_bytes
        # (the node is started: its cluster id is set, derived or read from the data dir)
        self._etcd_cluster_id = etcd_cluster_id(node.config.cluster_id)
        self._put_ids = (0, 0, -1)  # a plain put's header ids (PutResult.with_ids), per term
        mode, retention = node.config.auto_compaction()
        self.compactor = AutoCompactor(
            mode, retention, is_leader=lambda: self.is_leader, read=self.read_query,
            propose=self.kv_request,
        )
        config = node.config
        self.min_lease_ttl = min_ttl(config.election_timeout_ms)
        self.lessor = Lessor(
            election_timeout_s=config.election_timeout_ms / 1000.0,
            is_leader=lambda: self.is_leader, term=lambda: node.term,
            applied_index=lambda: node.applied_index,
            last_index=lambda: node.status().last_log_index,
            read_local=node.query_local, propose=self.kv_request,
            confirm=read_index_round(node), not_leader=node.not_leader,
        )

    @classmethod
    async def start(
        cls,
        data_dir: str = "./dengine-data",
        *,
        config: NodeConfig | None = None,
        **settings: Any,
    ) -> Engine:
        """Open (or create) the data dir and start the node.

        `settings` are NodeConfig field names (node_id=, cluster_id=, listen_peer=,
        peers={id: "host:port"}, listen_client=, tick_ms=, ...) and win over `config`.
        Without `config`, a node given no peers, no join and no listen_peer binds no port
        at all (it runs alone); with a listen_peer it listens for peers there (so that it
        can grow); if that address is taken, a lone node runs anyway and logs a warning.
        """
        base = config or NodeConfig()
        if config is None or data_dir != "./dengine-data":
            settings.setdefault("data_dir", data_dir)
        if config is None and not settings.get("peers") and not settings.get("join"):
            settings.setdefault("listen_peer", "")
        node = Node(base.replace(**settings))
        await node.start()
        engine = cls(node)
        engine.compactor.start()
        engine.lessor.start()
        return engine

    async def wait_failure(self) -> BaseException:
        """Wait until the node stops on a fatal storage failure (a full disk, an I/O error);
        returns the error. Such a node has given up leadership and closed its peer
        connections; its calls raise StorageError. Restart it (`Engine.start`) once the
        disk is fixed: nothing acknowledged is lost."""
        return await self._node.wait_failure()

    async def stop(self) -> None:
        """Stop the node cleanly: pending writes get Timeout, storage is flushed and closed."""
        await self.compactor.stop()
        await self.lessor.stop()
        await self._node.stop()

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- properties ----------------------------------------------------------------------

    @property
    def config(self) -> NodeConfig:
        return self._node.config

    @property
    def node_id(self) -> int:
        return self._node.node_id

    @property
    def leader_id(self) -> int:
        """The leader this node knows of (0: none)."""
        return self._node.leader_id

    @property
    def term(self) -> int:
        """This node's current Raft term."""
        return self._node.term

    @property
    def is_leader(self) -> bool:
        return self._node.role == Role.LEADER

    @property
    def running(self) -> bool:
        """Whether the node serves (not stopped, failed or removed)."""
        return self._node.running

    def leader_address(self) -> str:
        """The client address of the leader this node knows ("" if none or not known)."""
        return self._node.leader_address()

    def status(self) -> NodeStatus:
        return self._node.status()

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until a leader is known and this node applied the commit index seen then."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        interval = self.config.tick_ms / 1000.0
        target: int | None = None
        while True:
            if not self._node.running:
                self._node.check_running()
            st = self._node.status()
            if target is None and st.leader_id:
                target = st.commit_index
            if target is not None and st.leader_id and st.applied_index >= target:
                return
            if loop.time() >= deadline:
                raise Timeout(
                    f"node {self.node_id} not ready after {timeout}s "
                    f"(leader {st.leader_id or 'unknown'}, applied {st.applied_index}, "
                    f"commit {st.commit_index})"
                )
            await asyncio.sleep(interval)

    # -- writes --------------------------------------------------------------------------

    async def put(
        self, key: Key, value: Key, *, prev_kv: bool = False, lease: int = 0,
        timeout: float | None = None,
    ) -> PutResult:
        """Set `key` to `value`; returns once applied (on a quorum's logs, this node's SM)
        with the revision it made (and, with `prev_kv`, the key as it was before)."""
        if prev_kv or lease:
            request = kvops.put_request(key, value, prev_kv=prev_kv, lease=lease)
            return kvops.put_result(await self._kv(KV_PUT, request, timeout))
        # The hot path of the engine: validate and encode without the generic batch code.
        limits = self._limits
        if type(key) is not bytes or not key or len(key) > limits.max_key_size:
            key = check_key(as_bytes(key, "key"), limits)  # (raises for a bad key)
        if type(value) is not bytes or len(value) > limits.max_value_size:
            value = check_value(as_bytes(value, "value"), limits)
        data = encode_insert(key, value)
        if len(data) > limits.max_request_size:
            check_write_size(len(data), limits)
        size = len(data)
        # `_admit(1, size)`, its test inline (~0.15 us per put): refused only past a limit
        pending = self._pending_proposals
        if pending and (pending >= self._max_pending_proposals
                        or self._pending_proposal_bytes + size
                        > self._max_pending_proposal_bytes):
            raise self._overloaded()
        self._pending_proposals = pending + 1
        self._pending_proposal_bytes += size
        node = self._node
        try:
            [result] = await node.propose(
                [data], DEFAULT_TIMEOUT if timeout is None else self._timeout(timeout))
        finally:
            self._pending_proposals -= 1
            self._pending_proposal_bytes -= size
        ids = self._put_ids
        term = node.term
        if ids[2] != term:
            ids = self._put_ids = (self._etcd_cluster_id, node.node_id, term)
        return PutResult.with_ids(result.revision, ids)

    async def delete(self, key: Key, *, timeout: float | None = None) -> None:
        """Remove `key` (a no-op result if absent); returns once applied."""
        key = check_key(key if type(key) is bytes else as_bytes(key, "key"), self._limits)
        await self._propose([encode_delete(key)], timeout)

    async def write(
        self, commands: Sequence[WriteCommand], *, timeout: float | None = None
    ) -> list[WriteResult]:
        """Apply a batch of commands (atomically ordered, consecutive log entries)."""
        encoded = encode_commands(commands, self._limits)
        return await self._propose(encoded, timeout)

    async def write_encoded(
        self, commands: Sequence[bytes], *, timeout: float | None = None,
        forwarded: bool = False, auth_info: bytes = b"",
    ) -> list[WriteResult]:
        """`write` of commands already encoded (`WriteCommand` bytes, as a client sent them):
        validated as the state machine will decode them, proposed as they are.
        `forwarded`, `auth_info` (every command that writes is stamped with it): as for
        `kv_request`."""
        check_encoded_commands(commands, self._limits)
        for command in commands:
            request = decode_request(command)
            if request is not None and request[0] == OP_TXN:
                await self.probe_txn_answer(request[2])
        if auth_info:
            commands = [stamp_command(command, auth_info) for command in commands]
        return await self._propose(list(commands), timeout, forwarded=forwarded)

    async def kv_request(
        self, field: int, request: bytes, *, timeout: float | None = None,
        forwarded: bool = False, auth_info: bytes = b"",
    ) -> WriteResult:
        """Propose an encoded etcd request (`field`: KV_PUT, KV_DELETE_RANGE, KV_TXN or
        KV_COMPACTION) as it is, checked beforehand by the caller (`kv.etcd_check`); its
        result once applied here (NotLeader on a follower: nothing was proposed).
        `forwarded`: a follower sent it and waits for its own apply of it (the followers
        are told its commit at once). `auth_info` (put, delete range, txn, lease revoke
        only): the encoded `AuthInfo` its permission was checked with while auth is on
        (`Gate.check_write`), checked again as it applies."""
        command = self.kv_command(field, request, auth_info)
        if field == KV_TXN:
            await self.probe_txn_answer(request)
        results = await self._propose([command], timeout, forwarded=forwarded)
        return results[0]

    def kv_command(self, field: int, request: bytes, auth_info: bytes = b"") -> bytes:
        """The command `kv_request` proposes, once its size is checked (a txn is also
        probed, `probe_txn_answer`): a follower forwarding the request runs the same
        checks before it sends it on."""
        command = wrap_kv_request(field, request)
        if auth_info:
            command = stamp_request(command, auth_info)
        if len(command) > self._limits.max_request_size:
            check_write_size(len(command), self._limits)
        return command

    def leader_elsewhere(self) -> str:
        """The client address of the leader when this node runs as a follower that
        knows it ("" otherwise: a proposal here would be taken, or fail)."""
        node = self._node
        if node.role is Role.LEADER or not node.leader_id or not node.running:
            return ""
        return node.leader_address()

    async def probe_txn_answer(self, request: bytes) -> None:
        """Refuse a txn that writes whose ranges, read on this node's state now, would
        answer more than max_response_bytes (etcd_check.txn_ranges: such an answer is
        built on every member as the txn applies, unbounded)."""
        probe = etcd_check.txn_ranges(TxnRequest.FromString(request))
        if probe is None:
            return
        limit = self._node.config.max_response_bytes
        try:
            await self.read_query(lambda store: store.read_txn(probe, limit), EVENTUAL)
        except KvError as e:
            if e.grpc_code == "RESOURCE_EXHAUSTED":
                raise
            # any other answer (a compacted revision...) is the txn's own, once applied

    async def _propose(self, commands: list[bytes], timeout: float | None, *,
                       forwarded: bool = False) -> list[WriteResult]:
        """Propose `commands` as one write, within the pending limits (see `_admit`)."""
        n, size = len(commands), sum(map(len, commands))
        self._admit(n, size)
        try:
            if forwarded:
                return await self._node.propose(commands, self._timeout(timeout),
                                                forwarded=True)
            return await self._node.propose(commands, self._timeout(timeout))
        finally:
            self._pending_proposals -= n
            self._pending_proposal_bytes -= size

    def _admit(self, n: int, size: int) -> None:
        """Count `n` commands of `size` bytes as pending (the caller uncounts them once
        answered), or refuse them with etcd's "too many requests" (Overloaded: nothing
        proposed) when they would pass max_pending_proposals / _bytes; a write while
        nothing is pending is always admitted."""
        pending = self._pending_proposals
        if pending and (pending + n > self._max_pending_proposals
                        or self._pending_proposal_bytes + size
                        > self._max_pending_proposal_bytes):
            raise self._overloaded()
        self._pending_proposals = pending + n
        self._pending_proposal_bytes += size

    def _overloaded(self) -> Overloaded:
        """etcd's "too many requests": the pending limits are reached (see `_admit`)."""
        return Overloaded(
            f"{TOO_MANY_REQUESTS}: node {self.node_id} has {self._pending_proposals} writes "
            f"({self._pending_proposal_bytes} bytes) proposed and not yet answered "
            f"(max_pending_proposals {self._max_pending_proposals}, "
            f"max_pending_proposal_bytes {self._max_pending_proposal_bytes}); retry "
            "later")

    def header_ids(self) -> HeaderIds:
        """The cluster id, member id and Raft term of an etcd response header from here."""
        return HeaderIds(self._etcd_cluster_id, self._node.node_id, self._node.term)

    # -- reads ---------------------------------------------------------------------------

    async def read_query(
        self,
        fn: Callable[[Any], Any],
        consistency: str | Consistency = Consistency.LINEARIZABLE,
        *,
        timeout: float | None = None,
    ) -> Any:
        """What `fn(store)` returns, on the state machine's applied state (the MVCC store):
        linearizable and lease reads once this node applied the read index of their
        round (a ReadIndex round asked by this node, leader or follower); eventual
        ("serializable") reads on this node's applied state at once. An exception of `fn`
        (an etcd error such as a compacted revision) is raised as it is."""
        mode = consistency_name(consistency)
        if mode == EVENTUAL:
            result = self._node.query_local(fn)
            await self._yield_now_and_then()
            return result
        return await self._node.read_query(fn, mode, self._timeout(timeout))

    def watch(
        self, key: Key, range_end: Key | None = None, *, prefix: bool = False,
        start_revision: int = 0, prev_kv: bool = False, filters: Sequence[WatchFilter] = (),
        progress_notify: bool = False,
    ) -> WatchStream:
        """The changes of `key` (or of [key, range_end), or with `prefix` of every key
        starting with `key`) on this node's applied state, from `start_revision` (0: from
        now; in the past: the history replayed), in revision order, exactly once each:
        `async for event in engine.watch(b"/config/", prefix=True): ...`. `filters`:
        "noput", "nodelete". A start below the history raises Compacted when iterated
        (so does a consumer that falls behind compaction); a stopped node, Unavailable.
        `progress_notify` has no effect here (`WatchStream.revision` always tells how far
        the watch is current)."""
        return LocalWatch(self._node.watches, kvwatch.spec(
            key, range_end, prefix=prefix, start_revision=start_revision, prev_kv=prev_kv,
            filters=filters, progress_notify=progress_notify))

    @property
    def watches(self) -> WatchHub:
        """The watch hub of this node (the servers' watches pull from it)."""
        return self._node.watches

    def learn_commit(self, index: int, term: int) -> None:
        """The leader answered a write this node forwarded: log index `index`, the
        leader's term `term` then. Apply up to it without waiting for the leader's next
        append (`RaftCore.learn_commit` says when that is safe)."""
        self._node.learn_commit(index, term)

    def query_local(self, fn: Callable[[Any], Any]) -> Any:
        """`fn(store)` on this node's applied state, now, under the state machine's lock
        (a check before proposing, such as a permission)."""
        return self._node.query_local(fn)

    def wait_applied(self, index: int, *, timeout: float | None = None
                     ) -> asyncio.Future[Any]:
        """A future done once this node applied log index `index` (Timeout after
        `timeout`): a write the leader applied is then visible here too."""
        return self._node.wait_applied(index, self._timeout(timeout))

    async def get(
        self,
        key: Key,
        consistency: str | Consistency = Consistency.LINEARIZABLE,
        *,
        timeout: float | None = None,
    ) -> bytes | None:
        """The value of `key`, or None if absent."""
        key = check_key(key if type(key) is bytes else as_bytes(key, "key"), self._limits)
        if consistency == EVENTUAL:  # this node's state, no loop turn (see read_local)
            value = self._node.read_local_one(key)
            await self._yield_now_and_then()
            return value
        values = await self._node.read(
            (key,), consistency_name(consistency), self._timeout(timeout)
        )
        return values[0]

    async def get_many(
        self,
        keys: Sequence[Key],
        consistency: str | Consistency = Consistency.LINEARIZABLE,
        *,
        timeout: float | None = None,
    ) -> list[bytes | None]:
        """Values of `keys` (None for absent ones), all read at one point of the log."""
        encoded = check_keys(keys, self._limits)
        mode = consistency_name(consistency)
        if not encoded:
            return []
        if mode == EVENTUAL:
            values = self._node.read_local(encoded)
            await self._yield_now_and_then()
            return values
        return await self._node.read(encoded, mode, self._timeout(timeout))

    async def _yield_now_and_then(self) -> None:
        """An eventual read returns without suspending, so a loop of them would starve the
        node sharing this event loop (no heartbeats: the leader would lose its lead). Every
        `_LOCAL_READS_PER_YIELD`th one lets the loop run once."""
        self._local_reads += 1
        if self._local_reads % _LOCAL_READS_PER_YIELD == 0:
            await asyncio.sleep(0)

    async def leader(self, *, timeout: float | None = None) -> Leader:
        """The current leader as this node knows it (waits, within the deadline, until it
        knows one; then `Unavailable`)."""
        loop = asyncio.get_running_loop()
        seconds = self._timeout(timeout)
        deadline = loop.time() + seconds
        while True:
            self._node.check_running()
            leader_id = self._node.leader_id
            if leader_id:
                return Leader(leader_id, self._node.leader_address(), self._node.status().term)
            if loop.time() >= deadline:
                raise Unavailable(f"no leader known to node {self.node_id} after {seconds:g} s")
            await asyncio.sleep(min(self.config.tick_ms / 1000.0, deadline - loop.time()))

    @staticmethod
    def _timeout(timeout: float | None) -> float:
        if timeout is None:
            return DEFAULT_TIMEOUT
        if type(timeout) is float and timeout > 0:
            return timeout
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise InvalidRequest(f"timeout must be a positive number of seconds, got {timeout!r}")
        return float(timeout)

"""Peer links with mutual TLS (issue 18): only a holder of a certificate of the cluster's
CA speaks Raft to a member. A forged append from a plaintext peer or from a peer with a
certificate of another CA is refused at the handshake and logged; the cluster is
unaffected. Certificates are read again when their files change."""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
from pathlib import Path

import pytest
from node_helpers import Cluster, free_port, run, until
from test_transport import Inbox, make, msg

from dengine import tls
from dengine.config import NodeConfig
from dengine.errors import ConfigError
from dengine.node.transport import encode_frame, encode_message_frames
from dengine.proto import Entry, EntryPayload, Hello, Message, MessageType, PeerFrame
from dengine.tls import PeerTls, ServerFiles


def _peer_tls(certs, name: str = "node1", other: bool = False) -> PeerTls:  # type: ignore[no-untyped-def]
    p = certs.peer(name, other=other)
    return PeerTls(ServerFiles(p["peer_cert_file"], p["peer_key_file"],
                               p["peer_trusted_ca_file"]))


async def _forge_append(port: int, cluster_id: str, *, as_node: int, to_node: int,
                        term: int, ctx: ssl.SSLContext | None) -> str:
    """Connect (plaintext, or TLS with `ctx`) as member `as_node` and send a Hello and an
    append of key "forged"; what happened: "sent" (the node answered the Hello), or the
    error that stopped it."""
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1" if ctx else None)
    except (OSError, ssl.SSLError) as e:
        return f"connect: {e!r}"
    try:
        hello = Hello(cluster_id=cluster_id, node_id=as_node, to_id=to_node)
        writer.write(encode_frame(PeerFrame(hello=hello).SerializeToString()))
        entry = Entry(index=10**6, term=term)
        for frame in encode_message_frames([Message(
                type=MessageType.MSG_APPEND, from_id=as_node, to_id=to_node, term=term,
                index=10**6 - 1, log_term=term, commit=10**6, entries=[entry])], 1 << 20):
            writer.write(frame)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(100), 5)
        return "sent" if answer else "closed"
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as e:
        return f"closed: {e!r}"
    finally:
        writer.close()


def test_config_needs_all_three_peer_files(certs) -> None:  # type: ignore[no-untyped-def]
    p = certs.peer()
    with pytest.raises(ConfigError, match="peer_trusted_ca_file"):
        NodeConfig(peer_cert_file=p["peer_cert_file"], peer_key_file=p["peer_key_file"]
                   ).validate()
    with pytest.raises(ConfigError, match="file not found"):
        NodeConfig(**{**p, "peer_key_file": "/nonexistent.key"}).validate()
    with pytest.raises(ConfigError, match="does not match"):
        NodeConfig(**{**p, "peer_key_file": certs.peer("node2")["peer_key_file"]}).validate()


def test_transports_with_mutual_tls_exchange_messages(certs) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        ports = {1: free_port(), 2: free_port()}
        in1, in2 = Inbox(), Inbox()
        t1 = make(1, ports, in1, tls=_peer_tls(certs, "node1"))
        t2 = make(2, ports, in2, tls=_peer_tls(certs, "node2"))
        await t1.start()
        await t2.start()
        try:
            t1.send([msg(1, 2, term=i) for i in range(1, 51)])
            t2.send([msg(2, 1, term=7)])
            await until(lambda: len(in2.messages) == 50 and len(in1.messages) == 1)
            assert [m.term for _, m in in2.messages] == list(range(1, 51))
        finally:
            await t1.close()
            await t2.close()

    run(main())


def test_forged_appends_without_the_clusters_certificate_are_refused_and_logged(
    tmp_path: Path, certs, caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    async def main() -> None:
        cluster = Cluster(tmp_path, **certs.peer())
        await cluster.start_all()
        try:
            leader = await cluster.leader()
            await leader.put(b"k", b"v1")
            term = leader.status().term
            cid = cluster.cluster_id()
            wrong = _peer_tls(certs, "node2", other=True).client_context()
            for target in (1, 2, 3):
                sender = 2 if target == 1 else 1
                port = cluster.peer_ports[target]
                # plaintext: the Hello is not a TLS handshake
                assert await _forge_append(port, cid, as_node=sender, to_node=target,
                                           term=term, ctx=None) != "sent"
                # TLS with a certificate of another CA (trusting the cluster's CA, so that
                # the refusal is the member's, not ours)
                wrong.load_verify_locations(certs.peer()["peer_trusted_ca_file"])
                assert await _forge_append(port, cid, as_node=sender, to_node=target,
                                           term=term, ctx=wrong) != "sent"
            await until(lambda: sum("TLS handshake failed" in r.getMessage()
                                    for r in caplog.records) >= 6)
            refused = [r.getMessage() for r in caplog.records
                       if "TLS handshake failed" in r.getMessage()]
            assert any("not TLS" in m for m in refused), refused
            assert all(r.levelno == logging.WARNING for r in caplog.records
                       if "TLS handshake failed" in r.getMessage())
            # a client certificate of the cluster's own CA (clientAuth only) is no member's
            client = ssl.create_default_context(cafile=certs.client()["cacert"])
            client.load_cert_chain(certs.client()["cert"], certs.client()["key"])
            for target in (1, 2, 3):
                assert await _forge_append(
                    cluster.peer_ports[target], cid, as_node=2 if target == 1 else 1,
                    to_node=target, term=term, ctx=client) != "sent"
            await until(lambda: sum("without the serverAuth usage" in r.getMessage()
                                    for r in caplog.records) >= 3)
            for engine in cluster.engines.values():
                assert engine._node._transport.refused_connections >= 3
                assert engine.status().term < 10**5
            leader = await cluster.leader()
            await leader.put(b"k", b"v2")
            commit = leader.status().commit_index
            for engine in cluster.engines.values():
                await until(lambda e=engine: e.status().applied_index >= commit)
                assert await engine.get(b"forged", "eventual") is None
                assert await engine.get(b"k", "eventual") == b"v2"
        finally:
            await cluster.stop_all()

    caplog.set_level(logging.INFO, logger="dengine")
    run(main())


def test_a_member_with_another_cas_certificate_cannot_take_part(
    tmp_path: Path, certs, caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    """Node 3 is configured as a member but holds a certificate of another CA: nodes 1 and
    2 form the cluster, node 3 neither reaches them nor is reached."""
    async def main() -> None:
        cluster = Cluster(tmp_path, **certs.peer())
        await asyncio.gather(cluster.start(1), cluster.start(2),
                             cluster.start(3, **certs.peer("node3", other=True)))
        try:
            leader = await cluster.leader(all_know=False)
            assert leader.node_id in (1, 2)
            await leader.put(b"k", b"v")
            await asyncio.sleep(0.5)
            assert cluster.engines[3].status().applied_index == 0
            assert cluster.engines[3].status().leader_id == 0
        finally:
            await cluster.stop_all()
        messages = [r.getMessage() for r in caplog.records]
        assert any("TLS handshake with node" in m and "failed" in m for m in messages)
        assert any("TLS handshake failed" in m for m in messages)

    caplog.set_level(logging.INFO, logger="dengine")
    run(main())


def test_peer_certificates_reload_when_their_files_change(
    tmp_path: Path, certs, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    """Node 2 holds a certificate of another CA: refused, until node 1's trusted CA file
    is replaced by one holding both CAs (no restart)."""
    monkeypatch.setattr(tls, "RELOAD_CHECK_S", 0.0)
    ca1 = tmp_path / "ca1.crt"
    shutil.copy(certs.ca / "ca.crt", ca1)
    both = tmp_path / "both.crt"
    both.write_bytes((certs.ca / "ca.crt").read_bytes() + (certs.other / "ca.crt").read_bytes())
    p1 = certs.peer("node1")
    p2 = certs.peer("node2", other=True)

    async def main() -> None:
        ports = {1: free_port(), 2: free_port()}
        in1, in2 = Inbox(), Inbox()
        t1 = make(1, ports, in1, tls=PeerTls(ServerFiles(
            p1["peer_cert_file"], p1["peer_key_file"], str(ca1))),
            backoff_min=0.01, backoff_max=0.05)
        t2 = make(2, ports, in2, tls=PeerTls(ServerFiles(
            p2["peer_cert_file"], p2["peer_key_file"], str(both))),
            backoff_min=0.01, backoff_max=0.05)
        await t1.start()
        await t2.start()
        try:
            t2.send([msg(2, 1, term=1)])
            await until(lambda: t1.refused_connections >= 2)
            assert in1.messages == []
            tmp = tmp_path / "ca1.tmp"
            shutil.copy(both, tmp)
            tmp.replace(ca1)  # as certificate tools do: a whole new file
            await until(lambda: t2.is_connected(1))
            t2.send([msg(2, 1, term=2)])
            await until(lambda: any(m.term == 2 for _, m in in1.messages))
        finally:
            await t1.close()
            await t2.close()

    run(main())


async def _recording_proxy(target_port: int, record: bytearray) -> tuple[asyncio.Server, int]:
    """A TCP relay to 127.0.0.1:`target_port` that keeps every byte sent through it."""

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    keep: bool) -> None:
        try:
            while data := await reader.read(65536):
                if keep:
                    record.extend(data)
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(relay(reader, up_writer, True), relay(up_reader, writer, True))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("with_tls", [False, True])
def test_peer_traffic_is_unreadable_on_the_wire_with_tls(
    certs, with_tls: bool,  # type: ignore[no-untyped-def]
) -> None:
    """Node 1 reaches node 2 through a relay that records the bytes: a value sent in an
    append is on the wire in plaintext without TLS, and nowhere in it with TLS."""
    marker = b"secret-value-0123456789"

    async def main() -> bytearray:
        record = bytearray()
        ports = {1: free_port(), 2: free_port()}
        proxy, proxy_port = await _recording_proxy(ports[2], record)
        in2 = Inbox()
        kw1 = {"tls": _peer_tls(certs, "node1")} if with_tls else {}
        kw2 = {"tls": _peer_tls(certs, "node2")} if with_tls else {}
        t1 = make(1, {1: ports[1], 2: proxy_port}, Inbox(), **kw1)
        t1.listen = f"127.0.0.1:{ports[1]}"
        t2 = make(2, ports, in2, **kw2)
        await t1.start()
        await t2.start()
        try:
            entry = Entry(index=1, term=3, payload=EntryPayload(command=marker))
            t1.send([msg(1, 2, term=3, index=0, log_term=0, entries=[entry])])
            await until(lambda: len(in2.messages) == 1)
            assert in2.messages[0][1].entries[0].payload.command == marker
        finally:
            await t1.close()
            await t2.close()
            proxy.close()
        return record

    record = run(main())
    assert record  # the relay carried the connection
    assert (marker in record) is not with_tls

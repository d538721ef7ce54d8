"""The hand-framed gRPC front end's connection driven frame by frame with a fake transport:
fuzzed frame sequences (whatever arrives, in whatever pieces, the answer is well-formed
frames, the connection open or ended by one GOAWAY, no exception escaping) and the
guards against resets (docs/grpc-frontend.md)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

# A dependency since session 16: a venv installed before it lacks it (pip install -e .).
hpack = pytest.importorskip("hpack")

from dengine.server.grpcwire import frames as f  # noqa: E402
from dengine.server.grpcwire.connection import CONTROL_BURST, MAX_RESETS, Connection  # noqa: E402


async def _echo(request: bytes, context: Any) -> bytes:
    return request


async def _block(request: bytes, context: Any) -> bytes:
    await asyncio.Event().wait()
    raise AssertionError("unblocked")


async def _bidi(requests: Any, context: Any) -> Any:
    async for request in requests:
        yield request * 1000  # past a 3-byte window


async def _refuse(requests: Any, context: Any) -> None:
    await context.abort(grpc.StatusCode.UNAVAILABLE, "no")


_HANDLERS = {b"/t.S/Echo": grpc.unary_unary_rpc_method_handler(_echo),
             b"/t.S/Refuse": grpc.stream_stream_rpc_method_handler(_refuse),
             b"/t.S/Block": grpc.unary_unary_rpc_method_handler(_block),
             b"/t.S/Bidi": grpc.stream_stream_rpc_method_handler(_bidi)}


class _Server:
    methods: dict[bytes, Any] = {}
    max_concurrent_streams = 4
    max_receive_message_length = 64
    max_rpcs = None
    rpcs = 0

    async def handler(self, path: bytes, ctx: Any) -> Any:
        return _HANDLERS.get(path)

    def certificate(self, conn: Any) -> dict[str, list[bytes]]:
        return {}

    def admit(self, conn: Any) -> bool:
        return True

    def closed(self, conn: Any) -> None:
        pass

    def hold_acks(self, conn: Any) -> None:
        self.acking = [*getattr(self, "acking", []), conn]


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False
        self.reading = True

    def write(self, data: Any) -> None:
        assert not self.closing, "written after close"
        self.written += data

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


def _request(sid: int, path: bytes, body: bytes, end: bool,
             *extra: tuple[bytes, bytes]) -> bytes:
    block = hpack.Encoder().encode([(b":method", b"POST"), (b":path", path),
                                    (b"content-type", b"application/grpc"), *extra])
    message = f.MESSAGE_PREFIX.pack(0, len(body)) + body
    return (f.frame(f.HEADERS, f.END_HEADERS, sid, block)
            + f.frame(f.DATA, f.END_STREAM if end else 0, sid, message))


_frames = st.one_of(
    st.builds(f.frame, st.integers(0, 10), st.integers(0, 255),
              st.sampled_from([0, 1, 2, 3, 5, 7, 2**31 - 1]), st.binary(max_size=24)),
    st.builds(_request, st.sampled_from([1, 3, 5, 7, 9]),
              st.sampled_from([b"/t.S/Echo", b"/t.S/None", b"/t.S/Bidi"]), st.binary(max_size=80),
              st.booleans()),
    st.just(f.settings((f.SETTINGS_INITIAL_WINDOW_SIZE, 3))),
    st.just(f.window_update(0, 1000)),
)


def _parse(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        hi, lo, ftype, flags, sid = f.FRAME_HEADER.unpack_from(data, pos)
        end = pos + 9 + (hi << 16 | lo)
        assert end <= len(data), "a truncated frame written"
        out.append((ftype, flags, sid, data[pos + 9:end]))
        pos = end
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(_frames, max_size=12), st.lists(st.integers(1, 64), max_size=8),
       st.booleans())
def test_any_frame_sequence_is_answered_well_formed(
        frames: list[bytes], cuts: list[int], with_settings: bool) -> None:
    data = f.PREFACE + (f.settings() if with_settings else b"") + b"".join(frames)
    errors: list[Any] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, c: errors.append(c))
        conn, transport = Connection(_Server()), _Transport()
        conn.connection_made(transport)
        pos = 0
        for cut in [*cuts, len(data)]:
            if pos < len(data) and not transport.closing:
                conn.data_received(data[pos:pos + cut] if cut < len(data) else data[pos:])
                pos += cut
            await asyncio.sleep(0)
        for _ in range(3):
            await asyncio.sleep(0)
        written = _parse(bytes(transport.written))
        # A NO_ERROR GOAWAY lets the open calls finish (the connection closes after
        # them); an error's GOAWAY is the last frame. Closed: after one of them.
        goaways = [(i, payload[4:8]) for i, (ftype, _, _, payload) in enumerate(written)
                   if ftype == f.GOAWAY]
        assert len(goaways) <= 2 and (goaways or not transport.closing)
        for i, code in goaways:
            assert code == f.NO_ERROR.to_bytes(4) or i == len(written) - 1
        assert all(code == f.NO_ERROR.to_bytes(4) for _, code in goaways[:-1])
        conn.connection_lost(None)

    asyncio.run(main())
    assert errors == []


def test_goaway_after_more_than_half_the_connection_window_closes_cleanly() -> None:
    """Regression: a GOAWAY read in the same chunk as over half the connection window of
    DATA (which asks for a WINDOW_UPDATE) closed the connection and then failed. Now the
    connection closes once its calls have ended (here: all refused, over the limit)."""
    chunks = []
    for sid in range(1, 20, 2):  # 10 streams, 900,000 bytes each: over half of 16 MiB
        chunks.append(_request(sid, b"/t.S/Echo", b"", False)[:-14])  # HEADERS only
        body = f.MESSAGE_PREFIX.pack(0, 899_995) + b"x" * 899_995
        chunks += [f.frame(f.DATA, 0, sid, body[i:i + f.MIN_FRAME_SIZE])
                   for i in range(0, len(body), f.MIN_FRAME_SIZE)]
    data = f.PREFACE + f.settings() + b"".join(chunks) + f.goaway(0, f.NO_ERROR)

    async def main() -> None:
        conn, transport = Connection(_Server()), _Transport()
        conn.connection_made(transport)
        conn.data_received(data)
        await asyncio.sleep(0)
        assert transport.closing
        assert [ftype for ftype, *_ in _parse(bytes(transport.written))].count(f.GOAWAY) == 1
        conn.connection_lost(None)

    asyncio.run(main())


def _rst(sid: int) -> bytes:
    return f.rst_stream(sid, f.CANCEL)


def test_a_reset_call_holds_its_stream_slot_until_its_handler_has_ended() -> None:
    async def main() -> None:
        conn, transport = Connection(_Server()), _Transport()
        conn.connection_made(transport)
        conn.data_received(f.PREFACE + f.settings() + b"".join(
            _request(sid, b"/t.S/Block", b"", True) for sid in (1, 3, 5, 7)))
        await asyncio.sleep(0)  # the four handlers wait
        conn.data_received(b"".join(_rst(sid) for sid in (1, 3, 5, 7))
                           + _request(9, b"/t.S/Echo", b"", True))
        for _ in range(3):
            await asyncio.sleep(0)  # the handlers end (cancelled)
        conn.data_received(_request(11, b"/t.S/Echo", b"", True))
        for _ in range(3):
            await asyncio.sleep(0)
        written = _parse(bytes(transport.written))
        resets = {sid: payload for ftype, _, sid, payload in written if ftype == f.RST_STREAM}
        assert resets == {9: f.rst_stream(9, f.REFUSED_STREAM)[9:]}
        assert any(ftype == f.DATA and sid == 11 for ftype, _, sid, _ in written)
        assert not transport.closing
        conn.connection_lost(None)

    asyncio.run(main())


def test_a_peer_that_resets_too_many_running_calls_is_sent_away() -> None:
    class Roomy(_Server):
        max_concurrent_streams = 100_000

    async def main() -> None:
        conn, transport = Connection(Roomy()), _Transport()
        conn.connection_made(transport)
        sids = range(1, 2 * (MAX_RESETS + 1), 2)
        conn.data_received(f.PREFACE + f.settings() + b"".join(
            _request(sid, b"/t.S/Block", b"", True) + _rst(sid) for sid in sids))
        assert transport.closing
        goaway = _parse(bytes(transport.written))[-1]
        assert goaway[0] == f.GOAWAY
        assert goaway[3][4:8] == f.ENHANCE_YOUR_CALM.to_bytes(4)
        conn.connection_lost(None)
        await asyncio.sleep(0)

    asyncio.run(main())


def test_the_server_ends_a_call_at_its_deadline() -> None:
    async def main() -> None:
        conn, transport = Connection(_Server()), _Transport()
        conn.connection_made(transport)
        conn.data_received(f.PREFACE + f.settings()
                           + _request(1, b"/t.S/Block", b"", True, (b"grpc-timeout", b"1n")))
        while f.rst_stream(1, f.CANCEL) not in transport.written:
            await asyncio.sleep(0.01)
        headers = [payload for ftype, _, sid, payload in _parse(bytes(transport.written))
                   if ftype == f.HEADERS]
        assert headers == [f.RESPONSE_HEADERS + f.status_fields(4, "Deadline Exceeded")]
        assert conn._zombies == 0 and not conn._calls
        conn.connection_lost(None)

    asyncio.run(main())


def test_after_a_goaway_open_calls_finish_and_new_ones_are_ignored() -> None:
    async def main() -> None:
        conn, transport = Connection(_Server()), _Transport()
        conn.connection_made(transport)
        conn.data_received(f.PREFACE + f.settings() + _request(1, b"/t.S/Bidi", b"a", False))
        conn.go_away()
        conn.data_received(_request(3, b"/t.S/Echo", b"b", True))
        for _ in range(3):
            await asyncio.sleep(0)
        assert not transport.closing  # the Bidi call is open
        conn.data_received(f.frame(f.DATA, f.END_STREAM, 1, b""))
        for _ in range(5):
            await asyncio.sleep(0)
        assert transport.closing
        written = _parse(bytes(transport.written))
        assert [sid for ftype, _, sid, _ in written if ftype == f.DATA] == [1]
        assert written[-1][:3] == (f.HEADERS, f.END_HEADERS | f.END_STREAM, 1)
        conn.connection_lost(None)

    asyncio.run(main())


def test_a_ping_flood_is_sent_away() -> None:
    async def main() -> None:
        conn, transport = Connection(_Server()), _Transport()
        conn.connection_made(transport)
        conn.data_received(f.PREFACE + f.settings() + f.frame(f.PING, 0, 0, b"12345678")
                           * (CONTROL_BURST + 10))
        assert transport.closing
        goaway = _parse(bytes(transport.written))[-1]
        assert goaway[0] == f.GOAWAY and goaway[3][8:] == b"too_many_pings"
        assert goaway[3][4:8] == f.ENHANCE_YOUR_CALM.to_bytes(4)
        conn.connection_lost(None)

    asyncio.run(main())


def test_ping_acks_are_held_for_the_server_to_send() -> None:
    """A Go client pings after each answer while no ack is due: acked at once, every
    call cost a read and a write more; the server sends the acks ACK_HOLD_S later."""
    async def main() -> None:
        server = _Server()
        conn, transport = Connection(server), _Transport()
        conn.connection_made(transport)
        conn.data_received(f.PREFACE + f.settings() + f.frame(f.PING, 0, 0, b"12345678")
                           + f.frame(f.PING, 0, 0, b"abcdefgh"))
        assert [t for t, *_ in _parse(bytes(transport.written))] == [
            f.SETTINGS, f.WINDOW_UPDATE, f.SETTINGS]  # ours, the window, the ack
        assert server.acking == [conn]  # one hold for the connection's acks
        conn.release_acks()
        await asyncio.sleep(0)
        acks = [(t, fl, payload) for t, fl, _, payload in _parse(bytes(transport.written))
                if t == f.PING]
        assert acks == [(f.PING, f.ACK, b"12345678"), (f.PING, f.ACK, b"abcdefgh")]
        conn.connection_lost(None)

    asyncio.run(main())


def test_a_peer_that_does_not_read_is_not_read_either() -> None:
    async def main() -> None:
        conn, transport = Connection(_Server()), _Transport()
        conn.connection_made(transport)
        conn.pause_writing()
        assert not transport.reading
        conn.resume_writing()
        assert transport.reading
        conn.connection_lost(None)

    asyncio.run(main())


def _answers(data: bytes) -> dict[int, list[tuple[bytes, bytes]]]:
    """The decoded header fields of each stream's HEADERS frames in `data`."""
    decoder, out = hpack.Decoder(), {}
    for ftype, _, sid, payload in _parse(data):
        if ftype == f.HEADERS:
            out.setdefault(sid, []).extend(decoder.decode(payload, raw=True))
    return out


def test_non_grpc_requests_get_grpc_gos_http_status_and_answers_announce_encodings() -> None:
    """Not POST: 405, not a gRPC content-type: 415, with gRPC's status fields (grpc-go's
    answers; they were 200 UNIMPLEMENTED); a gRPC answer lists the request encodings
    taken, as grpc.aio's does."""
    def request(sid: int, method: bytes, content_type: bytes) -> bytes:
        block = hpack.Encoder().encode([(b":method", method), (b":path", b"/t.S/Echo"),
                                        (b"content-type", content_type)])
        return f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, sid, block)

    async def main() -> None:
        conn, transport = Connection(_Server()), _Transport()
        conn.connection_made(transport)
        conn.data_received(f.PREFACE + f.settings() + request(1, b"GET", b"application/grpc")
                           + request(3, b"POST", b"application/json")
                           + request(5, b"POST", b"application/grpc-web")
                           + _request(7, b"/t.S/Echo", b"hi", True))
        for _ in range(3):
            await asyncio.sleep(0)
        answers = _answers(bytes(transport.written))
        assert answers[1] == [
            (b":status", b"405"), (b"content-type", b"application/grpc"),
            (b"grpc-status", b"13"),
            (b"grpc-message", b'Received a HEADERS frame with :method "GET" which should be POST')]
        assert answers[3][0] == (b":status", b"415") and answers[5][0] == (b":status", b"415")
        assert answers[3][2:] == [
            (b"grpc-status", b"3"),
            (b"grpc-message", b'invalid gRPC request content-type "application/json"')]
        assert answers[7][:3] == [(b":status", b"200"), (b"content-type", b"application/grpc"),
                                  (b"grpc-accept-encoding", b"identity, deflate, gzip")]
        assert (b"grpc-status", b"0") in answers[7]
        conn.connection_lost(None)

    asyncio.run(main())


def test_a_stream_ended_while_the_client_sends_is_reset_with_no_error() -> None:
    """grpc core's answer (RFC 9113, 8.1): after the status of a call whose client has not
    ended its side, RST_STREAM NO_ERROR; a call the client had ended gets none."""
    async def main() -> None:
        conn, transport = Connection(_Server()), _Transport()
        conn.connection_made(transport)
        conn.data_received(f.PREFACE + f.settings() + _request(1, b"/t.S/Refuse", b"a", False)
                           + _request(3, b"/t.S/Echo", b"b", True))
        for _ in range(3):
            await asyncio.sleep(0)
        written = [(ftype, flags, sid) for ftype, flags, sid, _ in _parse(bytes(transport.written))
                   if sid]
        assert written[written.index((f.HEADERS, f.END_HEADERS | f.END_STREAM, 1)) + 1] == (
            f.RST_STREAM, 0, 1)
        assert (f.RST_STREAM, 0, 3) not in written
        conn.connection_lost(None)

    asyncio.run(main())


async def _large(request: bytes, context: Any) -> bytes:
    return bytes(range(256)) * 400  # 102,400 bytes: past the 65,535-byte initial windows


def test_an_answer_continued_by_a_window_update_keeps_its_frames_in_order() -> None:
    """Regression: an answer made outside a read (its handler ran in its own task) left
    its first frames for the loop turn's end; a WINDOW_UPDATE read before that turn's end
    sent the rest of the answer, with its trailers, at once, ahead of the HEADERS and the
    first DATA. grpc's client then read a broken message as OK: a Range of 1,000 keys
    through aetcd answered None (bench/etcd_kv_bench.py, 1M keys)."""
    handlers = {**_HANDLERS, b"/t.S/Large": grpc.unary_unary_rpc_method_handler(_large)}

    class Large(_Server):
        async def handler(self, path: bytes, ctx: Any) -> Any:
            return handlers.get(path)

    async def main() -> None:
        conn, transport = Connection(Large()), _Transport()
        conn.connection_made(transport)
        conn.data_received(f.PREFACE + f.settings() + _request(1, b"/t.S/Large", b"", True))
        await asyncio.sleep(0)  # the handler answers: its first frames wait for the turn's end
        conn.data_received(f.window_update(0, 1 << 20) + f.window_update(1, 1 << 20))
        for _ in range(3):
            await asyncio.sleep(0)
        stream = [(ftype, flags, payload) for ftype, flags, sid, payload
                  in _parse(bytes(transport.written)) if sid == 1]
        kinds = [ftype for ftype, _, _ in stream]
        assert kinds[0] == f.HEADERS and kinds[-1] == f.HEADERS
        assert set(kinds[1:-1]) == {f.DATA}
        assert stream[-1][1] & f.END_STREAM
        body = b"".join(payload for ftype, _, payload in stream if ftype == f.DATA)
        assert body == f.MESSAGE_PREFIX.pack(0, 102_400) + bytes(range(256)) * 400
        conn.connection_lost(None)

    asyncio.run(main())


def test_a_stream_out_of_window_does_not_hold_back_the_others() -> None:
    """Regression: an answer waiting for its stream's window (a watch whose client does
    not read) held back every answer queued after it on the connection, though the
    connection's window had room."""
    async def main() -> None:
        conn, transport = Connection(_Server()), _Transport()
        conn.connection_made(transport)
        conn.data_received(f.PREFACE + f.settings((f.SETTINGS_INITIAL_WINDOW_SIZE, 3))
                           + _request(1, b"/t.S/Bidi", b"a", False))
        for _ in range(3):
            await asyncio.sleep(0)  # stream 1's answer waits for its window
        conn.data_received(_request(3, b"/t.S/Echo", b"hello", True))
        for _ in range(3):
            await asyncio.sleep(0)
        conn.data_received(f.window_update(3, 1000))
        for _ in range(3):
            await asyncio.sleep(0)
        written = _parse(bytes(transport.written))
        answer = b"".join(payload for ftype, _, sid, payload in written
                          if ftype == f.DATA and sid == 3)
        assert answer == f.MESSAGE_PREFIX.pack(0, 5) + b"hello"
        assert (f.HEADERS, f.END_HEADERS | f.END_STREAM, 3) in [w[:3] for w in written]
        conn.connection_lost(None)

    asyncio.run(main())

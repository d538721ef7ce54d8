"""The record codec: round trip, torn tails vs corruption, preallocated zero tails."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dengine.storage.records import HEADER_SIZE, MAGIC_WAL, encode_header, frame_all, scan

payload_lists = st.lists(st.binary(max_size=64), min_size=1, max_size=12)


def file_of(payloads: list[bytes]) -> bytes:
    return encode_header(MAGIC_WAL) + frame_all(payloads)


@given(payload_lists, st.integers(0, 4096))
def test_round_trip_with_zero_tail(payloads, zeros):
    data = file_of(payloads)
    result = scan(data + bytes(zeros), "f", MAGIC_WAL)
    assert result.records == payloads
    assert result.valid_end == len(data)
    assert not result.torn and result.corruption is None
    assert result.free_tail == (zeros > 0)


@given(payload_lists, st.data())
def test_any_cut_is_a_clean_prefix_or_a_torn_tail(payloads, data):
    whole = file_of(payloads)
    cut = data.draw(st.integers(0, len(whole)))
    zeros = data.draw(st.integers(0, 64))
    result = scan(whole[:cut] + bytes(zeros), "f", MAGIC_WAL)
    assert result.corruption is None
    assert result.records == payloads[: len(result.records)]
    ends = [HEADER_SIZE + sum(8 + len(p) for p in payloads[:n]) for n in range(len(payloads) + 1)]
    if cut < HEADER_SIZE:  # unless the zeros happened to complete the header
        assert result.torn or (result.valid_end == HEADER_SIZE and not result.records)
    else:  # a cut record whose surviving bytes are zeros reads as free space: same effect
        assert (result.torn or result.free_tail) == (cut not in ends or zeros > 0)


@given(payload_lists.filter(lambda p: len(p) >= 2), st.data())
def test_a_flipped_byte_before_the_last_record_is_corruption(payloads, data):
    whole = bytearray(file_of(payloads))
    last_start = len(whole) - 8 - len(payloads[-1])
    offset = data.draw(st.integers(HEADER_SIZE, last_start - 1))
    whole[offset] ^= data.draw(st.integers(1, 255))
    result = scan(bytes(whole), "f", MAGIC_WAL)
    assert result.corruption is not None and result.corruption.path == "f"
    assert result.corruption.offset <= offset


def test_flipped_last_record_is_torn_even_with_megabytes_of_zeros_after():
    data = bytearray(file_of([b"a" * 10, b"b" * 10]))
    data[-1] ^= 1
    result = scan(bytes(data) + bytes(4 << 20), "f", MAGIC_WAL)
    assert result.torn and result.records == [b"a" * 10]

"""The record codec: round trip, torn tails vs corruption, preallocated zero tails."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from storage_helpers import ChunksOnlyDisk

from dengine.storage.fileio import SimulatedDisk
from dengine.storage.records import (
    FRAME_SIZE,
    HEADER_SIZE,
    MAGIC_WAL,
    ScanResult,
    encode_header,
    frame_all,
    scan,
    scan_stream,
)

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


def _stream(data: bytes, chunk: int, magic: bytes = MAGIC_WAL) -> ScanResult:
    """scan_stream over `data`, its records collected like scan's."""
    disk = SimulatedDisk()
    disk.makedirs("/d")
    f = disk.open_append("/d/f")
    f.write(data)
    f.close()
    result = ScanResult("/d/f")
    for batch in scan_stream(disk, "/d/f", magic, result, chunk_bytes=chunk):
        for start, end in zip(batch.starts, batch.ends, strict=True):
            result.records.append(batch.data[start:end])
            result.offsets.append(batch.base + start - FRAME_SIZE)
    return result


@st.composite
def damaged_files(draw):
    """A file of records, then maybe cut, zero-padded, with a byte flipped or garbage."""
    data = bytearray(file_of(draw(payload_lists)))
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data))) :]
    data += bytes(draw(st.sampled_from([0, 0, 3, 40])))
    if data and draw(st.booleans()):
        data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    if draw(st.booleans()):
        data += draw(st.binary(max_size=30)) + file_of([b"after"])[HEADER_SIZE:]
    return bytes(data)


@settings(max_examples=400)
@given(damaged_files(), st.sampled_from([1, 5, 8, 13, 64, 1 << 20]))
def test_scan_stream_finds_what_scan_finds(data, chunk):
    """Read in chunks of any size, a file yields the same records, torn tail, free tail or
    corruption (at the same offsets, for the same reasons) as a scan of it whole."""
    whole = scan(data, "/d/f", MAGIC_WAL)
    streamed = _stream(data, chunk)
    assert streamed.records == whole.records and streamed.offsets == whole.offsets
    assert (streamed.valid_end, streamed.size, streamed.version) == (
        whole.valid_end, whole.size, whole.version
    )
    assert (streamed.torn_reason, streamed.free_tail) == (whole.torn_reason, whole.free_tail)
    if whole.corruption is None:
        assert streamed.corruption is None
    else:
        assert streamed.corruption is not None
        assert (streamed.corruption.offset, streamed.corruption.reason) == (
            whole.corruption.offset, whole.corruption.reason
        )


def test_scan_stream_reads_a_record_longer_than_a_chunk_whole():
    payloads = [b"a" * 100, b"b" * 10_000, b"c" * 3]
    result = _stream(file_of(payloads), chunk=64)
    assert result.records == payloads and not result.torn


def test_scan_stream_never_holds_the_whole_file():
    """Memory: a big file is read and handed out in pieces of about one chunk."""
    disk = ChunksOnlyDisk(whole_max=0)
    disk.makedirs("/d")
    f = disk.open_append("/d/f")
    f.write(file_of([b"x" * 1000] * 50))
    f.close()
    result = ScanResult("/d/f")
    batches = list(scan_stream(disk, "/d/f", MAGIC_WAL, result, chunk_bytes=4096))
    assert sum(len(b.starts) for b in batches) == 50 and len(batches) > 5
    assert max(len(b.data) for b in batches) <= 2 * 4096
    assert result.valid_end == result.size and not result.torn

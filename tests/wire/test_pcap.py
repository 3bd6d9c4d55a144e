import io
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sclp.wire.pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    PCAP_GLOBAL_HLEN,
    PCAP_RECORD_HLEN,
    PcapWriter,
    encode_global_header,
    encode_record_header,
)

# The classic libpcap global header, little-endian, written by hand: magic a1b2c3d4,
# version 2.4, thiszone 0, sigfigs 0, snaplen 65535, link type 1 (Ethernet).
GLOBAL_ETHERNET_65535 = bytes.fromhex("d4c3b2a1 0200 0400 00000000 00000000 ffff0000 01000000")


def _records(data: bytes) -> list[tuple[int, int, int, int, bytes]]:
    """Walk the records of a little-endian pcap stream (test-side reader)."""
    out = []
    pos = PCAP_GLOBAL_HLEN
    while pos < len(data):
        sec, usec, incl, orig = struct.unpack_from("<IIII", data, pos)
        pos += PCAP_RECORD_HLEN
        out.append((sec, usec, incl, orig, data[pos : pos + incl]))
        pos += incl
    assert pos == len(data)
    return out


def test_constants() -> None:
    assert LINKTYPE_ETHERNET == 1
    assert LINKTYPE_RAW == 101
    assert PCAP_GLOBAL_HLEN == 24 and PCAP_RECORD_HLEN == 16


def test_global_header_vector() -> None:
    assert encode_global_header(LINKTYPE_ETHERNET, 65535) == GLOBAL_ETHERNET_65535
    raw = encode_global_header(LINKTYPE_RAW)
    assert raw[20:24] == bytes([101, 0, 0, 0])


def test_record_header_vector() -> None:
    assert encode_record_header(1.5, 60, 60) == bytes.fromhex("01000000 20a10700 3c000000 3c000000")


def test_timestamp_rounding_carries_into_seconds() -> None:
    assert struct.unpack("<II", encode_record_header(1.9999996, 0, 0)[:8]) == (2, 0)
    assert struct.unpack("<II", encode_record_header(1700000000.123456, 0, 0)[:8]) == (
        1700000000,
        123456,
    )


@pytest.mark.parametrize("ts", [-0.5, 2.0**32])
def test_timestamp_range(ts: float) -> None:
    with pytest.raises(ValueError):
        encode_record_header(ts, 0, 0)


def test_writer_stream() -> None:
    out = io.BytesIO()
    w = PcapWriter(out, snaplen=65535)
    assert out.getvalue() == GLOBAL_ETHERNET_65535  # header written at construction
    w.write(b"\x01" * 60, ts=10.25)
    w.write(memoryview(b"abc"), ts=11.0)
    assert _records(out.getvalue()) == [
        (10, 250000, 60, 60, b"\x01" * 60),
        (11, 0, 3, 3, b"abc"),
    ]


def test_writer_truncates_to_snaplen() -> None:
    out = io.BytesIO()
    w = PcapWriter(out, linktype=LINKTYPE_RAW, snaplen=64)
    w.write(bytes(range(100)), ts=0.0)
    assert _records(out.getvalue()) == [(0, 0, 64, 100, bytes(range(64)))]


def test_writer_rejects_bad_snaplen() -> None:
    with pytest.raises(ValueError):
        PcapWriter(io.BytesIO(), snaplen=0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=300), st.integers(0, 2**31 * 10**6)), max_size=8))
def test_writer_records_round_trip(packets: list[tuple[bytes, int]]) -> None:
    out = io.BytesIO()
    w = PcapWriter(out)
    for data, ts_us in packets:
        w.write(data, ts=ts_us / 1e6)
    recs = _records(out.getvalue())
    assert [r[4] for r in recs] == [p for p, _ in packets]
    for (sec, usec, incl, orig, _), (data, ts_us) in zip(recs, packets, strict=True):
        assert incl == orig == len(data)
        assert usec < 1_000_000
        assert abs((sec * 10**6 + usec) - ts_us) <= 1  # float rounding at most 1 µs


def test_scapy_reads_what_we_write(tmp_path: Path) -> None:
    scapy_utils = pytest.importorskip("scapy.utils")
    path = tmp_path / "x.pcap"
    frames = [bytes([i]) * (60 + i) for i in range(5)]
    with path.open("wb") as f:
        w = PcapWriter(f)
        for i, frame in enumerate(frames):
            w.write(frame, ts=1000.0 + i * 0.5)
    packets = scapy_utils.rdpcap(str(path))
    assert [bytes(p) for p in packets] == frames
    assert [float(p.time) for p in packets] == [1000.0 + i * 0.5 for i in range(5)]

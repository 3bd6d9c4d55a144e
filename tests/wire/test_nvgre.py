import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sclp.wire import nvgre
from sclp.wire.errors import DropReason, MalformedPacket
from sclp.wire.nvgre import (
    IPPROTO_GRE,
    NVGRE_LEN,
    NvgreHeader,
    decode,
    encode,
    encode_into,
)

# RFC 7637 §3.2 layout by hand: C=0 K=1 S=0, reserved0 0, version 0 -> 0x2000;
# protocol type 0x6558; key = VSID 0x123456 | FlowID 0x78.
RFC_VECTOR = bytes([0x20, 0x00, 0x65, 0x58, 0x12, 0x34, 0x56, 0x78])


def test_constants() -> None:
    assert NVGRE_LEN == 8
    assert IPPROTO_GRE == 47


def test_vector() -> None:
    assert decode(RFC_VECTOR + b"inner") == NvgreHeader(vsid=0x123456, flow_id=0x78)
    assert encode(NvgreHeader(vsid=0x123456, flow_id=0x78)) == RFC_VECTOR
    assert encode(NvgreHeader(vsid=1)) == bytes([0x20, 0, 0x65, 0x58, 0, 0, 1, 0])


@pytest.mark.parametrize(
    ("word0", "proto"),
    [
        (0x0000, 0x6558),  # K clear
        (0xA000, 0x6558),  # C set
        (0x3000, 0x6558),  # S set
        (0x6000, 0x6558),  # R (RFC 1701 routing present) set
        (0x2800, 0x6558),  # RFC 1701 strict source route
        (0x2400, 0x6558),  # RFC 1701 recursion control (high bit)
        (0x2001, 0x6558),  # version 1 (PPTP's enhanced GRE)
        (0x2007, 0x6558),
        (0x2000, 0x0800),  # IPv4 payload: plain GRE, not NVGRE
        (0x2000, 0x88BE),
    ],
)
def test_rejected_headers(word0: int, proto: int) -> None:
    raw = word0.to_bytes(2, "big") + proto.to_bytes(2, "big") + RFC_VECTOR[4:]
    with pytest.raises(MalformedPacket) as exc:
        decode(raw)
    assert exc.value.reason is DropReason.BAD_TUNNEL_HEADER


def test_reserved0_bits_6_to_12_ignored() -> None:
    raw = bytes([0x23, 0xF8]) + RFC_VECTOR[2:]  # 0x2000 | 0x03f8
    assert decode(raw) == NvgreHeader(vsid=0x123456, flow_id=0x78)


@pytest.mark.parametrize("n", range(NVGRE_LEN))
def test_truncated_is_too_short(n: int) -> None:
    with pytest.raises(MalformedPacket) as exc:
        decode(RFC_VECTOR[:n])
    assert exc.value.reason is DropReason.TOO_SHORT


@pytest.mark.parametrize(
    "hdr",
    [NvgreHeader(vsid=1 << 24), NvgreHeader(vsid=-1), NvgreHeader(1, 256), NvgreHeader(1, -1)],
)
def test_encode_rejects_out_of_range(hdr: NvgreHeader) -> None:
    with pytest.raises(ValueError):
        encode(hdr)


def test_encode_into() -> None:
    buf = bytearray(b"\xee" * 12)
    assert encode_into(memoryview(buf), 2, NvgreHeader(0x123456, 0x78)) == 8
    assert buf == b"\xee\xee" + RFC_VECTOR + b"\xee\xee"
    with pytest.raises(ValueError):
        encode_into(bytearray(9), 2, NvgreHeader(1))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0xFFFFFF), st.integers(0, 0xFF))
def test_round_trip(vsid: int, flow_id: int) -> None:
    hdr = NvgreHeader(vsid, flow_id)
    assert decode(encode(hdr)) == hdr


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=16))
def test_random_bytes_decode_or_malformed(data: bytes) -> None:
    try:
        hdr = decode(data)
    except MalformedPacket:
        return
    assert int.from_bytes(data[4:8], "big") == (hdr.vsid << 8) | hdr.flow_id
    assert data[2:4] == b"\x65\x58"


# -- the data path's fast paths: the same bytes as the codec --------------------------


def test_fast_paths_on_the_rfc_vector() -> None:
    assert nvgre.header(0x123456, 0x78) == RFC_VECTOR
    assert nvgre.header(0x123456, 0x1278) == RFC_VECTOR  # the low 8 bits of a flow hash
    assert nvgre.frame_of(RFC_VECTOR + b"\xaa" * 14) == (0x123456, NVGRE_LEN, 0)


@settings(max_examples=300)
@given(st.integers(0, nvgre.VSID_MAX), st.integers(0, 2**32 - 1))
def test_header_is_encode(vsid: int, flow: int) -> None:
    assert nvgre.header(vsid, flow) == encode(NvgreHeader(vsid, flow & 0xFF))


@settings(max_examples=400)
@given(st.binary(max_size=24), st.booleans())
def test_frame_of_is_decode(data: bytes, shaped: bool) -> None:
    if shaped and len(data) >= 4:  # make the fast path's shape (K only, TEB) likely
        data = bytes([0x20, 0, 0x65, 0x58]) + data[4:]
    try:
        expected: object = (decode(data).vsid, NVGRE_LEN, 0)
    except MalformedPacket as exc:
        expected = exc.reason
    try:
        got: object = nvgre.frame_of(data)
    except MalformedPacket as exc:
        got = exc.reason
    assert got == expected

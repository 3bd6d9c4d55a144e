import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sclp.wire.errors import DropReason, MalformedPacket
from sclp.wire.stt import (
    STT_HLEN,
    STT_PORT,
    SttFlags,
    SttHeader,
    decode,
    encode,
    encode_into,
    split_stt_seq,
    stt_seq,
)

# draft-davie-stt-08 §3.1 layout by hand: version 0; flags 0x0e (checksum partial,
# IPv4, TCP); L4 offset 34 (Ethernet 14 + IPv4 20); reserved 0; MSS 1448;
# PCP 1 | V | VLAN 100 = 0x3064; context ID 0x0102030405060708; padding.
VECTOR = bytes.fromhex(
    "00 0e 22 00"  # version, flags, L4 offset, reserved
    "05 a8 30 64"  # MSS, PCP|V|VLAN ID
    "01 02 03 04 05 06 07 08"  # context ID
    "00 00"  # padding
)
VECTOR_HDR = SttHeader(
    context_id=0x0102030405060708,
    flags=SttFlags.CSUM_PARTIAL | SttFlags.IPV4 | SttFlags.TCP,
    l4_offset=34,
    mss=1448,
    vlan_tci=(1 << 13) | 100,
)


def test_constants() -> None:
    assert STT_HLEN == 18
    assert STT_PORT == 7471
    assert [int(f) for f in SttFlags if f] == [0x01, 0x02, 0x04, 0x08]


def test_vector() -> None:
    hdr = decode(VECTOR + b"inner ethernet frame")
    assert hdr == VECTOR_HDR
    assert hdr.vlan_id == 100 and hdr.pcp == 1
    assert encode(VECTOR_HDR) == VECTOR


def test_no_vlan_no_offload() -> None:
    raw = bytes(8) + (0xFFFFFFFFFFFFFFFF).to_bytes(8, "big") + bytes(2)
    hdr = decode(raw)
    assert hdr == SttHeader(context_id=2**64 - 1)
    assert hdr.vlan_tci is None and hdr.vlan_id is None and hdr.pcp is None
    assert encode(hdr) == raw


def test_ignored_fields_on_receipt() -> None:
    raw = bytearray(VECTOR)
    raw[1] |= 0xF0  # unused flag bits
    raw[3] = 0xFF  # reserved
    raw[16:18] = b"\xff\xff"  # padding
    assert decode(bytes(raw)) == VECTOR_HDR
    # PCP/VLAN ID bits without V: no VLAN
    raw[6:8] = b"\xef\xff"
    assert decode(bytes(raw)).vlan_tci is None


@pytest.mark.parametrize("version", [1, 0x80, 0xFF])
def test_bad_version(version: int) -> None:
    with pytest.raises(MalformedPacket) as exc:
        decode(bytes([version]) + VECTOR[1:])
    assert exc.value.reason is DropReason.BAD_VERSION


@pytest.mark.parametrize("n", range(STT_HLEN))
def test_truncated_is_too_short(n: int) -> None:
    with pytest.raises(MalformedPacket) as exc:
        decode(VECTOR[:n])
    assert exc.value.reason is DropReason.TOO_SHORT


@pytest.mark.parametrize(
    "hdr",
    [
        SttHeader(context_id=1 << 64),
        SttHeader(context_id=-1),
        SttHeader(context_id=1, flags=SttFlags(0x10)),
        SttHeader(context_id=1, l4_offset=256),
        SttHeader(context_id=1, mss=0x10000),
        SttHeader(context_id=1, vlan_tci=0x1000),  # DEI has no room: its bit is V
        SttHeader(context_id=1, vlan_tci=0x10000),
        SttHeader(context_id=1, vlan_tci=-1),
    ],
)
def test_encode_rejects_invalid(hdr: SttHeader) -> None:
    with pytest.raises(ValueError):
        encode(hdr)


def test_encode_into() -> None:
    buf = bytearray(b"\xee" * 24)
    assert encode_into(buf, 3, VECTOR_HDR) == STT_HLEN
    assert buf == b"\xee" * 3 + VECTOR + b"\xee" * 3
    with pytest.raises(ValueError):
        encode_into(bytearray(20), 3, VECTOR_HDR)


def test_stt_seq_vector() -> None:
    # §3.2: frame length in the upper 16 bits, segment offset in the lower 16
    assert stt_seq(0x1234, 0x0567) == 0x12340567
    assert split_stt_seq(0x12340567) == (0x1234, 0x0567)
    assert stt_seq(0xFFFF, 0) == 0xFFFF0000
    assert stt_seq(0, 0) == 0


@pytest.mark.parametrize(("frame_len", "offset"), [(0x10000, 0), (-1, 0), (1, 0x10000), (1, -1)])
def test_stt_seq_range(frame_len: int, offset: int) -> None:
    with pytest.raises(ValueError):
        stt_seq(frame_len, offset)


@pytest.mark.parametrize("seq", [-1, 1 << 32])
def test_split_stt_seq_range(seq: int) -> None:
    with pytest.raises(ValueError):
        split_stt_seq(seq)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_seq_round_trip(frame_len: int, offset: int) -> None:
    assert split_stt_seq(stt_seq(frame_len, offset)) == (frame_len, offset)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 2**64 - 1),
    st.integers(0, 0x0F).map(SttFlags),
    st.integers(0, 0xFF),
    st.integers(0, 0xFFFF),
    st.none() | st.integers(0, 0xFFFF).map(lambda t: t & ~0x1000),
)
def test_round_trip(
    context_id: int, flags: SttFlags, l4_offset: int, mss: int, vlan_tci: int | None
) -> None:
    hdr = SttHeader(context_id, flags, l4_offset, mss, vlan_tci)
    raw = encode(hdr)
    assert len(raw) == STT_HLEN
    assert raw[0] == 0 and raw[3] == 0 and raw[16:] == b"\0\0"
    assert decode(raw) == hdr


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=32))
def test_random_bytes_decode_or_malformed(data: bytes) -> None:
    try:
        hdr = decode(data)
    except MalformedPacket:
        return
    assert data[0] == 0
    assert hdr.context_id == int.from_bytes(data[8:16], "big")
    assert int(hdr.flags) == data[1] & 0x0F
    # re-encoding keeps every meaningful field
    assert decode(encode(hdr)) == hdr

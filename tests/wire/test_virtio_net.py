import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sclp.wire import virtio_net
from sclp.wire.errors import DropReason, MalformedPacket
from sclp.wire.virtio_net import (
    DATA_VALID,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    NEEDS_CSUM,
    VNET_HDR_LEN,
    VNET_HDR_NONE,
    GsoType,
    VirtioNetFlags,
    VirtioNetHeader,
)


def test_constants_match_linux_uapi() -> None:
    assert VNET_HDR_LEN == 10
    assert (NEEDS_CSUM, DATA_VALID) == (1, 2)
    assert (GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4, GSO_ECN) == (0, 1, 3, 4, 5, 0x80)
    assert VirtioNetFlags.NEEDS_CSUM == 1 and GsoType.UDP_L4 == 5
    assert len(VNET_HDR_NONE) == 10 and not any(VNET_HDR_NONE)
    assert virtio_net.decode(VNET_HDR_NONE) == VirtioNetHeader()


def test_known_vector_little_endian() -> None:
    # A TSO IPv4 frame: NEEDS_CSUM, TCPV4, hdr_len 66, gso_size 1448,
    # csum_start 34 (after Ethernet+IPv4), csum_offset 16 (TCP checksum field).
    raw = bytes.fromhex("01 01 4200 a805 2200 1000")
    h = virtio_net.decode(raw)
    assert h == VirtioNetHeader(NEEDS_CSUM, GSO_TCPV4, 66, 1448, 34, 16)
    assert h.needs_csum and h.gso_kind == GSO_TCPV4
    assert virtio_net.encode(h) == raw


def test_ecn_bit() -> None:
    h = VirtioNetHeader(gso_type=GSO_TCPV6 | GSO_ECN)
    assert h.gso_kind == GSO_TCPV6
    assert not h.needs_csum


def test_encode_into_offset() -> None:
    buf = bytearray(b"\x55" * 14)
    assert virtio_net.encode_into(buf, 2, VirtioNetHeader(DATA_VALID)) == 10
    assert buf == b"\x55\x55\x02" + bytes(9) + b"\x55\x55"


def test_truncation_at_every_length() -> None:
    raw = virtio_net.encode(VirtioNetHeader(1, 4, 86, 1428, 54, 16))
    for n in range(VNET_HDR_LEN):
        with pytest.raises(MalformedPacket) as exc:
            virtio_net.decode(raw[:n])
        assert exc.value.reason is DropReason.TOO_SHORT


@pytest.mark.parametrize(
    "bad", [VirtioNetHeader(flags=256), VirtioNetHeader(gso_size=0x10000), VirtioNetHeader(-1)]
)
def test_encode_rejects_invalid_fields(bad: VirtioNetHeader) -> None:
    with pytest.raises(ValueError):
        virtio_net.encode(bad)


headers = st.builds(
    VirtioNetHeader,
    flags=st.integers(0, 255),
    gso_type=st.integers(0, 255),
    hdr_len=st.integers(0, 0xFFFF),
    gso_size=st.integers(0, 0xFFFF),
    csum_start=st.integers(0, 0xFFFF),
    csum_offset=st.integers(0, 0xFFFF),
)


@settings(max_examples=200, deadline=None)
@given(headers)
def test_round_trip_and_layout(h: VirtioNetHeader) -> None:
    raw = virtio_net.encode(h)
    assert raw == struct.pack(
        "<BBHHHH", h.flags, h.gso_type, h.hdr_len, h.gso_size, h.csum_start, h.csum_offset
    )
    assert virtio_net.decode(raw + b"frame") == h


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=20))
def test_random_bytes_decode_or_malformed(data: bytes) -> None:
    try:
        h = virtio_net.decode(data)
    except MalformedPacket:
        assert len(data) < VNET_HDR_LEN
        return
    assert virtio_net.encode(h) == data[:VNET_HDR_LEN]


@settings(max_examples=200, deadline=None)
@given(headers)
def test_the_data_paths_struct_is_the_codec(h: VirtioNetHeader) -> None:
    """The data path packs and unpacks VNET_HDR directly (no header object per frame):
    the same bytes as encode/decode, and VNET_HDR_NONE is the all-default header."""
    fields = (h.flags, h.gso_type, h.hdr_len, h.gso_size, h.csum_start, h.csum_offset)
    assert virtio_net.VNET_HDR.pack(*fields) == virtio_net.encode(h)
    assert virtio_net.VNET_HDR.unpack_from(virtio_net.encode(h) + b"frame") == fields
    assert virtio_net.VNET_HDR.size == VNET_HDR_LEN
    assert virtio_net.encode(VirtioNetHeader()) == VNET_HDR_NONE

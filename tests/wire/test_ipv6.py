import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sclp.wire import ipv6
from sclp.wire.checksum import checksum_reference, internet_checksum
from sclp.wire.errors import DropReason, MalformedPacket
from sclp.wire.ipv6 import IPV6_HLEN, IPv6Header, pseudo_header_sum

scapy_inet6 = pytest.importorskip("scapy.layers.inet6")

SRC = ipaddress.IPv6Address("2001:db8::1").packed
DST = ipaddress.IPv6Address("2001:db8::2").packed
# version 6, traffic class 0xb8, flow label 0x12345, payload 8, next header UDP, hop 64
VECTOR = bytes.fromhex("6b812345 0008 11 40") + SRC + DST


def test_known_vector() -> None:
    h = IPv6Header(SRC, DST, 17, 8, hop_limit=64, traffic_class=0xB8, flow_label=0x12345)
    assert ipv6.encode(h) == VECTOR
    assert ipv6.decode(VECTOR + bytes(8)) == h
    assert h.header_len == IPV6_HLEN == 40


def test_encode_into_offset() -> None:
    buf = bytearray(b"\xee" * 50)
    assert ipv6.encode_into(buf, 7, ipv6.decode(VECTOR + bytes(8))) == 40
    assert bytes(buf[7:47]) == VECTOR
    assert buf[:7] == b"\xee" * 7 and buf[47:] == b"\xee" * 3


def test_bad_version() -> None:
    bad = bytearray(VECTOR + bytes(8))
    bad[0] = 0x4B
    with pytest.raises(MalformedPacket) as exc:
        ipv6.decode(bad)
    assert exc.value.reason is DropReason.BAD_VERSION


def test_truncation_at_every_length() -> None:
    packet = VECTOR + bytes(8)
    for n in range(len(packet)):
        with pytest.raises(MalformedPacket) as exc:
            ipv6.decode(packet[:n])
        expected = DropReason.TOO_SHORT if n < IPV6_HLEN else DropReason.MALFORMED
        assert exc.value.reason is expected


def test_trailing_bytes_allowed() -> None:
    assert ipv6.decode(VECTOR + bytes(20)).payload_length == 8


@pytest.mark.parametrize(
    "bad",
    [
        IPv6Header(SRC[:4], DST, 6, 0),
        IPv6Header(SRC, DST, 6, 0x10000),
        IPv6Header(SRC, DST, 6, 0, traffic_class=256),
        IPv6Header(SRC, DST, 6, 0, flow_label=1 << 20),
        IPv6Header(SRC, DST, 6, 0, hop_limit=-1),
    ],
)
def test_encode_rejects_invalid_fields(bad: IPv6Header) -> None:
    with pytest.raises(ValueError):
        ipv6.encode(bad)


def test_pseudo_header_sum_matches_literal() -> None:
    data = bytes(range(77))
    literal = SRC + DST + len(data).to_bytes(4, "big") + bytes([0, 0, 0, 6]) + data
    assert internet_checksum(data, pseudo_header_sum(SRC, DST, 6, len(data))) == (
        checksum_reference(literal)
    )


def test_pseudo_header_sum_32bit_length() -> None:
    # Upper-layer length is a 32-bit field: 0x12345 contributes 0x0001 + 0x2345.
    literal = SRC + DST + (0x12345).to_bytes(4, "big") + bytes([0, 0, 0, 17])
    assert pseudo_header_sum(SRC, DST, 17, 0x12345) == (~checksum_reference(literal) & 0xFFFF)


headers = st.builds(
    IPv6Header,
    src=st.binary(min_size=16, max_size=16),
    dst=st.binary(min_size=16, max_size=16),
    next_header=st.integers(0, 255),
    payload_length=st.integers(0, 64),
    hop_limit=st.integers(0, 255),
    traffic_class=st.integers(0, 255),
    flow_label=st.integers(0, 0xFFFFF),
)


@settings(max_examples=200, deadline=None)
@given(headers)
def test_round_trip(h: IPv6Header) -> None:
    raw = ipv6.encode(h)
    assert ipv6.decode(raw + bytes(h.payload_length)) == h


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_decode_or_malformed(data: bytes) -> None:
    try:
        h = ipv6.decode(data)
    except MalformedPacket:
        return
    assert IPV6_HLEN + h.payload_length <= len(data)


def test_scapy_parses_ours() -> None:
    h = IPv6Header(SRC, DST, 58, 4, hop_limit=255, traffic_class=0x2E, flow_label=0xABCDE)
    pkt = scapy_inet6.IPv6(ipv6.encode(h) + bytes(4))
    assert (pkt.version, pkt.tc, pkt.fl, pkt.plen, pkt.nh, pkt.hlim) == (
        6, 0x2E, 0xABCDE, 4, 58, 255,
    )  # fmt: skip
    assert pkt.src == "2001:db8::1" and pkt.dst == "2001:db8::2"


def test_we_parse_scapy() -> None:
    raw = bytes(
        scapy_inet6.IPv6(src="fe80::1", dst="ff02::1", tc=7, fl=99, hlim=1, nh=59) / (b"q" * 10)
    )
    assert ipv6.decode(raw) == IPv6Header(
        ipaddress.IPv6Address("fe80::1").packed,
        ipaddress.IPv6Address("ff02::1").packed,
        59, 10, hop_limit=1, traffic_class=7, flow_label=99,
    )  # fmt: skip

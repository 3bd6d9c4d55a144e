import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sclp.wire import ipv4, ipv6, udp
from sclp.wire.checksum import checksum_reference, internet_checksum
from sclp.wire.errors import DropReason, MalformedPacket
from sclp.wire.udp import UDP_CSUM_OFFSET, UDP_HLEN, UdpHeader, udp_checksum

scapy_inet = pytest.importorskip("scapy.layers.inet")
scapy_inet6 = pytest.importorskip("scapy.layers.inet6")

VECTOR = bytes.fromhex("c000 12b5 0010 beef")  # 49152 -> 4789, length 16


def test_constants() -> None:
    assert UDP_HLEN == 8 and UDP_CSUM_OFFSET == 6


def test_known_vector() -> None:
    h = UdpHeader(49152, 4789, 16, 0xBEEF)
    assert udp.encode(h) == VECTOR
    assert udp.decode(VECTOR + bytes(8)) == h
    buf = bytearray(12)
    assert udp.encode_into(buf, 4, h) == 8
    assert bytes(buf[4:]) == VECTOR and buf[:4] == bytes(4)


def test_truncation_at_every_length() -> None:
    packet = VECTOR + bytes(8)
    for n in range(len(packet)):
        with pytest.raises(MalformedPacket) as exc:
            udp.decode(packet[:n])
        expected = DropReason.TOO_SHORT if n < UDP_HLEN else DropReason.MALFORMED
        assert exc.value.reason is expected


@pytest.mark.parametrize("length", [0, 7])
def test_length_below_header(length: int) -> None:
    raw = udp.encode(UdpHeader(1, 2, length)) + bytes(10)
    with pytest.raises(MalformedPacket) as exc:
        udp.decode(raw)
    assert exc.value.reason is DropReason.MALFORMED


@pytest.mark.parametrize("bad", [UdpHeader(0x10000, 1, 8), UdpHeader(1, 1, -1)])
def test_encode_rejects_invalid_fields(bad: UdpHeader) -> None:
    with pytest.raises(ValueError):
        udp.encode_into(bytearray(8), 0, bad)


def test_zero_checksum_is_sent_as_all_ones() -> None:
    # Find data whose checksum computes to 0 with an all-zero pseudo-sum: the datagram
    # must sum to 0xFFFF.  Header 0001 0002 000a 0000 sums to 0x000d; data 0xfff2.
    datagram = bytes.fromhex("0001 0002 000a 0000 fff2")
    assert internet_checksum(datagram) == 0
    assert udp_checksum(0, datagram) == 0xFFFF


def test_checksum_verifies() -> None:
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    dg = bytearray(udp.encode(UdpHeader(5, 6, 8 + 11)) + b"hello world")
    ps = ipv4.pseudo_header_sum(src, dst, 17, len(dg))
    dg[6:8] = udp_checksum(ps, dg).to_bytes(2, "big")
    assert internet_checksum(dg, ps) == 0
    literal = src + dst + bytes([0, 17]) + len(dg).to_bytes(2, "big") + dg
    assert checksum_reference(literal) == 0


headers = st.builds(
    UdpHeader,
    sport=st.integers(0, 0xFFFF),
    dport=st.integers(0, 0xFFFF),
    length=st.integers(8, 64),
    checksum=st.integers(0, 0xFFFF),
)


@settings(max_examples=200, deadline=None)
@given(headers)
def test_round_trip(h: UdpHeader) -> None:
    raw = udp.encode(h)
    assert len(raw) == h.header_len == 8
    assert udp.decode(raw + bytes(h.length - 8)) == h


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_random_bytes_decode_or_malformed(data: bytes) -> None:
    try:
        h = udp.decode(data)
    except MalformedPacket:
        return
    assert UDP_HLEN <= h.length <= len(data)


def _datagram(ps: int, sport: int, dport: int, data: bytes) -> bytes:
    dg = bytearray(udp.encode(UdpHeader(sport, dport, 8 + len(data))) + data)
    dg[6:8] = udp_checksum(ps, dg).to_bytes(2, "big")
    return bytes(dg)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=300))
def test_checksum_matches_scapy_ipv4(sport: int, dport: int, data: bytes) -> None:
    src, dst = bytes([192, 0, 2, 1]), bytes([192, 0, 2, 200])
    dg = _datagram(ipv4.pseudo_header_sum(src, dst, 17, 8 + len(data)), sport, dport, data)
    ref = (
        scapy_inet.IP(src="192.0.2.1", dst="192.0.2.200")
        / scapy_inet.UDP(sport=sport, dport=dport)
        / data
    )
    assert bytes(ref)[20:] == dg


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=300))
def test_checksum_matches_scapy_ipv6(sport: int, dport: int, data: bytes) -> None:
    src = ipaddress.IPv6Address("2001:db8::1").packed
    dst = ipaddress.IPv6Address("2001:db8:1::2").packed
    dg = _datagram(ipv6.pseudo_header_sum(src, dst, 17, 8 + len(data)), sport, dport, data)
    ref = (
        scapy_inet6.IPv6(src="2001:db8::1", dst="2001:db8:1::2")
        / scapy_inet.UDP(sport=sport, dport=dport)
        / data
    )
    assert bytes(ref)[40:] == dg


def test_we_parse_scapy() -> None:
    raw = bytes(scapy_inet.UDP(sport=4789, dport=6081) / (b"v" * 9))
    h = udp.decode(raw)
    assert (h.sport, h.dport, h.length) == (4789, 6081, 17)

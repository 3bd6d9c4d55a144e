import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sclp.wire import ipv4, ipv6, tcp
from sclp.wire.checksum import checksum_reference
from sclp.wire.errors import DropReason, MalformedPacket
from sclp.wire.tcp import TCP_CSUM_OFFSET, TCP_HLEN, TcpFlags, TcpHeader, tcp_checksum

scapy_inet = pytest.importorskip("scapy.layers.inet")
scapy_inet6 = pytest.importorskip("scapy.layers.inet6")

# sport 0x1234, dport 80, seq 1, ack 2, doff 6, flags SYN|ACK, window 0xffff,
# checksum 0xabcd, urgent 0, options MSS 1460.
VECTOR = bytes.fromhex("1234005000000001000000026012ffffabcd0000020405b4")


def test_flag_values() -> None:
    assert [int(f) for f in (TcpFlags.FIN, TcpFlags.SYN, TcpFlags.RST, TcpFlags.PSH)] == [
        1, 2, 4, 8,
    ]  # fmt: skip
    assert [int(f) for f in (TcpFlags.ACK, TcpFlags.URG, TcpFlags.ECE, TcpFlags.CWR)] == [
        0x10, 0x20, 0x40, 0x80,
    ]  # fmt: skip
    assert TCP_CSUM_OFFSET == 16 and TCP_HLEN == 20


def test_known_vector() -> None:
    h = TcpHeader(
        0x1234, 80, 1, 2, TcpFlags.SYN | TcpFlags.ACK, 0xFFFF, 0xABCD, 0, b"\x02\x04\x05\xb4"
    )
    assert tcp.encode(h) == VECTOR
    assert tcp.decode(VECTOR) == h
    assert h.header_len == 24


def test_options_are_padded() -> None:
    h = TcpHeader(1, 2, 3, 4, TcpFlags.ACK, 5, options=b"\x01\x01\x08")
    raw = tcp.encode(h)
    assert h.header_len == len(raw) == 24
    assert raw[12] >> 4 == 6
    assert raw[20:] == b"\x01\x01\x08\x00"
    assert tcp.decode(raw).options == b"\x01\x01\x08\x00"


def test_padding_overwrites_stale_bytes() -> None:
    buf = bytearray(b"\xff" * 30)
    n = tcp.encode_into(buf, 2, TcpHeader(1, 2, 3, 4, TcpFlags.ACK, 5, options=b"\x01"))
    assert n == 24
    assert buf[22:26] == b"\x01\x00\x00\x00"
    assert buf[26:] == b"\xff" * 4


def test_reserved_bits_ignored_on_decode() -> None:
    raw = bytearray(VECTOR)
    raw[12] |= 0x0F
    assert tcp.decode(raw) == tcp.decode(VECTOR)


def test_data_offset_below_five() -> None:
    raw = bytearray(VECTOR)
    raw[12] = 0x40
    with pytest.raises(MalformedPacket) as exc:
        tcp.decode(raw)
    assert exc.value.reason is DropReason.MALFORMED


def test_truncation_at_every_length() -> None:
    for n in range(len(VECTOR)):
        with pytest.raises(MalformedPacket) as exc:
            tcp.decode(VECTOR[:n])
        assert exc.value.reason is DropReason.TOO_SHORT


@pytest.mark.parametrize(
    "bad",
    [
        TcpHeader(1, 2, 3, 4, TcpFlags.ACK, 5, options=bytes(41)),
        TcpHeader(0x10000, 2, 3, 4, TcpFlags.ACK, 5),
        TcpHeader(1, 2, 1 << 32, 4, TcpFlags.ACK, 5),
        TcpHeader(1, 2, 3, 4, TcpFlags(0x100), 5),
    ],
)
def test_encode_rejects_invalid_fields(bad: TcpHeader) -> None:
    with pytest.raises(ValueError):
        tcp.encode(bad)


def _segment_v4(src: bytes, dst: bytes, hdr: TcpHeader, data: bytes) -> bytes:
    seg = bytearray(tcp.encode(TcpHeader(**{**_fields(hdr), "checksum": 0})) + data)
    csum = tcp_checksum(ipv4.pseudo_header_sum(src, dst, 6, len(seg)), seg)
    seg[TCP_CSUM_OFFSET : TCP_CSUM_OFFSET + 2] = csum.to_bytes(2, "big")
    return bytes(seg)


def _fields(h: TcpHeader) -> dict[str, object]:
    return {name: getattr(h, name) for name in TcpHeader.__slots__}


def test_checksum_verifies_to_zero() -> None:
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    seg = _segment_v4(src, dst, TcpHeader(1000, 2000, 7, 9, TcpFlags.PSH, 512), b"abc")
    assert tcp_checksum(ipv4.pseudo_header_sum(src, dst, 6, len(seg)), seg) == 0
    literal = src + dst + bytes([0, 6]) + len(seg).to_bytes(2, "big") + seg
    assert checksum_reference(literal) == 0


headers = st.builds(
    TcpHeader,
    sport=st.integers(0, 0xFFFF),
    dport=st.integers(0, 0xFFFF),
    seq=st.integers(0, 0xFFFFFFFF),
    ack=st.integers(0, 0xFFFFFFFF),
    flags=st.integers(0, 0xFF).map(TcpFlags),
    window=st.integers(0, 0xFFFF),
    checksum=st.integers(0, 0xFFFF),
    urgent=st.integers(0, 0xFFFF),
    options=st.integers(0, 10).map(lambda k: bytes(range(1, 4 * k + 1))),
)


@settings(max_examples=200, deadline=None)
@given(headers)
def test_round_trip(h: TcpHeader) -> None:
    assert tcp.decode(tcp.encode(h)) == h


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_random_bytes_decode_or_malformed(data: bytes) -> None:
    try:
        h = tcp.decode(data)
    except MalformedPacket:
        return
    assert TCP_HLEN <= h.header_len <= len(data)


# --- cross-checks against Scapy -------------------------------------------------------


# Scapy re-parses options on rebuild: give it options it understands (NOP, MSS, EOL).
scapy_friendly = headers.map(
    lambda h: TcpHeader(
        **{**_fields(h), "options": b"\x01" * (len(h.options) % 8) + b"\x02\x04\x05\xb4"}
    )
)


@settings(max_examples=30, deadline=None)
@given(scapy_friendly, st.binary(max_size=100))
def test_checksum_matches_scapy_ipv4(h: TcpHeader, data: bytes) -> None:
    src, dst = bytes([192, 0, 2, 1]), bytes([198, 51, 100, 2])
    seg = _segment_v4(src, dst, h, data)
    ip = ipv4.encode(ipv4.IPv4Header(src, dst, 6, 20 + len(seg)))
    pkt = scapy_inet.IP(ip + seg)
    t = pkt[scapy_inet.TCP]
    assert (t.sport, t.dport, t.seq, t.ack, int(t.flags), t.window, t.urgptr) == (
        h.sport, h.dport, h.seq, h.ack, int(h.flags), h.window, h.urgent,
    )  # fmt: skip
    ours = t.chksum
    del t.chksum  # let Scapy compute it from scratch
    assert scapy_inet.IP(bytes(pkt))[scapy_inet.TCP].chksum == ours


def test_checksum_matches_scapy_ipv6() -> None:
    src = ipaddress.IPv6Address("2001:db8::a").packed
    dst = ipaddress.IPv6Address("2001:db8::b").packed
    seg = bytearray(tcp.encode(TcpHeader(443, 50000, 11, 22, TcpFlags.ACK, 100)) + b"x" * 1001)
    seg[16:18] = tcp_checksum(ipv6.pseudo_header_sum(src, dst, 6, len(seg)), seg).to_bytes(2, "big")
    ref = (
        scapy_inet6.IPv6(src="2001:db8::a", dst="2001:db8::b")
        / scapy_inet.TCP(sport=443, dport=50000, seq=11, ack=22, flags="A", window=100)
        / (b"x" * 1001)
    )
    assert bytes(ref)[40:] == bytes(seg)


def test_we_parse_scapy() -> None:
    raw = bytes(
        scapy_inet.TCP(
            sport=22, dport=6000, seq=0xDEADBEEF, ack=5, flags="FPU", window=7, urgptr=3,
            options=[("MSS", 1400), ("SAckOK", b""), ("WScale", 7)],
        )
    )  # fmt: skip
    h = tcp.decode(raw)
    assert (h.sport, h.dport, h.seq, h.ack, h.window, h.urgent) == (22, 6000, 0xDEADBEEF, 5, 7, 3)
    assert h.flags == TcpFlags.FIN | TcpFlags.PSH | TcpFlags.URG
    assert h.header_len == len(raw)
    assert tcp.encode(h) == raw

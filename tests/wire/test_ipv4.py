import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sclp.wire import ipv4
from sclp.wire.checksum import checksum_reference, internet_checksum
from sclp.wire.errors import DropReason, MalformedPacket
from sclp.wire.ipv4 import IPV4_HLEN, IPv4Flags, IPv4Header, pseudo_header_sum

scapy_inet = pytest.importorskip("scapy.layers.inet")

# The classic example (RFC 1071 style, as on Wikipedia "IPv4 header checksum"):
# 4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7
CLASSIC = bytes.fromhex("45000073000040004011b861c0a80001c0a800c7")
CLASSIC_PACKET = CLASSIC + bytes(0x73 - 20)


def test_classic_vector_decode() -> None:
    h = ipv4.decode(CLASSIC_PACKET)
    assert h == IPv4Header(
        src=bytes([192, 168, 0, 1]),
        dst=bytes([192, 168, 0, 199]),
        protocol=17,
        total_length=0x73,
        ident=0,
        flags=IPv4Flags.DF,
        frag_offset=0,
        ttl=64,
        tos=0,
        checksum=0xB861,
    )
    assert h.header_len == 20
    assert h.payload_length == 0x73 - 20
    assert not h.is_fragment


def test_classic_vector_encode_computes_checksum() -> None:
    h = IPv4Header(
        src=bytes([192, 168, 0, 1]), dst=bytes([192, 168, 0, 199]), protocol=17, total_length=0x73
    )
    assert ipv4.encode(h) == CLASSIC


def test_encode_ignores_given_checksum_and_writes_at_offset() -> None:
    h = ipv4.decode(CLASSIC_PACKET)
    buf = bytearray(b"\xaa" * 30)
    assert ipv4.encode_into(buf, 5, IPv4Header(h.src, h.dst, 17, 0x73, checksum=0x1234)) == 20
    assert bytes(buf[5:25]) == CLASSIC
    assert buf[:5] == b"\xaa" * 5 and buf[25:] == b"\xaa" * 5


def test_bad_checksum() -> None:
    bad = bytearray(CLASSIC_PACKET)
    bad[11] ^= 1
    with pytest.raises(MalformedPacket) as exc:
        ipv4.decode(bad)
    assert exc.value.reason is DropReason.BAD_CHECKSUM
    assert ipv4.decode(bad, verify_checksum=False).checksum == 0xB860


def test_bad_version() -> None:
    bad = bytearray(CLASSIC_PACKET)
    bad[0] = 0x65
    with pytest.raises(MalformedPacket) as exc:
        ipv4.decode(bad)
    assert exc.value.reason is DropReason.BAD_VERSION


def test_ihl_below_five_is_malformed() -> None:
    bad = bytearray(CLASSIC_PACKET)
    bad[0] = 0x44
    with pytest.raises(MalformedPacket) as exc:
        ipv4.decode(bad, verify_checksum=False)
    assert exc.value.reason is DropReason.MALFORMED


@pytest.mark.parametrize("total_length", [0, 19, 0x74, 0xFFFF])
def test_total_length_inconsistent_with_buffer(total_length: int) -> None:
    bad = bytearray(CLASSIC_PACKET)
    bad[2:4] = total_length.to_bytes(2, "big")
    with pytest.raises(MalformedPacket) as exc:
        ipv4.decode(bad, verify_checksum=False)
    assert exc.value.reason is DropReason.MALFORMED


def test_trailing_bytes_are_allowed() -> None:
    # Ethernet pads short frames: the buffer may be longer than total_length.
    assert ipv4.decode(CLASSIC_PACKET + b"\0" * 10).total_length == 0x73


def test_truncation_at_every_length() -> None:
    for n in range(len(CLASSIC_PACKET)):
        with pytest.raises(MalformedPacket) as exc:
            ipv4.decode(CLASSIC_PACKET[:n])
        expected = DropReason.TOO_SHORT if n < IPV4_HLEN else DropReason.MALFORMED
        assert exc.value.reason is expected


def test_options_round_trip_and_truncated_options() -> None:
    h = IPv4Header(b"\x01\x02\x03\x04", b"\x05\x06\x07\x08", 6, 28, options=b"\x94\x04\x00\x00")
    raw = ipv4.encode(h)
    assert raw[0] == 0x46 and len(raw) == 24
    assert ipv4.decode(raw + bytes(4)).options == h.options
    with pytest.raises(MalformedPacket) as exc:
        ipv4.decode(raw[:22])
    assert exc.value.reason is DropReason.TOO_SHORT


@pytest.mark.parametrize(
    "bad",
    [
        IPv4Header(bytes(4), bytes(4), 6, 20, options=b"\x01"),
        IPv4Header(bytes(4), bytes(4), 6, 64, options=bytes(44)),
        IPv4Header(bytes(3), bytes(4), 6, 20),
        IPv4Header(bytes(4), bytes(4), 6, 0x10000),
        IPv4Header(bytes(4), bytes(4), 256, 20),
        IPv4Header(bytes(4), bytes(4), 6, 20, frag_offset=0x2000),
    ],
)
def test_encode_rejects_invalid_fields(bad: IPv4Header) -> None:
    with pytest.raises(ValueError):
        ipv4.encode(bad)


def test_encode_into_small_buffer() -> None:
    with pytest.raises(ValueError):
        ipv4.encode_into(bytearray(25), 10, IPv4Header(bytes(4), bytes(4), 6, 20))


def test_pseudo_header_sum_matches_literal_pseudo_header() -> None:
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    data = b"hello world!"
    literal = src + dst + bytes([0, 17]) + len(data).to_bytes(2, "big") + data
    assert internet_checksum(data, pseudo_header_sum(src, dst, 17, len(data))) == (
        checksum_reference(literal)
    )


headers = st.builds(
    IPv4Header,
    src=st.binary(min_size=4, max_size=4),
    dst=st.binary(min_size=4, max_size=4),
    protocol=st.integers(0, 255),
    total_length=st.integers(60, 200),
    ident=st.integers(0, 0xFFFF),
    flags=st.sampled_from([IPv4Flags.NONE, IPv4Flags.DF, IPv4Flags.MF]),
    frag_offset=st.integers(0, 0x1FFF),
    ttl=st.integers(0, 255),
    tos=st.integers(0, 255),
    options=st.integers(0, 10).map(lambda k: bytes(range(1, 4 * k + 1))),
)


@settings(max_examples=200, deadline=None)
@given(headers)
def test_round_trip(h: IPv4Header) -> None:
    raw = ipv4.encode(h)
    assert len(raw) == h.header_len
    assert checksum_reference(raw) == 0
    packet = raw + bytes(h.total_length - len(raw))
    decoded = ipv4.decode(packet)
    assert decoded == IPv4Header(
        h.src, h.dst, h.protocol, h.total_length, h.ident, h.flags, h.frag_offset,
        h.ttl, h.tos, h.options, int.from_bytes(raw[10:12], "big"),
    )  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.booleans())
def test_random_bytes_decode_or_malformed(data: bytes, verify: bool) -> None:
    try:
        h = ipv4.decode(data, verify_checksum=verify)
    except MalformedPacket:
        return
    assert h.header_len <= h.total_length <= len(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=20, max_size=60))
def test_random_valid_version_header_decode_or_malformed(tail: bytes) -> None:
    data = bytes([0x45]) + tail[1:]
    try:
        ipv4.decode(data, verify_checksum=False)
    except MalformedPacket as exc:
        assert exc.reason in (DropReason.MALFORMED, DropReason.TOO_SHORT)


# --- cross-checks against Scapy -------------------------------------------------------


def test_scapy_parses_ours() -> None:
    h = IPv4Header(
        src=bytes([10, 1, 2, 3]), dst=bytes([192, 0, 2, 77]), protocol=6, total_length=44,
        ident=0xBEEF, flags=IPv4Flags.MF, frag_offset=123, ttl=17, tos=0xB8,
        options=b"\x01\x01\x01\x00",
    )  # fmt: skip
    pkt = scapy_inet.IP(ipv4.encode(h) + bytes(20))
    assert pkt.version == 4 and pkt.ihl == 6
    assert pkt.src == "10.1.2.3" and pkt.dst == "192.0.2.77"
    fields = (pkt.proto, pkt.len, pkt.id, pkt.ttl, pkt.tos, pkt.frag)
    assert fields == (6, 44, 0xBEEF, 17, 0xB8, 123)
    assert int(pkt.flags) == int(IPv4Flags.MF)
    # Scapy recomputes the checksum when it rebuilds with chksum unset: same value.
    original = pkt.chksum
    del pkt.chksum
    assert scapy_inet.IP(bytes(pkt)).chksum == original


def test_we_parse_scapy() -> None:
    pkt = (
        scapy_inet.IP(
            src="198.51.100.7", dst="203.0.113.9", proto=17, id=4242, flags="DF", ttl=3, tos=4
        )
        / scapy_inet.UDP(sport=1, dport=2)
        / (b"z" * 33)
    )
    raw = bytes(pkt)
    h = ipv4.decode(raw)
    assert h.src == ipaddress.IPv4Address("198.51.100.7").packed
    assert h.dst == ipaddress.IPv4Address("203.0.113.9").packed
    assert (h.protocol, h.total_length, h.ident, h.flags, h.ttl, h.tos) == (
        17, len(raw), 4242, IPv4Flags.DF, 3, 4,
    )  # fmt: skip
    assert h.checksum == scapy_inet.IP(raw).chksum
    assert ipv4.encode(h) == raw[:20]

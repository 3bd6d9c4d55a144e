import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sclp.wire import ethernet, ipv4, ipv6, tcp, udp
from sclp.wire.errors import DropReason, MalformedPacket
from sclp.wire.ethernet import EthernetHeader, mac_to_str
from sclp.wire.frame import (
    ENTROPY_PORT_MAX,
    ENTROPY_PORT_MIN,
    FrameInfo,
    entropy_port,
    flow_hash,
    l4_checksum,
    parse_frame,
)
from sclp.wire.ipv4 import IPv4Flags, IPv4Header
from sclp.wire.ipv6 import IPv6Header
from sclp.wire.tcp import TcpFlags, TcpHeader
from sclp.wire.udp import UdpHeader

scapy_l2 = pytest.importorskip("scapy.layers.l2")
scapy_inet = pytest.importorskip("scapy.layers.inet")
scapy_inet6 = pytest.importorskip("scapy.layers.inet6")

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
V4_A, V4_B = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
V6_A = ipaddress.IPv6Address("2001:db8::1").packed
V6_B = ipaddress.IPv6Address("2001:db8::2").packed


def v4_tcp_frame(tags: tuple[int, ...] = (), payload: bytes = b"") -> bytes:
    t = tcp.encode(TcpHeader(1234, 80, 1, 0, TcpFlags.SYN, 100, options=b"\x02\x04\x05\xb4"))
    ip = ipv4.encode(IPv4Header(V4_A, V4_B, 6, 20 + len(t) + len(payload)))
    return ethernet.encode(EthernetHeader(MAC_B, MAC_A, 0x0800, tags)) + ip + t + payload


def v6_udp_frame(ext: bytes = b"", first_nh: int = 17, payload: bytes = b"") -> bytes:
    u = udp.encode(UdpHeader(5000, 4789, 8 + len(payload)))
    ip = ipv6.encode(IPv6Header(V6_A, V6_B, first_nh, len(ext) + 8 + len(payload)))
    return ethernet.encode(EthernetHeader(MAC_B, MAC_A, 0x86DD)) + ip + ext + u + payload


def test_ipv4_tcp() -> None:
    info = parse_frame(memoryview(v4_tcp_frame(payload=b"x" * 10)))
    assert info == FrameInfo(
        dst_mac=MAC_B, src_mac=MAC_A, ethertype=0x0800, l3_offset=14, ip_version=4,
        l4_offset=34, ip_protocol=6, src_ip=V4_A, dst_ip=V4_B, sport=1234, dport=80,
        tcp_header_len=24,
    )  # fmt: skip


def test_ipv4_tcp_behind_qinq() -> None:
    info = parse_frame(v4_tcp_frame(tags=(10, 20)))
    assert (info.ethertype, info.l3_offset, info.l4_offset) == (0x0800, 22, 42)
    assert (info.sport, info.dport, info.tcp_header_len) == (1234, 80, 24)


def test_ipv4_options_move_l4() -> None:
    u = udp.encode(UdpHeader(1, 2, 8))
    ip = ipv4.encode(IPv4Header(V4_A, V4_B, 17, 24 + 8, options=b"\x01\x01\x01\x00"))
    info = parse_frame(ethernet.encode(EthernetHeader(MAC_B, MAC_A, 0x0800)) + ip + u)
    assert (info.l4_offset, info.ip_protocol, info.sport, info.dport) == (38, 17, 1, 2)
    assert info.tcp_header_len == 0


def test_ipv6_udp() -> None:
    info = parse_frame(v6_udp_frame())
    assert (info.ip_version, info.l3_offset, info.l4_offset, info.ip_protocol) == (6, 14, 54, 17)
    assert (info.src_ip, info.dst_ip, info.sport, info.dport) == (V6_A, V6_B, 5000, 4789)
    assert info.tcp_header_len == 0


def test_ipv6_extension_headers_are_walked() -> None:
    hbh = bytes([60, 0]) + bytes([1, 4, 0, 0, 0, 0])  # HBH -> DestOpts, 8 bytes (PadN)
    dst = bytes([17, 1]) + bytes([1, 12]) + bytes(12)  # DestOpts -> UDP, 16 bytes
    info = parse_frame(v6_udp_frame(ext=hbh + dst, first_nh=0))
    assert (info.l4_offset, info.ip_protocol, info.sport, info.dport) == (54 + 24, 17, 5000, 4789)


def test_ipv6_fragment_has_no_l4() -> None:
    frag = bytes([17, 0, 0, 1, 0, 0, 0, 42])  # offset 0, M=1: first fragment
    info = parse_frame(v6_udp_frame(ext=frag, first_nh=44))
    assert (info.l4_offset, info.ip_protocol, info.sport, info.dport) == (-1, 17, 0, 0)


def test_ipv6_truncated_extension_header() -> None:
    hbh = bytes([17, 1]) + bytes(14)  # claims 16 bytes
    frame = ethernet.encode(EthernetHeader(MAC_B, MAC_A, 0x86DD))
    frame += ipv6.encode(IPv6Header(V6_A, V6_B, 0, 16)) + hbh
    assert parse_frame(frame + bytes(8)).l4_offset == 14 + 40 + 16
    for n in range(14 + 40, len(frame)):
        with pytest.raises(MalformedPacket) as exc:
            parse_frame(frame[:n])
        assert exc.value.reason is DropReason.TOO_SHORT


def test_too_many_ipv6_extension_headers() -> None:
    ext = bytes([0, 0, 1, 4, 0, 0, 0, 0]) * 20
    frame = ethernet.encode(EthernetHeader(MAC_B, MAC_A, 0x86DD))
    frame += ipv6.encode(IPv6Header(V6_A, V6_B, 0, len(ext))) + ext
    with pytest.raises(MalformedPacket) as exc:
        parse_frame(frame)
    assert exc.value.reason is DropReason.MALFORMED


@pytest.mark.parametrize(
    ("flags", "frag_offset"), [(IPv4Flags.MF, 0), (IPv4Flags.NONE, 100), (IPv4Flags.MF, 5)]
)
def test_ipv4_fragments_have_no_l4(flags: IPv4Flags, frag_offset: int) -> None:
    ip = ipv4.encode(IPv4Header(V4_A, V4_B, 6, 40, flags=flags, frag_offset=frag_offset))
    info = parse_frame(ethernet.encode(EthernetHeader(MAC_B, MAC_A, 0x0800)) + ip + bytes(20))
    assert (info.l4_offset, info.ip_protocol, info.sport, info.dport) == (-1, 6, 0, 0)
    assert info.tcp_header_len == 0


def test_other_ip_protocol_has_l4_offset_but_no_ports() -> None:
    ip = ipv4.encode(IPv4Header(V4_A, V4_B, 1, 28))
    info = parse_frame(ethernet.encode(EthernetHeader(MAC_B, MAC_A, 0x0800)) + ip + bytes(8))
    assert (info.l4_offset, info.ip_protocol, info.sport, info.dport) == (34, 1, 0, 0)


def test_non_ip_frame() -> None:
    info = parse_frame(
        ethernet.encode(EthernetHeader(b"\xff" * 6, MAC_A, 0x0806, (7,))) + bytes(28)
    )
    assert info == FrameInfo(b"\xff" * 6, MAC_A, 0x0806, 18, 0, -1, 0, b"", b"", 0, 0, 0)


def test_version_mismatch() -> None:
    frame = bytearray(v4_tcp_frame())
    frame[14] = 0x65
    with pytest.raises(MalformedPacket) as exc:
        parse_frame(frame)
    assert exc.value.reason is DropReason.BAD_VERSION
    frame6 = bytearray(v6_udp_frame())
    frame6[14] = 0x45
    with pytest.raises(MalformedPacket) as exc:
        parse_frame(frame6)
    assert exc.value.reason is DropReason.BAD_VERSION


def test_bad_ihl_and_data_offset() -> None:
    frame = bytearray(v4_tcp_frame())
    frame[14] = 0x44
    with pytest.raises(MalformedPacket) as exc:
        parse_frame(frame)
    assert exc.value.reason is DropReason.MALFORMED
    frame = bytearray(v4_tcp_frame())
    frame[34 + 12] = 0x40
    with pytest.raises(MalformedPacket) as exc:
        parse_frame(frame)
    assert exc.value.reason is DropReason.MALFORMED


@pytest.mark.parametrize(
    "frame",
    [v4_tcp_frame(), v4_tcp_frame(tags=(1, 2)), v6_udp_frame()],
    ids=["v4-tcp", "qinq-v4-tcp", "v6-udp"],
)
def test_truncation_at_every_length(frame: bytes) -> None:
    for n in range(len(frame)):
        with pytest.raises(MalformedPacket) as exc:
            parse_frame(frame[:n])
        assert exc.value.reason is DropReason.TOO_SHORT
    parse_frame(frame)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_parse_or_malformed(data: bytes) -> None:
    try:
        info = parse_frame(data)
    except MalformedPacket:
        return
    assert info.l4_offset <= len(data)


_prefixes = st.sampled_from(
    [
        MAC_B + MAC_A + b"\x08\x00\x45",
        MAC_B + MAC_A + b"\x81\x00\x00\x01\x08\x00\x46",
        MAC_B + MAC_A + b"\x86\xdd\x60",
    ]
)


@settings(max_examples=300, deadline=None)
@given(_prefixes, st.binary(max_size=100))
def test_random_ip_frames_parse_or_malformed(prefix: bytes, tail: bytes) -> None:
    data = prefix + tail
    try:
        info = parse_frame(data)
    except MalformedPacket:
        return
    assert info.ip_version in (4, 6)
    assert info.l4_offset + info.tcp_header_len <= len(data)


# --- Scapy cross-check ----------------------------------------------------------------


def _scapy_frames() -> list[bytes]:
    ether = scapy_l2.Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01")
    return [
        bytes(
            ether
            / scapy_inet.IP(src="10.9.8.7", dst="10.1.2.3", options=[scapy_inet.IPOption_NOP()] * 4)
            / scapy_inet.TCP(sport=40000, dport=5201, options=[("MSS", 1400), ("NOP", None)] * 2)
            / b"payload"
        ),
        bytes(
            ether
            / scapy_l2.Dot1Q(vlan=42)
            / scapy_inet6.IPv6(src="fd00::1", dst="fd00::2")
            / scapy_inet6.IPv6ExtHdrHopByHop()
            / scapy_inet6.IPv6ExtHdrRouting()
            / scapy_inet.UDP(sport=6081, dport=4789)
        ),
        bytes(ether / scapy_inet6.IPv6(src="fd00::1", dst="fd00::2") / scapy_inet.TCP(dport=22)),
    ]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_matches_scapy(index: int) -> None:
    raw = _scapy_frames()[index]
    pkt = scapy_l2.Ether(raw)
    info = parse_frame(raw)
    assert mac_to_str(info.dst_mac) == pkt.dst and mac_to_str(info.src_mac) == pkt.src
    ip_layer = pkt[scapy_inet.IP] if scapy_inet.IP in pkt else pkt[scapy_inet6.IPv6]
    l4 = pkt[scapy_inet.TCP] if scapy_inet.TCP in pkt else pkt[scapy_inet.UDP]
    assert info.l3_offset == len(raw) - len(bytes(ip_layer))
    assert info.l4_offset == len(raw) - len(bytes(l4))
    assert ipaddress.ip_address(info.src_ip) == ipaddress.ip_address(ip_layer.src)
    assert ipaddress.ip_address(info.dst_ip) == ipaddress.ip_address(ip_layer.dst)
    assert (info.sport, info.dport) == (l4.sport, l4.dport)
    if scapy_inet.TCP in pkt:
        assert info.ip_protocol == 6 and info.tcp_header_len == l4.dataofs * 4
    else:
        assert info.ip_protocol == 17 and info.tcp_header_len == 0


# --- flow hash and entropy port -------------------------------------------------------


def test_flow_hash_is_deterministic_and_flow_sensitive() -> None:
    a = parse_frame(v4_tcp_frame())
    assert flow_hash(a) == flow_hash(parse_frame(v4_tcp_frame(payload=b"more data")))
    assert flow_hash(a) == flow_hash(parse_frame(v4_tcp_frame(tags=(5,))))
    other_port = bytearray(v4_tcp_frame())
    other_port[34:36] = (1235).to_bytes(2, "big")
    assert flow_hash(parse_frame(other_port)) != flow_hash(a)
    assert 0 <= flow_hash(a) <= 0xFFFFFFFF


def test_flow_hash_fragments_agree() -> None:
    def frag(flags: IPv4Flags, offset: int) -> FrameInfo:
        ip = ipv4.encode(IPv4Header(V4_A, V4_B, 17, 36, flags=flags, frag_offset=offset))
        return parse_frame(ethernet.encode(EthernetHeader(MAC_B, MAC_A, 0x0800)) + ip + bytes(16))

    assert flow_hash(frag(IPv4Flags.MF, 0)) == flow_hash(frag(IPv4Flags.NONE, 2))


def test_flow_hash_non_ip_uses_macs() -> None:
    def arp(src: bytes) -> FrameInfo:
        return parse_frame(ethernet.encode(EthernetHeader(MAC_B, src, 0x0806)) + bytes(28))

    assert flow_hash(arp(MAC_A)) == flow_hash(arp(MAC_A))
    assert flow_hash(arp(MAC_A)) != flow_hash(arp(bytes.fromhex("020000000003")))


def test_entropy_port_known_values() -> None:
    assert (ENTROPY_PORT_MIN, ENTROPY_PORT_MAX) == (49152, 65535)
    assert entropy_port(0) == 49152
    assert entropy_port(0x3FFF) == 65535
    assert entropy_port(0x00010000) == 49153  # high half is folded in


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 0xFFFFFFFF))
def test_entropy_port_range(h: int) -> None:
    assert ENTROPY_PORT_MIN <= entropy_port(h) <= ENTROPY_PORT_MAX


def test_entropy_ports_spread() -> None:
    frames = [bytearray(v4_tcp_frame()) for _ in range(256)]
    ports = set()
    for i, f in enumerate(frames):
        f[34:36] = (10000 + i).to_bytes(2, "big")
        ports.add(entropy_port(flow_hash(parse_frame(f))))
    assert len(ports) > 240  # 256 flows into 16384 ports: few collisions


# -- l4_checksum: where the TCP/UDP checksum is and what a partial one would hold ------


def _with_field(frame: bytes, at: int, value: int) -> bytes:
    return frame[:at] + value.to_bytes(2, "big") + frame[at + 2 :]


@settings(max_examples=300)
@given(
    st.sampled_from([6, 17]),
    st.sampled_from([(), (0x8100,), (0x88A8, 0x8100)]),
    st.binary(min_size=0, max_size=40).map(lambda b: b + bytes(-len(b) % 4)),
    st.binary(max_size=60),
    st.booleans(),
)
def test_l4_checksum_agrees_with_parse_frame_and_the_pseudo_header(
    proto: int, tags: tuple[int, ...], ip_options: bytes, payload: bytes, v6: bool
) -> None:
    """Fast path (untagged IPv4 without options) and the general one alike: the L4
    offset is parse_frame's, the field is the one at the checksum offset, the sum is
    ipv4/ipv6.pseudo_header_sum's."""
    l4 = (
        tcp.encode(TcpHeader(1234, 80, 1, 0, TcpFlags.ACK, 100, checksum=0xBEEF))
        if proto == 6
        else udp.encode(UdpHeader(5000, 4789, 8 + len(payload), 0xBEEF))
    ) + payload
    if v6:
        ip = ipv6.encode(IPv6Header(V6_A, V6_B, proto, len(l4)))
        pseudo = ipv6.pseudo_header_sum(V6_A, V6_B, proto, len(l4))
        ethertype = 0x86DD
    else:
        ip = ipv4.encode(
            IPv4Header(V4_A, V4_B, proto, 20 + len(ip_options) + len(l4), options=ip_options)
        )
        pseudo = ipv4.pseudo_header_sum(V4_A, V4_B, proto, len(l4))
        ethertype = 0x0800
    frame = ethernet.encode(EthernetHeader(MAC_B, MAC_A, ethertype, tags)) + ip + l4
    offset = parse_frame(frame).l4_offset
    csum_offset = 16 if proto == 6 else 6
    assert l4_checksum(frame, len(frame)) == (offset, csum_offset, 0xBEEF, pseudo or 0xFFFF)
    partial = _with_field(frame, offset + csum_offset, pseudo)
    found = l4_checksum(partial, len(partial))
    assert found is not None and found[2] == found[3]
    # Cut short of its IP length: not answered (the field may be missing).
    assert l4_checksum(frame[:-1], len(frame) - 1) is None


def test_l4_checksum_is_none_for_what_has_no_checksum_to_finish() -> None:
    arp = ethernet.encode(EthernetHeader(MAC_B, MAC_A, 0x0806)) + bytes(46)
    icmp = v4_tcp_frame()
    icmp = icmp[:23] + b"\x01" + icmp[24:]  # IPv4 protocol 1
    fragment = (
        ethernet.encode(EthernetHeader(MAC_B, MAC_A, 0x0800))
        + ipv4.encode(IPv4Header(V4_A, V4_B, 6, 20 + 40, flags=IPv4Flags.MF))
        + bytes(40)
    )
    hop_by_hop = v6_udp_frame(ext=bytes([17, 0]) + bytes(6), first_nh=0)
    for frame in (arp, icmp, fragment, hop_by_hop, b"", bytes(13)):
        assert l4_checksum(frame, len(frame)) is None


@settings(max_examples=500)
@given(st.binary(max_size=120))
def test_l4_checksum_never_raises(data: bytes) -> None:
    found = l4_checksum(data, len(data))
    assert found is None or (0 < found[3] <= 0xFFFF and found[0] + found[1] + 2 <= len(data))

"""Path MTU inside the tunnel: a frame larger than its network carries never leaves as
outer IP fragments; the sender gets ICMP "fragmentation needed" / ICMPv6 "packet too
big" naming the VM MTU, rate-limited; an IPv4 packet without DF is fragmented inside.
Two data paths back to back in memory (tests/endpoint/test_datapath.py), scapy as the
oracle for what comes back."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror
from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Dot1Q, Ether

from sclp.endpoint.config import parse_config
from sclp.endpoint.datapath import (
    HEADROOM,
    DataPath,
    Deliver,
    TokenBucket,
    TooBig,
    too_big_action,
)
from sclp.endpoint.provision import outer_fragments
from sclp.endpoint.tunnels import Send
from sclp.wire.ipfrag import fragment_ipv4
from sclp.wire.virtio_net import VNET_HDR, VNET_HDR_LEN, VNET_HDR_NONE
from tests.endpoint.test_datapath import A, B, config, packets_of, pair, transfer, vm_read

MA, MB = "02:00:00:00:0a:01", "02:00:00:00:0b:01"
IA, IB = "192.168.9.1", "192.168.9.2"


def ping(size: int, *, df: bool = True) -> bytes:
    """An ICMP echo of ``size`` bytes of data (ping -s): IP length size + 28."""
    ip = IP(src=IA, dst=IB, flags="DF" if df else 0, id=77)
    return bytes(Ether(src=MA, dst=MB) / ip / ICMP(id=1, seq=1) / (b"p" * size))


def gso_frame(
    mss: int, segments: int, *, df: bool = True, options: int = 0
) -> tuple[bytearray, int]:
    """A TSO frame of ``segments`` MSS-sized segments, partial checksum, as a VM's TAP
    hands it over; ``options`` bytes of TCP options (NOPs) lengthen every segment's
    TCP header."""
    ip = IP(src=IA, dst=IB, flags="DF" if df else 0)
    tcp = TCP(sport=1000, dport=5201, options=[("NOP", None)] * options)
    frame = bytes(Ether(src=MA, dst=MB) / ip / tcp / (b"t" * mss * segments))
    buf, size = vm_read(frame)
    VNET_HDR.pack_into(buf, HEADROOM - VNET_HDR_LEN, 1, 1, 54 + options, mss, 34, 16)
    return buf, size


def send_from_a(dp: DataPath, frame: bytes | tuple[bytearray, int], now: float = 0.0) -> list:
    buf, size = vm_read(frame) if isinstance(frame, bytes) else frame
    return dp.from_vm(dp.networks[42].ports[0], buf, size, now)


def outer_sizes(sends: list[Send]) -> list[int]:
    """The outer IPv4 packets' lengths (a UDP header for VXLAN and Geneve)."""
    return [
        len(p) + 20 + (8 if s.channel.value in ("vxlan", "geneve") else 0)
        for s in sends
        for p in packets_of(s)
    ]


@pytest.mark.parametrize(
    ("version", "df", "gso", "ip_len", "action"),
    [
        (4, True, False, 1450, TooBig.CARRY),
        (4, True, False, 1451, TooBig.ICMP),
        (6, False, False, 1451, TooBig.ICMP),
        (6, False, True, 1451, TooBig.ICMP),
        (4, False, False, 1451, TooBig.FRAGMENT),
        (4, False, True, 1451, TooBig.RESEGMENT),
        (4, True, True, 1451, TooBig.ICMP),
        (0, False, False, 1451, TooBig.DROP),
        (0, False, False, 1450, TooBig.CARRY),
    ],
)
def test_too_big_action(version: int, df: bool, gso: bool, ip_len: int, action: TooBig) -> None:
    assert too_big_action(version, df, gso, ip_len, 1450) is action


def test_the_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=10.0, burst=5)
    assert [bucket.take(100.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert bucket.take(100.05) is False  # half a token
    assert bucket.take(100.2) is True
    assert sum(bucket.take(200.0) for _ in range(10)) == 5  # never more than the burst
    assert bucket.take(199.0) is False  # time going back adds nothing


def test_a_df_ping_over_the_vm_mtu_gets_fragmentation_needed_naming_it() -> None:
    a, _b = pair("vxlan", "ip")
    net = a.networks[42]
    assert net.vm_mtu == 1450
    out = send_from_a(a, ping(1472))
    assert [type(d) for d in out] == [Deliver]
    (d,) = out
    assert d.port is net.ports[0] and d.vnet == VNET_HDR_NONE
    reply = Ether(bytes(d.frame))
    assert (reply.src, reply.dst, reply[IP].src, reply[IP].dst) == (MB, MA, IB, IA)
    assert (reply[ICMP].type, reply[ICMP].code, reply[ICMP].nexthopmtu) == (3, 4, 1450)
    assert reply[IPerror].len == 1500
    assert net.counters["drop_too_big"] == 1
    assert a.stats()["counters"]["icmp_too_big_sent"] == 1
    # Flooded (the MAC is unknown), it reached no peer: none counts a frame from it.
    assert net.tx_counters[B].tx_frames == 0
    # The largest that fits leaves as one outer packet of exactly the underlay MTU.
    sends = send_from_a(a, ping(1422))
    assert outer_sizes(sends) == [1500]
    assert net.tx_counters[B].tx_frames == 1


def test_an_ipv6_packet_over_the_vm_mtu_gets_packet_too_big() -> None:
    a, _b = pair("geneve", "ip")
    frame = (
        Ether(src=MA, dst=MB)
        / IPv6(src="fd00::1", dst="fd00::2")
        / (ICMPv6EchoRequest(data=b"6" * 1452))
    )
    (d,) = send_from_a(a, bytes(frame))
    reply = Ether(bytes(d.frame))
    assert reply[IPv6].src == "fd00::2"
    assert (reply[ICMPv6PacketTooBig].type, reply[ICMPv6PacketTooBig].mtu) == (2, 1450)


def test_a_vlan_tagged_frame_is_told_the_mtu_that_fits_behind_its_tag() -> None:
    a, _b = pair("vxlan", "ip")
    ip = IP(src=IA, dst=IB, flags="DF")
    frame = Ether(src=MA, dst=MB) / Dot1Q(vlan=7) / ip / ICMP() / (b"v" * 1420)  # IP 1448
    (d,) = send_from_a(a, bytes(frame))
    reply = Ether(bytes(d.frame))
    assert reply[Dot1Q].vlan == 7 and reply[ICMP].nexthopmtu == 1446


@pytest.mark.parametrize("protocol", ["vxlan", "geneve", "nvgre"])
def test_without_df_the_inner_packet_is_fragmented_never_the_outer(protocol: str) -> None:
    a, b = pair(protocol, "ip")
    frame = ping(3000, df=False)
    sends = send_from_a(a, frame)
    assert all(isinstance(s, Send) for s in sends)
    assert max(outer_sizes(sends)) <= 1500
    assert a.networks[42].counters["tx_inner_fragments"] == 3
    delivered = transfer(A, b, sends)
    assert len(delivered) == 3
    frags = [IP(bytes(d.frame)[14:]) for d in delivered]
    assert all(len(bytes(f)) <= a.networks[42].vm_mtu for f in frags)
    data = b"".join(bytes(f.payload) for f in sorted(frags, key=lambda f: f.frag))
    assert data == bytes(IP(frame[14:]).payload)  # the ICMP message, whole
    assert [f.flags.MF for f in frags] == [1, 1, 0]


def test_a_gso_frame_whose_segments_fit_is_never_touched() -> None:
    a, b = pair("vxlan", "ip")
    sends = send_from_a(a, gso_frame(1410, 10))  # segments of exactly the VM MTU
    counters = a.networks[42].counters
    assert counters["drop_too_big"] == counters["tx_resegmented"] == 0
    assert max(outer_sizes(sends)) == 1500
    assert len(transfer(A, b, sends)) == 10


@pytest.mark.parametrize("options", [0, 12, 40])  # no options, timestamps, the most
def test_the_fits_check_reads_the_tcp_header_length(options: int) -> None:
    """Whether a TSO frame's segments fit is decided from its TCP header's length:
    segments of exactly the VM MTU are carried untouched whatever the options, one byte
    more gets the ICMP reply."""
    a, b = pair("vxlan-sclp", "udp")
    mss = a.networks[42].vm_mtu - 40 - options
    sends = send_from_a(a, gso_frame(mss, 10, options=options))
    counters = a.networks[42].counters
    assert all(isinstance(s, Send) for s in sends)
    assert counters["drop_too_big"] == counters["tx_resegmented"] == 0
    frames = transfer(A, b, sends)
    assert sum(len(TCP(bytes(f.frame)[34:]).payload) for f in frames) == mss * 10
    (d,) = send_from_a(a, gso_frame(mss + 1, 10, options=options))
    assert Ether(bytes(d.frame))[ICMP].nexthopmtu == a.networks[42].vm_mtu
    assert counters["drop_too_big"] == 1


def test_a_gso_frame_with_segments_too_big_gets_icmp_or_smaller_segments() -> None:
    a, b = pair("vxlan", "ip")
    (d,) = send_from_a(a, gso_frame(1448, 10))  # a 1500-MTU container's TCP
    assert Ether(bytes(d.frame))[ICMP].nexthopmtu == 1450
    sends = send_from_a(a, gso_frame(1448, 10, df=False))
    assert a.networks[42].counters["tx_resegmented"] == 1
    assert max(outer_sizes(sends)) <= 1500
    frames = transfer(A, b, sends)
    assert sum(len(TCP(bytes(f.frame)[34:]).payload) for f in frames) == 14480


def test_icmp_is_rate_limited_and_counted() -> None:
    a, _b = pair("vxlan", "ip")
    sent = [len(send_from_a(a, ping(1472), now=5.0)) for _ in range(60)]
    assert sum(sent) == 50
    counters = a.stats()["counters"]
    assert (counters["icmp_too_big_sent"], counters["icmp_too_big_limited"]) == (50, 10)
    assert counters["drop_too_big"] == 60
    assert len(send_from_a(a, ping(1472), now=5.5)) == 1  # refilled with time


@pytest.mark.parametrize("carrier", ["ip", "udp"])
def test_sclp_carries_any_frame_up_to_its_vm_mtu_and_answers_above_it(carrier: str) -> None:
    a, b = pair("vxlan-sclp", carrier)
    assert a.networks[42].vm_mtu == 1500
    frame = ping(1472)
    sends = send_from_a(a, frame)
    assert [bytes(d.frame) for d in transfer(A, b, sends)] == [frame]
    (d,) = send_from_a(a, ping(8972))  # a 9000-MTU container
    assert Ether(bytes(d.frame))[ICMP].nexthopmtu == 1500


def test_no_icmp_for_a_broadcast_and_a_non_ip_frame_is_dropped() -> None:
    a, _b = pair("vxlan", "ip")
    bcast = Ether(src=MA, dst="ff:ff:ff:ff:ff:ff") / IP(src=IA, dst="192.168.9.255", flags="DF")
    assert send_from_a(a, bytes(bcast / UDP() / (b"b" * 1472))) == []
    assert send_from_a(a, bytes(Ether(src=MA, dst=MB, type=0x88B5) / (b"n" * 1490))) == []
    assert a.networks[42].counters["drop_too_big"] == 2
    assert a.stats()["counters"]["icmp_too_big_sent"] == 0


def test_a_big_frame_between_two_local_ports_is_switched_as_it_came() -> None:
    a, _b = pair("vxlan", "ip")
    net = a.networks[42]
    other = a.add_port("ct1", 42)
    a.from_vm(other, *vm_read(bytes(Ether(src=MB, dst=MA) / IP(src=IB, dst=IA))), now=0.0)
    frame = ping(1472)
    out = send_from_a(a, frame)
    assert [(d.port, bytes(d.frame)) for d in out] == [(other, frame)]
    assert net.counters["drop_too_big"] == 0


@pytest.mark.parametrize(
    ("protocol", "mtu", "fragments"),
    [
        ("vxlan", "", False),
        ("vxlan", "mtu = 1450\n", False),
        ("vxlan", "mtu = 1500\n", True),
        ("nvgre", "mtu = 1458\n", False),
        ("nvgre", "mtu = 1500\n", True),
    ],
)
def test_outer_packets_get_df_unless_a_network_opted_into_fragments(
    protocol: str, mtu: str, fragments: bool
) -> None:
    text = config(A, [B], protocol, "ip").replace('tap = "t42"\n', f'tap = "t42"\n{mtu}')
    dp = DataPath(parse_config(text), 1500)
    channel = dp.networks[42].tunnel.channel
    assert outer_fragments(dp, channel) is fragments


def test_ipv4_fragments_follow_rfc_791() -> None:
    frame = ping(3000, df=False)
    parts = fragment_ipv4(frame, 14, 1450)
    assert parts is not None and [len(p) - 14 for p in parts] == [
        1444,
        1444,
        180,
    ]  # 3,008 bytes of ICMP
    for part in parts:
        rebuilt = Ether(part)
        del rebuilt[IP].chksum  # scapy recomputes it: ours must be the same
        assert bytes(rebuilt) == part
        assert part[:14] == frame[:14]
    offsets = [IP(p[14:]).frag * 8 for p in parts]
    assert offsets == [0, 1424, 2848]
    with_options = bytes(Ether() / IP(options=b"\x01\x01\x01\x00") / (b"o" * 2000))
    assert fragment_ipv4(with_options, 14, 1450) is None
    assert fragment_ipv4(frame, 14, 27) is None  # no room for 8 bytes of data

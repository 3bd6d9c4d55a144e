"""ICMP fragmentation-needed and ICMPv6 packet-too-big frames, checked with scapy."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    IPv6,
    IPv6ExtHdrFragment,
)
from scapy.layers.l2 import Dot1Q, Ether

from sclp.wire import icmp

A_MAC, B_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def _v4(payload_len: int = 1472, **ip: object) -> Ether:
    return (
        Ether(src=A_MAC, dst=B_MAC)
        / IP(src="10.0.0.1", dst="10.0.0.2", flags="DF", **ip)
        / (ICMP(type=8, id=7, seq=1) / (b"x" * payload_len))
    )


def test_frag_needed_matches_scapy_and_rfc_1191() -> None:
    orig = _v4()
    raw = bytes(orig)
    reply = icmp.frag_needed(raw, 14, 1450)
    assert reply is not None
    pkt = Ether(reply)
    assert (pkt.src, pkt.dst) == (B_MAC, A_MAC)  # from the original destination
    ip = pkt[IP]
    assert (ip.src, ip.dst, ip.proto, ip.ttl) == ("10.0.0.2", "10.0.0.1", 1, 64)
    assert ip.len == len(reply) - 14 <= 576  # RFC 1812: at most 576 bytes
    icmp_layer = pkt[ICMP]
    assert (icmp_layer.type, icmp_layer.code, icmp_layer.nexthopmtu) == (3, 4, 1450)
    quoted = pkt[IPerror]
    assert (quoted.src, quoted.dst, quoted.len) == ("10.0.0.1", "10.0.0.2", 1500)
    # The checksums scapy computes for the same fields are the ones we wrote.
    rebuilt = Ether(reply)
    del rebuilt[IP].chksum
    del rebuilt[ICMP].chksum
    assert bytes(rebuilt) == reply


def test_frag_needed_quotes_the_whole_short_packet_and_keeps_vlan_tags() -> None:
    orig = (
        Ether(src=A_MAC, dst=B_MAC)
        / Dot1Q(vlan=5)
        / IP(src="10.0.0.1", dst="10.0.0.2")
        / (TCP(sport=1, dport=2))
    )
    raw = bytes(orig)
    reply = icmp.frag_needed(raw, 18, 1400)
    assert reply is not None
    pkt = Ether(reply)
    assert pkt[Dot1Q].vlan == 5
    assert pkt[ICMP].nexthopmtu == 1400
    assert bytes(pkt[ICMP].payload) == raw[18:]


@pytest.mark.parametrize(
    "frame",
    [
        Ether(src=A_MAC, dst=B_MAC) / IP(src="10.0.0.1", dst="10.0.0.2", frag=185) / (b"x" * 100),
        Ether(src=A_MAC, dst=B_MAC) / IP(src="0.0.0.0", dst="10.0.0.2") / UDP() / (b"x" * 100),
        Ether(src=A_MAC, dst="ff:ff:ff:ff:ff:ff") / IP(src="10.0.0.1", dst="10.0.0.255") / UDP(),
        Ether(src=A_MAC, dst=B_MAC) / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=3, code=1),
    ],
    ids=["later-fragment", "unspecified-source", "broadcast", "icmp-error"],
)
def test_no_error_about_what_rfc_1122_excludes(frame: Ether) -> None:
    assert icmp.frag_needed(bytes(frame), 14, 1450) is None


def test_packet_too_big_matches_scapy_and_rfc_4443() -> None:
    orig = (
        Ether(src=A_MAC, dst=B_MAC)
        / IPv6(src="fd00::1", dst="fd00::2")
        / (ICMPv6EchoRequest(data=b"y" * 1452))
    )
    raw = bytes(orig)
    reply = icmp.packet_too_big(raw, 14, 1450)
    assert reply is not None
    pkt = Ether(reply)
    assert (pkt.src, pkt.dst) == (B_MAC, A_MAC)
    ip6 = pkt[IPv6]
    assert (ip6.src, ip6.dst, ip6.nh, ip6.hlim) == ("fd00::2", "fd00::1", 58, 64)
    assert len(reply) - 14 == 1280  # as much as fits in the minimum MTU
    ptb = pkt[ICMPv6PacketTooBig]
    assert (ptb.type, ptb.code, ptb.mtu) == (2, 0, 1450)
    rebuilt = Ether(reply)
    del rebuilt[ICMPv6PacketTooBig].cksum
    assert bytes(rebuilt) == reply  # scapy's checksum (with the pseudo-header) is ours
    assert bytes(ptb.payload) == raw[14 : 14 + 1280 - 48]


@pytest.mark.parametrize(
    "payload",
    [
        ICMPv6PacketTooBig(mtu=1280) / (b"z" * 1300),
        IPv6ExtHdrFragment(offset=100, nh=17) / (b"z" * 1300),
    ],
    ids=["icmpv6-error", "later-fragment"],
)
def test_no_packet_too_big_about_errors_or_later_fragments(payload: object) -> None:
    frame = Ether(src=A_MAC, dst=B_MAC) / IPv6(src="fd00::1", dst="fd00::2") / payload
    assert icmp.packet_too_big(bytes(frame), 14, 1450) is None
    echo = Ether(src=A_MAC, dst=B_MAC) / IPv6(src="fd00::1", dst="fd00::2") / ICMPv6EchoReply()
    assert icmp.packet_too_big(bytes(echo), 14, 1450) is not None  # informational: answered


def test_too_big_reply_picks_the_version() -> None:
    raw = bytes(_v4(100))
    assert icmp.too_big_reply(raw, 14, 4, 1450) == icmp.frag_needed(raw, 14, 1450)
    assert icmp.too_big_reply(raw, 14, 0, 1450) is None

"""Whole test packets for the interop tests, built only with the project's own codecs:
outer Ethernet/IPv4/UDP/TCP from ``sclp.wire``, every checksum computed, so that an
independent dissector sees packets it would also see on a wire."""

from __future__ import annotations

import struct

from sclp.wire import ethernet, ipv4, tcp, udp
from sclp.wire.ethernet import ETHERTYPE_IPV4, EthernetHeader
from sclp.wire.ipproto import IPPROTO_GRE, IPPROTO_TCP, IPPROTO_UDP
from sclp.wire.ipv4 import IPv4Header
from sclp.wire.tcp import TcpFlags, TcpHeader
from sclp.wire.udp import UdpHeader

OUTER_SRC_MAC = bytes.fromhex("020000000001")
OUTER_DST_MAC = bytes.fromhex("020000000002")
OUTER_SRC_IP = bytes([192, 0, 2, 1])
OUTER_DST_IP = bytes([192, 0, 2, 2])
INNER_SRC_MAC = bytes.fromhex("0a0000000011")
INNER_DST_MAC = bytes.fromhex("0a0000000022")


def ip_packet(src: bytes, dst: bytes, protocol: int, l4: bytes, ident: int = 1) -> bytes:
    hdr = IPv4Header(src=src, dst=dst, protocol=protocol, total_length=20 + len(l4), ident=ident)
    return ipv4.encode(hdr) + l4


def udp_datagram(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    length = udp.UDP_HLEN + len(payload)
    dgram = bytearray(udp.encode(UdpHeader(sport, dport, length)) + payload)
    pseudo = ipv4.pseudo_header_sum(src, dst, IPPROTO_UDP, length)
    struct.pack_into("!H", dgram, udp.UDP_CSUM_OFFSET, udp.udp_checksum(pseudo, dgram))
    return bytes(dgram)


def tcp_segment(
    src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, payload: bytes
) -> bytes:
    hdr = TcpHeader(sport, dport, seq, ack, TcpFlags.PSH | TcpFlags.ACK, window=65535)
    seg = bytearray(tcp.encode(hdr) + payload)
    pseudo = ipv4.pseudo_header_sum(src, dst, IPPROTO_TCP, len(seg))
    struct.pack_into("!H", seg, tcp.TCP_CSUM_OFFSET, tcp.tcp_checksum(pseudo, seg))
    return bytes(seg)


def ether_frame(dst: bytes, src: bytes, l3: bytes) -> bytes:
    return ethernet.encode(EthernetHeader(dst, src, ETHERTYPE_IPV4)) + l3


def inner_tcp_frame(src_ip: bytes, dst_ip: bytes, payload: bytes = b"hello " * 20) -> bytes:
    """The tenant's frame: Ethernet/IPv4/TCP 40000 -> 5201."""
    seg = tcp_segment(src_ip, dst_ip, 40000, 5201, 1000, 2000, payload)
    return ether_frame(INNER_DST_MAC, INNER_SRC_MAC, ip_packet(src_ip, dst_ip, IPPROTO_TCP, seg))


def outer_udp(dport: int, tunnel_payload: bytes, sport: int = 49200) -> bytes:
    """Ethernet/IPv4/UDP around a UDP tunnel's header + inner frame."""
    dgram = udp_datagram(OUTER_SRC_IP, OUTER_DST_IP, sport, dport, tunnel_payload)
    return ether_frame(
        OUTER_DST_MAC, OUTER_SRC_MAC, ip_packet(OUTER_SRC_IP, OUTER_DST_IP, IPPROTO_UDP, dgram)
    )


def outer_gre(gre_payload: bytes) -> bytes:
    """Ethernet/IPv4 (protocol 47) around a GRE header + inner frame."""
    l3 = ip_packet(OUTER_SRC_IP, OUTER_DST_IP, IPPROTO_GRE, gre_payload)
    return ether_frame(OUTER_DST_MAC, OUTER_SRC_MAC, l3)


def outer_tcp(dport: int, seq: int, ack: int, payload: bytes, ident: int = 1) -> bytes:
    """Ethernet/IPv4/TCP around an STT segment's payload."""
    seg = tcp_segment(OUTER_SRC_IP, OUTER_DST_IP, 49300, dport, seq, ack, payload)
    l3 = ip_packet(OUTER_SRC_IP, OUTER_DST_IP, IPPROTO_TCP, seg, ident)
    return ether_frame(OUTER_DST_MAC, OUTER_SRC_MAC, l3)

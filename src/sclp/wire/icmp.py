"""ICMP "fragmentation needed" and ICMPv6 "packet too big", as whole Ethernet frames.

What a router (or the kernel's bridge with a VXLAN device) answers a packet that is
larger than the next hop carries, so that the sender learns the path MTU:

- RFC 792 destination unreachable, code 4 "fragmentation needed and DF set", with the
  next-hop MTU of RFC 1191 §4 in the low 16 bits of the second word::

    0      7 8     15 16                 31
    +-------+--------+--------------------+
    | type 3| code 4 |      checksum      |
    +-------+--------+--------------------+
    |   unused (0)   |    next-hop MTU    |
    +----------------+--------------------+
    | IP header + leading bytes of the original datagram ...

  RFC 792 asks for the IP header and 64 bits of data; RFC 1812 §4.3.2.3 for as much
  as fits in 576 bytes, which is what Linux sends too.

- RFC 4443 §3.2 packet too big (type 2, code 0) with a 32-bit MTU, then as much of the
  invoking packet as fits in the IPv6 minimum MTU of 1,280 bytes; its checksum covers
  the RFC 8200 §8.1 pseudo-header.

Addresses (the choice the kernel's ``iptunnel_pmtud_build_icmp`` makes for a bridged
VXLAN device): the answer comes *from* the original destination — its MAC and IP
address as the source of the frame and the packet, the original source as the
destination — so that the sender's stack takes it as coming from the path towards
that destination; VLAN tags of the original frame are kept.

RFC 1122 §3.2.2 / RFC 4443 §2.4(e): no error is sent about an ICMP error, a
fragment other than the first, a packet from an unspecified, multicast or broadcast
source, or a frame to a multicast (or broadcast) MAC: :func:`too_big_reply` returns
``None`` for those.  Pure: bytes in, bytes out.
"""

from __future__ import annotations

import struct
from typing import Final

from sclp.wire.checksum import Buffer, internet_checksum
from sclp.wire.ipproto import IPPROTO_ICMP

__all__ = [
    "ICMP6_PACKET_TOO_BIG",
    "ICMP_DEST_UNREACH",
    "ICMP_FRAG_NEEDED",
    "IPPROTO_ICMPV6",
    "frag_needed",
    "packet_too_big",
    "too_big_reply",
]

ICMP_DEST_UNREACH: Final = 3
ICMP_FRAG_NEEDED: Final = 4  # code of ICMP_DEST_UNREACH
ICMP6_PACKET_TOO_BIG: Final = 2
IPPROTO_ICMPV6: Final = 58
IPV4_ERROR_MAX: Final = 576  # RFC 1812 §4.3.2.3: the whole ICMP datagram
IPV6_MIN_MTU: Final = 1280  # RFC 4443 §2.4(c)
TTL: Final = 64

_ETH: Final = struct.Struct("!6s6sH")
_IPV4: Final = struct.Struct("!BBHHHBBH4s4s")
_IPV6: Final = struct.Struct("!IHBB16s16s")
_ICMP4_HDR: Final = struct.Struct("!BBHHH")  # type, code, checksum, unused, next-hop MTU
_ICMP6_HDR: Final = struct.Struct("!BBHI")  # type, code, checksum, MTU
_TPIDS: Final = frozenset((0x8100, 0x88A8))
_ETHERTYPE_IPV4: Final = 0x0800
_ETHERTYPE_IPV6: Final = 0x86DD
# ICMP types that are errors (never answered): RFC 792 and RFC 1122 §3.2.2.
_ICMP4_ERRORS: Final = frozenset((3, 4, 5, 11, 12))
_IPV6_EXT: Final = frozenset((0, 43, 60))  # hop-by-hop, routing, destination options
_IPV6_FRAGMENT: Final = 44


def frag_needed(frame: Buffer, l3: int, mtu: int) -> bytes | None:
    """The frame answering the IPv4 packet at ``frame[l3:]`` with "fragmentation
    needed", next-hop MTU ``mtu``; None when none may be sent (see the module)."""
    if len(frame) < l3 + 20:
        return None
    vihl, _tos, _tlen, _ident, frag, _ttl, proto, _sum, src, dst = _IPV4.unpack_from(frame, l3)
    ihl = (vihl & 0x0F) << 2
    if vihl >> 4 != 4 or ihl < 20 or len(frame) < l3 + ihl:
        return None
    if frag & 0x1FFF or not _unicast_v4(src) or _is_multicast_mac(frame):
        return None
    if proto == IPPROTO_ICMP and (len(frame) < l3 + ihl + 1 or frame[l3 + ihl] in _ICMP4_ERRORS):
        return None
    quoted = bytes(frame[l3 : l3 + min(len(frame) - l3, IPV4_ERROR_MAX - 20 - 8)])
    icmp = bytearray(_ICMP4_HDR.pack(ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 0, 0, mtu & 0xFFFF))
    icmp += quoted
    struct.pack_into("!H", icmp, 2, internet_checksum(icmp))
    ip = bytearray(_IPV4.pack(0x45, 0xC0, 20 + len(icmp), 0, 0, TTL, IPPROTO_ICMP, 0, dst, src))
    struct.pack_into("!H", ip, 10, internet_checksum(ip))
    return _ethernet_reply(frame, l3, _ETHERTYPE_IPV4) + ip + icmp


def packet_too_big(frame: Buffer, l3: int, mtu: int) -> bytes | None:
    """The frame answering the IPv6 packet at ``frame[l3:]`` with "packet too big",
    MTU ``mtu``; None when none may be sent (see the module)."""
    if len(frame) < l3 + 40:
        return None
    vfl, _plen, nxt, _hops, src, dst = _IPV6.unpack_from(frame, l3)
    if vfl >> 28 != 6 or not _unicast_v6(src) or _is_multicast_mac(frame):
        return None
    if _icmp6_error_or_later_fragment(frame, l3 + 40, nxt):
        return None
    room = IPV6_MIN_MTU - 40 - _ICMP6_HDR.size
    icmp = bytearray(_ICMP6_HDR.pack(ICMP6_PACKET_TOO_BIG, 0, 0, mtu))
    icmp += bytes(frame[l3 : l3 + min(len(frame) - l3, room)])
    pseudo = dst + src + struct.pack("!I3xB", len(icmp), IPPROTO_ICMPV6)
    struct.pack_into("!H", icmp, 2, internet_checksum(pseudo + icmp))
    ip = _IPV6.pack(6 << 28, len(icmp), IPPROTO_ICMPV6, TTL, dst, src)
    return _ethernet_reply(frame, l3, _ETHERTYPE_IPV6) + ip + icmp


def too_big_reply(frame: Buffer, l3: int, version: int, mtu: int) -> bytes | None:
    """:func:`frag_needed` (``version`` 4) or :func:`packet_too_big` (6)."""
    if version == 4:
        return frag_needed(frame, l3, mtu)
    if version == 6:
        return packet_too_big(frame, l3, mtu)
    return None


def _ethernet_reply(frame: Buffer, l3: int, ethertype: int) -> bytes:
    """The original's MACs swapped, its VLAN tags kept, then ``ethertype``."""
    dst: bytes
    src: bytes
    dst, src, _ = _ETH.unpack_from(frame, 0)
    return src + dst + bytes(frame[12 : l3 - 2]) + struct.pack("!H", ethertype)


def _is_multicast_mac(frame: Buffer) -> bool:
    return bool(frame[0] & 1)


def _unicast_v4(addr: bytes) -> bool:
    return addr != b"\0\0\0\0" and addr[0] < 224 and addr != b"\xff\xff\xff\xff"


def _unicast_v6(addr: bytes) -> bool:
    return addr != bytes(16) and addr[0] != 0xFF


def _icmp6_error_or_later_fragment(frame: Buffer, off: int, nxt: int) -> bool:
    for _ in range(8):
        if nxt == IPPROTO_ICMPV6:
            # RFC 4443 §2.1: types 0-127 are errors.
            return len(frame) <= off or frame[off] < 128
        if nxt == _IPV6_FRAGMENT:
            if len(frame) < off + 4:
                return True
            return bool(struct.unpack_from("!H", frame, off + 2)[0] & 0xFFF8)
        if nxt not in _IPV6_EXT:
            return False
        if len(frame) < off + 2:
            return True
        nxt, hlen = frame[off], frame[off + 1]
        off += (hlen + 1) << 3
    return True

"""One-pass parse of an inner Ethernet frame for the data path.

Per frame the endpoint needs the MACs (FDB), where the IP and L4 headers start and the
TCP header length (segmentation, checksum offload) and a flow hash (outer UDP source
port, RFC 7348 §5 / RFC 8086 §3.2).  Building an :class:`~sclp.wire.ipv4.IPv4Header`
and a :class:`~sclp.wire.tcp.TcpHeader` per frame would cost several objects;
:func:`parse_frame` reads the same fields with a handful of ``struct.unpack_from``
calls into one :class:`FrameInfo`.

What is parsed:

- Ethernet II with up to :data:`~sclp.wire.ethernet.MAX_VLAN_TAGS` 802.1Q/802.1ad tags.
- IPv4 (RFC 791) with options; IPv6 (RFC 8200) walking Hop-by-Hop, Routing and
  Destination Options headers (RFC 8200 §4, the ``(len+1)*8`` format).  Other IPv6
  extension headers (AH, ESP, ...) end the walk: ``ip_protocol`` is that header's
  number and ``l4_offset`` points at it.
- TCP and UDP ports; the TCP header length.

Fragments (IPv4 MF or non-zero offset; an IPv6 Fragment header) report
``l4_offset = -1`` and no ports even for the first fragment, so every fragment of a
datagram gets the same :func:`flow_hash` and lands on the same path.

Only headers are checked (truncation, IHL/data offset < 5, IP version vs EtherType);
the IP total/payload length is not compared with the frame size, checksums are not
verified.  Raises :class:`~sclp.wire.errors.MalformedPacket` and nothing else.
"""

from __future__ import annotations

import struct
import zlib
from typing import Final, NamedTuple

from sclp.wire.checksum import Buffer
from sclp.wire.errors import DropReason, MalformedPacket

__all__ = [
    "ENTROPY_PORT_MAX",
    "ENTROPY_PORT_MIN",
    "FrameInfo",
    "entropy_port",
    "flow_hash",
    "l4_checksum",
    "parse_frame",
]

ENTROPY_PORT_MIN: Final = 49152  # RFC 7348 §5: use the dynamic/private port range
ENTROPY_PORT_MAX: Final = 65535

# Local copies of the constants keep the hot path free of attribute lookups.
_ETHERTYPE_IPV4: Final = 0x0800
_ETHERTYPE_IPV6: Final = 0x86DD
_TPIDS: Final = frozenset((0x8100, 0x88A8))
_MAX_VLAN_TAGS: Final = 4  # == sclp.wire.ethernet.MAX_VLAN_TAGS
_PROTO_TCP: Final = 6
_PROTO_UDP: Final = 17
_PROTO_FRAGMENT: Final = 44
_IPV6_WALKED_EXT: Final = frozenset((0, 43, 60))  # Hop-by-Hop, Routing, Destination Opts
_MAX_IPV6_EXT: Final = 8  # bound on extension headers walked

_ETH = struct.Struct("!6s6sH")
_U16 = struct.Struct("!H")
# IPv4: version/IHL, (tos, total length, ident skipped), flags/frag offset, (ttl), protocol,
# (checksum), source, destination.
_V4 = struct.Struct("!B5xHxB2x4s4s")
# IPv6: first byte (version), (rest of word 0, payload length), next header, (hop limit),
# source, destination.
_V6 = struct.Struct("!B5xBx16s16s")
_EXT = struct.Struct("!BB")  # next header, length
_PORTS = struct.Struct("!HH")
_TCP_DOFF = 12
_HASH_L4 = struct.Struct("!BHH")
# l4_checksum: from byte 12 of a frame: ethertype, then IPv4 without options:
# version/IHL, (tos), total length, (ident), flags/fragment offset, (ttl), protocol,
# (checksum), source, destination, then the UDP checksum field (bytes 40-41) and the
# TCP one (50-51).
_IPV4_AT_12: Final = struct.Struct("!HBxH2xHxB2xII6xH8xH")
_VLAN_TPIDS: Final = frozenset((b"\x81\x00", b"\x88\xa8"))
_ETHERTYPE_IPV4_BYTES: Final = b"\x08\x00"
_ETHERTYPE_IPV6_BYTES: Final = b"\x86\xdd"
_TCP_CSUM_OFFSET: Final = 16  # == sclp.wire.tcp.TCP_CSUM_OFFSET
_UDP_CSUM_OFFSET: Final = 6  # == sclp.wire.udp.UDP_CSUM_OFFSET
_HASH_L2 = struct.Struct("!6s6sH")


class FrameInfo(NamedTuple):
    """What the data path needs to know about one Ethernet frame (a NamedTuple: made
    at least once per frame sent, and a frozen dataclass's ``__init__`` costs a
    ``object.__setattr__`` per field).

    ``ethertype`` is the one after VLAN tags; ``l3_offset`` is where it starts.
    ``ip_version`` is 4, 6 or 0 (not IP; then ``src_ip``/``dst_ip`` are ``b""`` and
    ``ip_protocol`` is 0).  ``l4_offset`` is where the transport header starts, -1 for
    non-IP frames and fragments.  ``sport``/``dport`` are 0 unless TCP or UDP;
    ``tcp_header_len`` is 0 unless TCP."""

    dst_mac: bytes
    src_mac: bytes
    ethertype: int
    l3_offset: int
    ip_version: int
    l4_offset: int
    ip_protocol: int
    src_ip: bytes
    dst_ip: bytes
    sport: int
    dport: int
    tcp_header_len: int


def _too_short(what: str) -> MalformedPacket:
    return MalformedPacket(DropReason.TOO_SHORT, f"frame truncated in {what}")


def parse_frame(view: Buffer) -> FrameInfo:
    """Parse the Ethernet/IP/TCP-UDP headers at the start of ``view`` (see the module
    docstring for what is checked).  Raises :class:`MalformedPacket`: TOO_SHORT for a
    truncated Ethernet, VLAN, IP, IPv6 extension, TCP or UDP header; BAD_VERSION when
    the IP version disagrees with the EtherType; MALFORMED for IHL or TCP data offset
    below 5 or too many VLAN tags."""
    n = len(view)
    if n < 14:
        raise _too_short("ethernet header")
    dst_mac, src_mac, ethertype = _ETH.unpack_from(view, 0)
    off = 14
    if ethertype in _TPIDS:
        tags = 0
        while ethertype in _TPIDS:
            if tags == _MAX_VLAN_TAGS:
                raise MalformedPacket(DropReason.MALFORMED, "too many vlan tags")
            if n < off + 4:
                raise _too_short("vlan tag")
            (ethertype,) = _U16.unpack_from(view, off + 2)
            off += 4
            tags += 1
    l3 = off

    if ethertype == _ETHERTYPE_IPV4:
        if n < l3 + 20:
            raise _too_short("ipv4 header")
        vihl, frag, proto, src_ip, dst_ip = _V4.unpack_from(view, l3)
        if vihl >> 4 != 4:
            raise MalformedPacket(DropReason.BAD_VERSION, f"ethertype ipv4, version {vihl >> 4}")
        ihl = (vihl & 0x0F) << 2
        if ihl < 20:
            raise MalformedPacket(DropReason.MALFORMED, "ipv4 ihl < 5")
        if n < l3 + ihl:
            raise _too_short("ipv4 options")
        if frag & 0x3FFF:  # MF or fragment offset: no (complete) L4 header to trust
            return FrameInfo(dst_mac, src_mac, ethertype, l3, 4, -1, proto, src_ip, dst_ip, 0, 0, 0)
        l4 = l3 + ihl
        version = 4
    elif ethertype == _ETHERTYPE_IPV6:
        if n < l3 + 40:
            raise _too_short("ipv6 header")
        v, proto, src_ip, dst_ip = _V6.unpack_from(view, l3)
        if v >> 4 != 6:
            raise MalformedPacket(DropReason.BAD_VERSION, f"ethertype ipv6, version {v >> 4}")
        l4 = l3 + 40
        version = 6
        if proto in _IPV6_WALKED_EXT or proto == _PROTO_FRAGMENT:
            for _ in range(_MAX_IPV6_EXT):
                if n < l4 + 8:  # every extension header is at least 8 bytes
                    raise _too_short("ipv6 extension header")
                nxt, hlen = _EXT.unpack_from(view, l4)
                if proto == _PROTO_FRAGMENT:
                    return FrameInfo(
                        dst_mac, src_mac, ethertype, l3, 6, -1, nxt, src_ip, dst_ip, 0, 0, 0
                    )
                l4 += (hlen + 1) << 3
                proto = nxt
                if proto not in _IPV6_WALKED_EXT and proto != _PROTO_FRAGMENT:
                    break
            else:
                raise MalformedPacket(DropReason.MALFORMED, "too many ipv6 extension headers")
            if n < l4:
                raise _too_short("ipv6 extension header")
    else:
        return FrameInfo(dst_mac, src_mac, ethertype, l3, 0, -1, 0, b"", b"", 0, 0, 0)

    if proto == _PROTO_TCP:
        if n < l4 + 20:
            raise _too_short("tcp header")
        sport, dport = _PORTS.unpack_from(view, l4)
        thl = (view[l4 + _TCP_DOFF] >> 4) << 2
        if thl < 20:
            raise MalformedPacket(DropReason.MALFORMED, "tcp data offset < 5")
        if n < l4 + thl:
            raise _too_short("tcp options")
        return FrameInfo(
            dst_mac, src_mac, ethertype, l3, version, l4, proto, src_ip, dst_ip, sport, dport, thl
        )
    if proto == _PROTO_UDP:
        if n < l4 + 8:
            raise _too_short("udp header")
        sport, dport = _PORTS.unpack_from(view, l4)
        return FrameInfo(
            dst_mac, src_mac, ethertype, l3, version, l4, proto, src_ip, dst_ip, sport, dport, 0
        )
    return FrameInfo(dst_mac, src_mac, ethertype, l3, version, l4, proto, src_ip, dst_ip, 0, 0, 0)


def flow_hash(info: FrameInfo) -> int:
    """A deterministic 32-bit hash of the frame's flow: CRC-32 of the IP addresses,
    protocol and ports for IP, of the MACs and EtherType otherwise.  Stable across
    processes and runs (unlike ``hash()``), so both ends and restarts agree."""
    if info.ip_version:
        key = info.src_ip + info.dst_ip + _HASH_L4.pack(info.ip_protocol, info.sport, info.dport)
    else:
        key = _HASH_L2.pack(info.dst_mac, info.src_mac, info.ethertype)
    return zlib.crc32(key)


def entropy_port(h: int) -> int:
    """Map a flow hash to an outer UDP source port in 49152..65535 (RFC 7348 §5).
    The high half of the hash is folded in so every bit of ``h`` matters."""
    return ENTROPY_PORT_MIN | ((h ^ (h >> 16)) & 0x3FFF)


def l4_checksum(frame: Buffer, flen: int) -> tuple[int, int, int, int] | None:
    """The TCP or UDP checksum of an unfragmented IPv4/IPv6 frame, for a caller that
    asks whether it is partial: ``(csum_start, csum_offset, field, pseudo)`` with
    ``csum_start`` the L4 header's offset, ``csum_offset`` the field's offset in it
    (16 TCP, 6 UDP), ``field`` the value it holds and ``pseudo`` the folded
    pseudo-header sum (RFC 9293 §3.1, RFC 8200 §8.1) over the IP addresses, the
    protocol and the L4 length, folded to 1..0xFFFF as the kernel does, so never 0.

    None for everything else: not IP, an IPv4 fragment, IPv6 extension headers, not
    TCP/UDP, a frame shorter than its IP length or an L4 length shorter than the
    field.  ``flen`` is the frame's length (``len(frame)``).  Never raises.

    Cost: an untagged IPv4 frame without options (the usual one) is answered from one
    struct unpack, and the pseudo-header sum is one modulo (2**16 = 1 mod 0xFFFF, so
    the folded ones' complement sum of the words is their value mod 0xFFFF, 0 read as
    0xFFFF); VLAN tags, IPv4 options and IPv6 go through :func:`_l4_of`.
    """
    if flen >= 52:  # Ethernet + IPv4 + TCP up to its checksum field
        ethertype, vihl, total, frag, proto, src, dst, udp_field, tcp_field = (
            _IPV4_AT_12.unpack_from(frame, 12)
        )
        if ethertype == 0x0800 and vihl == 0x45:
            l4_len = total - 20
            if frag & 0x3FFF or 14 + total > flen:  # a fragment, or cut short
                return None
            pseudo = (src + dst + proto + l4_len) % 0xFFFF or 0xFFFF
            if proto == 6 and l4_len >= 18:
                return 34, _TCP_CSUM_OFFSET, tcp_field, pseudo
            if proto == 17 and l4_len >= 8:
                return 34, _UDP_CSUM_OFFSET, udp_field, pseudo
            return None
    found = _l4_of(frame, flen)
    if found is None:
        return None
    l4, proto, l4_len, end, addr_sum = found
    if proto == 6:
        csum_offset = _TCP_CSUM_OFFSET
    elif proto == 17:
        csum_offset = _UDP_CSUM_OFFSET
    else:
        return None
    if end > flen or l4_len < csum_offset + 2:
        return None
    (field,) = _U16.unpack_from(frame, l4 + csum_offset)
    return l4, csum_offset, field, (addr_sum + proto + l4_len) % 0xFFFF or 0xFFFF


def _l4_of(frame: Buffer, flen: int) -> tuple[int, int, int, int, int] | None:
    """:func:`l4_checksum` for the other frames (VLAN tags, IPv4 options, IPv6, short
    frames): (L4 offset, protocol, L4 length, end of the IP packet, the addresses as
    one integer), or None when there is no unfragmented IP header."""
    view = memoryview(frame)
    ethertype = bytes(view[12:14])
    l3 = 14
    while ethertype in _VLAN_TPIDS and l3 < 14 + 4 * _MAX_VLAN_TAGS:
        ethertype = bytes(view[l3 + 2 : l3 + 4])
        l3 += 4
    if ethertype == _ETHERTYPE_IPV4_BYTES:
        if flen < l3 + 20:
            return None
        vihl = view[l3]
        ihl = (vihl & 0x0F) << 2
        if vihl >> 4 != 4 or ihl < 20 or view[l3 + 6] & 0x3F or view[l3 + 7]:
            return None  # not IPv4, or a fragment (MF / offset)
        (total,) = _U16.unpack_from(view, l3 + 2)
        addresses = view[l3 + 12 : l3 + 20]
        return l3 + ihl, view[l3 + 9], total - ihl, l3 + total, int.from_bytes(addresses)
    if ethertype == _ETHERTYPE_IPV6_BYTES:
        if flen < l3 + 40 or view[l3] >> 4 != 6:
            return None
        (l4_len,) = _U16.unpack_from(view, l3 + 4)
        addresses = view[l3 + 8 : l3 + 40]
        return l3 + 40, view[l3 + 6], l4_len, l3 + 40 + l4_len, int.from_bytes(addresses)
    return None

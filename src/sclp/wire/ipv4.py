"""IPv4 header codec (RFC 791 §3.1) and the TCP/UDP pseudo-header sum (RFC 9293 §3.1,
RFC 768).

The tunnels build outer IPv4 headers for raw-IP transports (SCLP native, GRE, STT) and
read inner ones for flow hashing and segmentation, so this is the whole fixed header
plus opaque options; fragments are not reassembled here.

Layout (RFC 791 §3.1)::

    0      version(4) | IHL(4)      1  type of service     2-3  total length
    4-5    identification           6-7  flags(3) | fragment offset(13)
    8      time to live             9  protocol           10-11 header checksum
    12-15  source address           16-19 destination address
    20-    options (IHL*4 - 20 bytes)
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from sclp.wire.checksum import Buffer, internet_checksum, ones_sum
from sclp.wire.errors import DropReason, MalformedPacket
from sclp.wire.ipproto import (  # re-exported for convenience: sclp.wire.ipv4.IPPROTO_TCP
    IPPROTO_GRE,
    IPPROTO_SCLP,
    IPPROTO_TCP,
    IPPROTO_UDP,
)

__all__ = [
    "IPPROTO_GRE",
    "IPPROTO_SCLP",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "IPV4_CSUM_OFFSET",
    "IPV4_HLEN",
    "IPV4_MAX_HLEN",
    "IPv4Flags",
    "IPv4Header",
    "decode",
    "encode",
    "encode_into",
    "pseudo_header_sum",
]

IPV4_HLEN: Final = 20  # header without options
IPV4_MAX_HLEN: Final = 60  # IHL is 4 bits of 32-bit words
IPV4_CSUM_OFFSET: Final = 10  # offset of the header checksum field

_HDR = struct.Struct("!BBHHHBBH4s4s")


class IPv4Flags(enum.IntFlag):
    """The 3-bit flags field (RFC 791 §3.1); bit 0x4 is reserved and must be zero."""

    NONE = 0
    MF = 0x1  # more fragments
    DF = 0x2  # don't fragment
    RESERVED = 0x4


@dataclass(frozen=True, slots=True)
class IPv4Header:
    """An IPv4 header.  ``src``/``dst`` are 4-byte addresses; ``options`` are the raw
    option bytes (a multiple of 4, at most 40).  ``total_length`` covers header and
    payload.  ``checksum`` is what was received; :func:`encode_into` ignores it and
    writes the computed one."""

    src: bytes
    dst: bytes
    protocol: int
    total_length: int
    ident: int = 0
    flags: IPv4Flags = IPv4Flags.DF
    frag_offset: int = 0  # in 8-byte units
    ttl: int = 64
    tos: int = 0
    options: bytes = b""
    checksum: int = 0

    @property
    def header_len(self) -> int:
        return IPV4_HLEN + len(self.options)

    @property
    def payload_length(self) -> int:
        return self.total_length - IPV4_HLEN - len(self.options)

    @property
    def is_fragment(self) -> bool:
        """True for any fragment (first, middle or last) of a fragmented datagram."""
        return bool(self.flags & IPv4Flags.MF) or self.frag_offset != 0


def decode(view: Buffer, verify_checksum: bool = True) -> IPv4Header:
    """Decode the IPv4 header at the start of ``view``.

    ``view`` must hold at least ``total_length`` bytes (more is fine: Ethernet padding).
    Raises :class:`MalformedPacket` with BAD_VERSION (version != 4), TOO_SHORT (header
    truncated), MALFORMED (IHL < 5, or total length shorter than the header or longer
    than ``view``) or BAD_CHECKSUM (only if ``verify_checksum``).
    """
    n = len(view)
    if n < IPV4_HLEN:
        raise MalformedPacket(DropReason.TOO_SHORT, f"ipv4 header needs 20 bytes, got {n}")
    (vihl, tos, total_length, ident, frag, ttl, protocol, checksum, src, dst) = _HDR.unpack_from(
        view, 0
    )
    if vihl >> 4 != 4:
        raise MalformedPacket(DropReason.BAD_VERSION, f"ip version {vihl >> 4}, expected 4")
    hlen = (vihl & 0x0F) * 4
    if hlen < IPV4_HLEN:
        raise MalformedPacket(DropReason.MALFORMED, f"ipv4 ihl {hlen // 4} < 5")
    if n < hlen:
        raise MalformedPacket(DropReason.TOO_SHORT, f"ipv4 header of {hlen} bytes, got {n}")
    if total_length < hlen:
        raise MalformedPacket(
            DropReason.MALFORMED, f"ipv4 total length {total_length} < header length {hlen}"
        )
    if total_length > n:
        raise MalformedPacket(
            DropReason.MALFORMED, f"ipv4 total length {total_length} > buffer {n}"
        )
    if verify_checksum and ones_sum(view[:hlen]) != 0xFFFF:
        raise MalformedPacket(DropReason.BAD_CHECKSUM, "ipv4 header checksum")
    return IPv4Header(
        src=src,
        dst=dst,
        protocol=protocol,
        total_length=total_length,
        ident=ident,
        flags=IPv4Flags(frag >> 13),
        frag_offset=frag & 0x1FFF,
        ttl=ttl,
        tos=tos,
        options=bytes(view[IPV4_HLEN:hlen]),
        checksum=checksum,
    )


def encode_into(buf: bytearray | memoryview, offset: int, hdr: IPv4Header) -> int:
    """Write ``hdr`` at ``buf[offset:]`` with a freshly computed header checksum
    (``hdr.checksum`` is ignored).  Returns the number of bytes written.
    Raises ValueError for fields that do not fit (options not a multiple of 4 or over
    40 bytes, out-of-range integers, addresses not 4 bytes, buffer too small)."""
    opts = hdr.options
    hlen = IPV4_HLEN + len(opts)
    if len(opts) % 4 or hlen > IPV4_MAX_HLEN:
        raise ValueError(f"ipv4 options must be a multiple of 4 and <= 40 bytes: {len(opts)}")
    if len(hdr.src) != 4 or len(hdr.dst) != 4:
        raise ValueError("ipv4 addresses must be 4 bytes")
    if not 0 <= hdr.frag_offset <= 0x1FFF or not 0 <= int(hdr.flags) <= 0x7:
        raise ValueError("ipv4 flags/fragment offset out of range")
    if len(buf) - offset < hlen:
        raise ValueError("buffer too small for ipv4 header")
    try:
        _HDR.pack_into(
            buf,
            offset,
            0x40 | (hlen >> 2),
            hdr.tos,
            hdr.total_length,
            hdr.ident,
            (int(hdr.flags) << 13) | hdr.frag_offset,
            hdr.ttl,
            hdr.protocol,
            0,
            hdr.src,
            hdr.dst,
        )
    except struct.error as exc:
        raise ValueError(f"ipv4 field out of range: {exc}") from None
    if opts:
        buf[offset + IPV4_HLEN : offset + hlen] = opts
    csum = internet_checksum(memoryview(buf)[offset : offset + hlen])
    struct.pack_into("!H", buf, offset + IPV4_CSUM_OFFSET, csum)
    return hlen


def encode(hdr: IPv4Header) -> bytes:
    """The header as bytes (checksum computed)."""
    buf = bytearray(hdr.header_len)
    encode_into(buf, 0, hdr)
    return bytes(buf)


def pseudo_header_sum(src: bytes, dst: bytes, protocol: int, l4_length: int) -> int:
    """Folded ones' complement sum of the IPv4 pseudo-header (RFC 9293 §3.1: source,
    destination, zero, protocol, TCP/UDP length).  Pass it as ``initial`` to
    :func:`sclp.wire.checksum.internet_checksum` over the L4 header and data."""
    return ones_sum(src + dst, protocol + l4_length)

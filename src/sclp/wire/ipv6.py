"""IPv6 fixed header codec (RFC 8200 §3) and the upper-layer pseudo-header sum
(RFC 8200 §8.1).

Only the 40-byte fixed header is handled: the tunnels build outer headers without
extension headers and read ``next_header`` as-is.  Extension headers are *not* parsed
here; a caller that finds one in ``next_header`` sees it as the payload's first bytes
(:func:`sclp.wire.frame.parse_frame` walks the common ones for flow hashing).

Layout (RFC 8200 §3)::

    0-3    version(4) | traffic class(8) | flow label(20)
    4-5    payload length   6  next header   7  hop limit
    8-23   source address   24-39 destination address
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from sclp.wire.checksum import Buffer, ones_sum
from sclp.wire.errors import DropReason, MalformedPacket

__all__ = [
    "IPV6_HLEN",
    "IPv6Header",
    "decode",
    "encode",
    "encode_into",
    "pseudo_header_sum",
]

IPV6_HLEN: Final = 40

_HDR = struct.Struct("!IHBB16s16s")


@dataclass(frozen=True, slots=True)
class IPv6Header:
    """An IPv6 fixed header.  ``src``/``dst`` are 16-byte addresses; ``payload_length``
    counts everything after the 40-byte fixed header (extension headers included)."""

    src: bytes
    dst: bytes
    next_header: int
    payload_length: int
    hop_limit: int = 64
    traffic_class: int = 0
    flow_label: int = 0

    @property
    def header_len(self) -> int:
        return IPV6_HLEN


def decode(view: Buffer) -> IPv6Header:
    """Decode the fixed IPv6 header at the start of ``view``.

    ``view`` must hold the whole packet (40 + ``payload_length`` bytes, more is fine).
    Raises :class:`MalformedPacket`: TOO_SHORT (under 40 bytes), BAD_VERSION (not 6),
    MALFORMED (payload length runs past ``view``).  Jumbograms (RFC 2675,
    payload_length 0 plus a Hop-by-Hop option) are not recognised: 0 means empty.
    """
    n = len(view)
    if n < IPV6_HLEN:
        raise MalformedPacket(DropReason.TOO_SHORT, f"ipv6 header needs 40 bytes, got {n}")
    word, payload_length, next_header, hop_limit, src, dst = _HDR.unpack_from(view, 0)
    if word >> 28 != 6:
        raise MalformedPacket(DropReason.BAD_VERSION, f"ip version {word >> 28}, expected 6")
    if IPV6_HLEN + payload_length > n:
        raise MalformedPacket(
            DropReason.MALFORMED, f"ipv6 payload length {payload_length} > buffer {n - 40}"
        )
    return IPv6Header(
        src=src,
        dst=dst,
        next_header=next_header,
        payload_length=payload_length,
        hop_limit=hop_limit,
        traffic_class=(word >> 20) & 0xFF,
        flow_label=word & 0xFFFFF,
    )


def encode_into(buf: bytearray | memoryview, offset: int, hdr: IPv6Header) -> int:
    """Write ``hdr`` at ``buf[offset:]``; returns 40.  Raises ValueError for fields out
    of range, addresses not 16 bytes or a buffer too small."""
    if len(hdr.src) != 16 or len(hdr.dst) != 16:
        raise ValueError("ipv6 addresses must be 16 bytes")
    if not 0 <= hdr.traffic_class <= 0xFF or not 0 <= hdr.flow_label <= 0xFFFFF:
        raise ValueError("ipv6 traffic class / flow label out of range")
    if len(buf) - offset < IPV6_HLEN:
        raise ValueError("buffer too small for ipv6 header")
    try:
        _HDR.pack_into(
            buf,
            offset,
            0x60000000 | (hdr.traffic_class << 20) | hdr.flow_label,
            hdr.payload_length,
            hdr.next_header,
            hdr.hop_limit,
            hdr.src,
            hdr.dst,
        )
    except struct.error as exc:
        raise ValueError(f"ipv6 field out of range: {exc}") from None
    return IPV6_HLEN


def encode(hdr: IPv6Header) -> bytes:
    buf = bytearray(IPV6_HLEN)
    encode_into(buf, 0, hdr)
    return bytes(buf)


def pseudo_header_sum(src: bytes, dst: bytes, next_header: int, l4_length: int) -> int:
    """Folded ones' complement sum of the IPv6 pseudo-header (RFC 8200 §8.1: source,
    destination, 32-bit upper-layer length, 24 zero bits, next header).  ``l4_length``
    may exceed 16 bits; its two 16-bit halves are summed as the RFC's 32-bit field."""
    return ones_sum(src + dst, (l4_length >> 16) + (l4_length & 0xFFFF) + next_header)

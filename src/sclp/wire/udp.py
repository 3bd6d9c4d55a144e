"""UDP header codec (RFC 768) and the UDP checksum helper.

UDP is the carrier of VXLAN, Geneve and SCLP's UDP mode.  The codec is the 8-byte
header; :func:`udp_checksum` applies RFC 768's rule that a computed checksum of zero is
sent as all ones (zero on the wire means "no checksum", legal over IPv4 only, and for
tunnels over IPv6 per RFC 6935/6936).

Layout (RFC 768)::

    0-1 source port   2-3 destination port   4-5 length   6-7 checksum
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from sclp.wire.checksum import Buffer, internet_checksum
from sclp.wire.errors import DropReason, MalformedPacket

__all__ = [
    "UDP_CSUM_OFFSET",
    "UDP_HLEN",
    "UdpHeader",
    "decode",
    "encode",
    "encode_into",
    "udp_checksum",
]

UDP_HLEN: Final = 8
UDP_CSUM_OFFSET: Final = 6  # offset of the checksum field in the UDP header

_HDR = struct.Struct("!HHHH")


@dataclass(frozen=True, slots=True)
class UdpHeader:
    """A UDP header; ``length`` covers header and data."""

    sport: int
    dport: int
    length: int
    checksum: int = 0

    @property
    def header_len(self) -> int:
        return UDP_HLEN


def decode(view: Buffer) -> UdpHeader:
    """Decode the UDP header at the start of ``view``, which must hold the whole
    datagram (``length`` bytes; more is fine).  The checksum is not verified (it needs
    the pseudo-header, see :func:`udp_checksum`).  Raises :class:`MalformedPacket`:
    TOO_SHORT (under 8 bytes), MALFORMED (length < 8 or longer than ``view``)."""
    n = len(view)
    if n < UDP_HLEN:
        raise MalformedPacket(DropReason.TOO_SHORT, f"udp header needs 8 bytes, got {n}")
    sport, dport, length, checksum = _HDR.unpack_from(view, 0)
    if length < UDP_HLEN:
        raise MalformedPacket(DropReason.MALFORMED, f"udp length {length} < 8")
    if length > n:
        raise MalformedPacket(DropReason.MALFORMED, f"udp length {length} > buffer {n}")
    return UdpHeader(sport=sport, dport=dport, length=length, checksum=checksum)


def encode_into(buf: bytearray | memoryview, offset: int, hdr: UdpHeader) -> int:
    """Write ``hdr`` (checksum as given) at ``buf[offset:]``; returns 8.  Raises
    ValueError for out-of-range fields or a buffer too small."""
    if len(buf) - offset < UDP_HLEN:
        raise ValueError("buffer too small for udp header")
    try:
        _HDR.pack_into(buf, offset, hdr.sport, hdr.dport, hdr.length, hdr.checksum)
    except struct.error as exc:
        raise ValueError(f"udp field out of range: {exc}") from None
    return UDP_HLEN


def encode(hdr: UdpHeader) -> bytes:
    return _HDR.pack(hdr.sport, hdr.dport, hdr.length, hdr.checksum)


def udp_checksum(pseudo_sum: int, datagram: Buffer) -> int:
    """The checksum to write into a UDP header: RFC 1071 over ``datagram`` (header with
    a zeroed checksum field, plus data) and the pseudo-header sum, with a computed 0
    replaced by 0xFFFF (RFC 768).  Never returns 0.  To verify a received datagram
    with a non-zero checksum, check ``internet_checksum(datagram, pseudo_sum) == 0``."""
    return internet_checksum(datagram, pseudo_sum) or 0xFFFF

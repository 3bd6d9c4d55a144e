"""TCP header codec (RFC 9293 §3.1) and the TCP checksum helper.

The tunnels need TCP for two things: STT's pseudo-TCP outer header, and reading the
inner TCP header of TSO frames (header length for segmentation, ports for flow hashing).
Options are kept as opaque bytes; nothing here interprets them.

Layout (RFC 9293 §3.1)::

    0-1  source port     2-3  destination port
    4-7  sequence number 8-11 acknowledgment number
    12   data offset(4) | reserved(4)   13  flags (CWR ECE URG ACK PSH RST SYN FIN)
    14-15 window         16-17 checksum  18-19 urgent pointer
    20-  options (data offset*4 - 20 bytes)
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from sclp.wire.checksum import Buffer, internet_checksum
from sclp.wire.errors import DropReason, MalformedPacket

__all__ = [
    "TCP_CSUM_OFFSET",
    "TCP_HLEN",
    "TCP_MAX_HLEN",
    "TcpFlags",
    "TcpHeader",
    "decode",
    "encode",
    "encode_into",
    "tcp_checksum",
]

TCP_HLEN: Final = 20  # header without options
TCP_MAX_HLEN: Final = 60  # data offset is 4 bits of 32-bit words
TCP_CSUM_OFFSET: Final = 16  # offset of the checksum field in the TCP header

_HDR = struct.Struct("!HHIIBBHHH")


class TcpFlags(enum.IntFlag):
    """Control bits in byte 13 (RFC 9293 §3.1; ECE/CWR from RFC 3168 §6.1)."""

    NONE = 0
    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10
    URG = 0x20
    ECE = 0x40
    CWR = 0x80


@dataclass(frozen=True, slots=True)
class TcpHeader:
    """A TCP header.  ``options`` are raw bytes; :func:`encode_into` pads them with
    zeros (End of Option List, RFC 9293 §3.2) to a multiple of 4, so a decoded header's
    ``options`` always has the padded length.  The 4 reserved bits of byte 12 are
    written as zero and ignored on decode."""

    sport: int
    dport: int
    seq: int
    ack: int
    flags: TcpFlags
    window: int
    checksum: int = 0
    urgent: int = 0
    options: bytes = b""

    @property
    def header_len(self) -> int:
        return TCP_HLEN + ((len(self.options) + 3) & ~3)


def decode(view: Buffer) -> TcpHeader:
    """Decode the TCP header at the start of ``view`` (the checksum is not verified:
    that needs the IP pseudo-header, see :func:`tcp_checksum`).
    Raises :class:`MalformedPacket`: TOO_SHORT (header truncated), MALFORMED (data
    offset < 5)."""
    n = len(view)
    if n < TCP_HLEN:
        raise MalformedPacket(DropReason.TOO_SHORT, f"tcp header needs 20 bytes, got {n}")
    sport, dport, seq, ack, doff, flags, window, checksum, urgent = _HDR.unpack_from(view, 0)
    hlen = (doff >> 4) * 4
    if hlen < TCP_HLEN:
        raise MalformedPacket(DropReason.MALFORMED, f"tcp data offset {hlen // 4} < 5")
    if n < hlen:
        raise MalformedPacket(DropReason.TOO_SHORT, f"tcp header of {hlen} bytes, got {n}")
    return TcpHeader(
        sport=sport,
        dport=dport,
        seq=seq,
        ack=ack,
        flags=TcpFlags(flags),
        window=window,
        checksum=checksum,
        urgent=urgent,
        options=bytes(view[TCP_HLEN:hlen]),
    )


def encode_into(buf: bytearray | memoryview, offset: int, hdr: TcpHeader) -> int:
    """Write ``hdr`` (checksum field = ``hdr.checksum``, as given) at ``buf[offset:]``;
    returns the header length.  Compute the checksum afterwards with
    :func:`tcp_checksum` once the payload is in place.  Raises ValueError for options
    over 40 bytes, out-of-range fields or a buffer too small."""
    hlen = hdr.header_len
    if hlen > TCP_MAX_HLEN:
        raise ValueError(f"tcp options over 40 bytes: {len(hdr.options)}")
    if len(buf) - offset < hlen:
        raise ValueError("buffer too small for tcp header")
    try:
        _HDR.pack_into(
            buf,
            offset,
            hdr.sport,
            hdr.dport,
            hdr.seq,
            hdr.ack,
            (hlen >> 2) << 4,
            int(hdr.flags),
            hdr.window,
            hdr.checksum,
            hdr.urgent,
        )
    except struct.error as exc:
        raise ValueError(f"tcp field out of range: {exc}") from None
    if hlen > TCP_HLEN:
        olen = len(hdr.options)
        buf[offset + TCP_HLEN : offset + TCP_HLEN + olen] = hdr.options
        buf[offset + TCP_HLEN + olen : offset + hlen] = bytes(hlen - TCP_HLEN - olen)
    return hlen


def encode(hdr: TcpHeader) -> bytes:
    buf = bytearray(hdr.header_len)
    encode_into(buf, 0, hdr)
    return bytes(buf)


def tcp_checksum(pseudo_sum: int, segment: Buffer) -> int:
    """The TCP checksum over ``segment`` (TCP header + data) given the pseudo-header
    sum from :func:`sclp.wire.ipv4.pseudo_header_sum` / ``ipv6.pseudo_header_sum``.
    The caller must have zeroed the checksum field (offset :data:`TCP_CSUM_OFFSET`).
    To verify a received segment instead, check ``tcp_checksum(ps, seg) == 0`` with
    the field left in place."""
    return internet_checksum(segment, pseudo_sum)

"""SCLP segment header codec (sclp-spec §1, §2, §3 segment size, §5 UDP carrier).

SCLP is the outer transport of VXLAN/Geneve tunnels: one payload (tunnel header plus a
large inner frame, at most 65,535 bytes) is cut into MTU-sized segments, each with this
12-byte header, so the receiver can put the payload back together before
decapsulation.  This module only encodes, decodes and checksums one header; cutting
and reassembling live in :mod:`sclp.engine.segmenter` and
:mod:`sclp.engine.reassembler`.

Layout (sclp-spec §1, all fields big-endian)::

    0-1   source port            2-3   destination port
    4-7   identification (upper 31 bits) | F (bit 0: first segment)
    8-9   remaining (payload bytes after this segment's)
    10-11 checksum (RFC 1071 over header + segment payload, no pseudo-header)

Receiver arithmetic: ``total = first.len + first.remaining`` and any segment's offset is
``total - (len + remaining)``.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from sclp.wire.checksum import Buffer, ones_sum
from sclp.wire.errors import DropReason, MalformedPacket
from sclp.wire.geneve import GENEVE_PORT
from sclp.wire.ipproto import IPPROTO_SCLP
from sclp.wire.vxlan import VXLAN_PORT

__all__ = [
    "IPPROTO_SCLP",
    "SCLP_CSUM_OFFSET",
    "SCLP_HLEN",
    "SCLP_IDENT_MAX",
    "SCLP_MAX_PAYLOAD",
    "SCLP_PORT_GENEVE",
    "SCLP_PORT_VXLAN",
    "SCLP_UDP_PORT",
    "Carrier",
    "SclpFlags",
    "SclpHeader",
    "compute_checksum",
    "decode",
    "encode",
    "encode_into",
    "header_sum",
    "segment_payload_size",
    "verify_checksum",
]

SCLP_HLEN: Final = 12
SCLP_CSUM_OFFSET: Final = 10  # offset of the checksum field in the header
SCLP_MAX_PAYLOAD: Final = 65535  # Remaining must fit in 16 bits (sclp-spec §1)
SCLP_IDENT_MAX: Final = 0x7FFFFFFF  # identification is 31 bits
# The SCLP destination port names the format it carries by that format's UDP port.
SCLP_PORT_VXLAN: Final = VXLAN_PORT  # VXLAN over SCLP (sclp-spec §2)
SCLP_PORT_GENEVE: Final = GENEVE_PORT  # Geneve over SCLP (sclp-spec §2, extension)
SCLP_UDP_PORT: Final = 7234  # default UDP destination port of the carrier (sclp-spec §5)

UDP_HLEN: Final = 8
_IP_HLEN: Final = {4: 20, 6: 40}  # outer IP header without options / extension headers
# Smallest link MTU each IP version allows: RFC 791 §3.2 (68), RFC 8200 §5 (1280).
_IP_MIN_MTU: Final = {4: 68, 6: 1280}
# Largest packet each IP version can describe without jumbograms.
_IP_MAX_PACKET: Final = {4: 0xFFFF, 6: 40 + 0xFFFF}

_HDR = struct.Struct("!HHIHH")


class SclpFlags(enum.IntFlag):
    """Flag bits of the identification word (sclp-spec §1)."""

    NONE = 0
    FIRST = 0x1  # F: this segment carries the start of the payload


class Carrier(enum.Enum):
    """How SCLP segments travel: directly in IP (protocol 234) or inside UDP (§5)."""

    IP = "ip"
    UDP = "udp"


@dataclass(frozen=True, slots=True)
class SclpHeader:
    """One SCLP segment header.  ``ident`` is the 31-bit identification (the wire word
    is ``ident << 1 | F``); ``remaining`` counts payload bytes after this segment's;
    ``checksum`` is the field as received or to be sent (0 = not computed, UDP
    carrier only)."""

    sport: int
    dport: int
    ident: int
    first: bool
    remaining: int
    checksum: int = 0

    @property
    def word(self) -> int:
        """The 32-bit identification word as on the wire."""
        return (self.ident << 1) | int(self.first)


def decode(view: Buffer) -> SclpHeader:
    """Decode the SCLP header at the start of ``view`` (the segment payload follows it).

    Every 12-byte pattern is a syntactically valid header, so the only failure is
    TOO_SHORT; the checksum is checked separately by :func:`verify_checksum` (it needs
    the carrier mode).
    """
    if len(view) < SCLP_HLEN:
        raise MalformedPacket(
            DropReason.TOO_SHORT, f"sclp header needs {SCLP_HLEN} bytes, got {len(view)}"
        )
    sport, dport, word, remaining, checksum = _HDR.unpack_from(view, 0)
    return SclpHeader(sport, dport, word >> 1, bool(word & 1), remaining, checksum)


def encode_into(buf: bytearray | memoryview, offset: int, hdr: SclpHeader) -> int:
    """Write ``hdr`` at ``buf[offset:]`` exactly as given (``hdr.checksum`` included:
    the checksum covers the payload, which this function does not see; use
    :func:`compute_checksum`).  Returns the number of bytes written (12).
    Raises ValueError for out-of-range fields or a buffer too small."""
    if not 0 <= hdr.ident <= SCLP_IDENT_MAX:
        raise ValueError(f"sclp identification {hdr.ident} is not a 31-bit value")
    if offset < 0 or len(buf) - offset < SCLP_HLEN:
        raise ValueError("buffer too small for sclp header")
    try:
        _HDR.pack_into(buf, offset, hdr.sport, hdr.dport, hdr.word, hdr.remaining, hdr.checksum)
    except struct.error as exc:
        raise ValueError(f"sclp field out of range: {exc}") from None
    return SCLP_HLEN


def encode(hdr: SclpHeader) -> bytes:
    """The header as 12 bytes (checksum field as given)."""
    buf = bytearray(SCLP_HLEN)
    encode_into(buf, 0, hdr)
    return bytes(buf)


def header_sum(sport: int, dport: int, word: int, remaining: int) -> int:
    """Unfolded ones' complement sum of a header's 16-bit words with the checksum field
    taken as 0 (plain integer arithmetic: cheaper than summing 12 bytes)."""
    return sport + dport + (word >> 16) + (word & 0xFFFF) + remaining


def compute_checksum(hdr: SclpHeader, payload: Buffer) -> int:
    """The checksum to transmit for ``hdr`` + ``payload`` (``hdr.checksum`` ignored).

    RFC 1071 over header and payload, no pseudo-header; a computed 0x0000 is sent as
    0xFFFF (sclp-spec §1 extension) so that 0 keeps meaning "not computed"."""
    s = ones_sum(payload, header_sum(hdr.sport, hdr.dport, hdr.word, hdr.remaining) % 0xFFFF)
    return (~s & 0xFFFF) or 0xFFFF


def verify_checksum(segment: Buffer, carrier: Carrier) -> None:
    """Check the checksum of ``segment`` (header + its payload).

    The folded sum of the whole segment, checksum field included, must be 0xFFFF.  A
    field of 0 means "not computed" and is accepted only in the UDP carrier mode, whose
    own checksum covers the bytes (sclp-spec §5); in native IP mode it is an error.
    Raises :class:`MalformedPacket` TOO_SHORT or BAD_CHECKSUM."""
    if len(segment) < SCLP_HLEN:
        raise MalformedPacket(
            DropReason.TOO_SHORT, f"sclp header needs {SCLP_HLEN} bytes, got {len(segment)}"
        )
    if segment[SCLP_CSUM_OFFSET] == 0 and segment[SCLP_CSUM_OFFSET + 1] == 0:
        if carrier is Carrier.UDP:
            return
        raise MalformedPacket(DropReason.BAD_CHECKSUM, "sclp checksum 0 in native ip mode")
    if ones_sum(segment) != 0xFFFF:
        raise MalformedPacket(DropReason.BAD_CHECKSUM, "sclp checksum")


def segment_payload_size(mtu: int, ip_version: int, carrier: Carrier) -> int:
    """Payload bytes per segment, M (sclp-spec §3): MTU minus the outer IP header (20 or
    40), the SCLP header (12) and, in UDP carrier mode, the UDP header (8).

    An MTU beyond what the IP version can carry in one packet (loopback's 65536, say) is
    clamped to the largest packet.  Raises ValueError for an unknown IP version or an
    MTU below the version's minimum (68 for IPv4, 1280 for IPv6): that is a
    configuration error, not a packet."""
    if isinstance(mtu, bool) or not isinstance(mtu, int):
        raise ValueError(f"mtu must be an integer, got {mtu!r}")
    ip_hlen = _IP_HLEN.get(ip_version)
    if ip_hlen is None:
        raise ValueError(f"ip version must be 4 or 6, got {ip_version!r}")
    if mtu < _IP_MIN_MTU[ip_version]:
        raise ValueError(f"mtu {mtu} below the IPv{ip_version} minimum {_IP_MIN_MTU[ip_version]}")
    overhead = ip_hlen + SCLP_HLEN + (UDP_HLEN if carrier is Carrier.UDP else 0)
    return min(mtu, _IP_MAX_PACKET[ip_version]) - overhead

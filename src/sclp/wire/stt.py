"""STT frame header codec and pseudo-TCP field helpers (draft-davie-stt-08 §3).

STT is the competitor closest to SCLP: it also sends one large frame as several
MTU-sized segments, hiding them behind a TCP-looking header so that NICs segment
(TSO) and coalesce (LRO) them.  The 18-byte STT frame header travels once, at the start
of the first segment, and carries the offload state (checksum flags, L4 offset, MSS)
that SCLP has to derive or send in a Geneve option (sclp-spec §6).

Frame header (draft-davie-stt-08 §3.1)::

    0      Version (0)          1  Flags           2  L4 Offset       3  Reserved
    4-5    Max. Segment Size    6-7  PCP(3) | V(1) | VLAN ID(12)
    8-15   Context ID (64 bits)
    16-17  Padding (aligns the inner frame's IP header on 4 bytes after Ethernet)

Pseudo-TCP header (§3.2, §3.3): destination port 7471, sequence number = STT frame
length (upper 16 bits) | offset of this segment in the frame (lower 16 bits),
acknowledgment number = packet identifier.  The frame length counts the STT frame
header and the inner frame (everything after the TCP header, over all segments).

Unused flag bits and the reserved byte must be zero on transmission and are ignored on
receipt; so is the padding.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from sclp.wire.checksum import Buffer
from sclp.wire.errors import DropReason, MalformedPacket

__all__ = [
    "STT_FRAME_MAX_LEN",
    "STT_HLEN",
    "STT_PORT",
    "STT_VERSION",
    "SttFlags",
    "SttHeader",
    "decode",
    "encode",
    "encode_into",
    "split_stt_seq",
    "stt_seq",
]

STT_HLEN: Final = 18  # frame header including the 2 bytes of padding
STT_PORT: Final = 7471  # TCP destination port (IANA)
STT_VERSION: Final = 0
STT_FRAME_MAX_LEN: Final = 0xFFFF  # the frame length has 16 bits of the sequence number

_HDR = struct.Struct("!BBBxHHQ2x")  # version, flags, L4 offset, mss, vlan, context id
_VLAN_V: Final = 0x1000  # V: the PCP and VLAN ID fields are valid


class SttFlags(enum.IntFlag):
    """The flags byte (draft-davie-stt-08 §3.1); bits 0x10-0x80 are unused."""

    NONE = 0
    CSUM_VERIFIED = 0x01  # the inner packet's checksum has been verified
    CSUM_PARTIAL = 0x02  # the inner checksum is partial (L4 offset says where)
    IPV4 = 0x04  # the inner packet is IPv4 (else IPv6), meaningful with CSUM_PARTIAL/TSO
    TCP = 0x08  # the inner L4 protocol is TCP (else UDP)


_DEFINED_FLAGS: Final = 0x0F


@dataclass(frozen=True, slots=True)
class SttHeader:
    """An STT frame header.

    ``l4_offset`` is the offset of the inner L4 header from the end of the STT frame
    header (0 when no offload is requested); ``mss`` is the segment size the receiver
    should use to resegment the inner TCP frame (0 when not a TSO frame).
    ``vlan_tci`` is ``None`` when V is clear, else the 802.1Q tag control information
    PCP(3) | 0 | VID(12): STT puts V where 802.1Q has DEI, so DEI cannot be carried.
    """

    context_id: int
    flags: SttFlags = SttFlags.NONE
    l4_offset: int = 0
    mss: int = 0
    vlan_tci: int | None = None

    @property
    def vlan_id(self) -> int | None:
        return None if self.vlan_tci is None else self.vlan_tci & 0x0FFF

    @property
    def pcp(self) -> int | None:
        return None if self.vlan_tci is None else self.vlan_tci >> 13


def decode(view: Buffer) -> SttHeader:
    """Decode the STT frame header at the start of ``view`` (the payload of the first
    segment, or of the reassembled frame); the inner Ethernet frame follows at 18.

    Raises :class:`MalformedPacket` with TOO_SHORT (fewer than 18 bytes) or BAD_VERSION
    (version != 0).  Unused flag bits, the reserved byte, the padding and, when V is
    clear, the PCP and VLAN ID bits are ignored.
    """
    if len(view) < STT_HLEN:
        raise MalformedPacket(DropReason.TOO_SHORT, f"stt header needs 18 bytes, got {len(view)}")
    version, flags, l4_offset, mss, vlan, context_id = _HDR.unpack_from(view, 0)
    if version != STT_VERSION:
        raise MalformedPacket(DropReason.BAD_VERSION, f"stt version {version}, expected 0")
    return SttHeader(
        context_id=context_id,
        flags=SttFlags(flags & _DEFINED_FLAGS),
        l4_offset=l4_offset,
        mss=mss,
        vlan_tci=vlan & ~_VLAN_V if vlan & _VLAN_V else None,
    )


def encode_into(buf: bytearray | memoryview, offset: int, hdr: SttHeader) -> int:
    """Write ``hdr`` at ``buf[offset:]`` (version 0, reserved and padding zero).
    Returns the bytes written (18).  Raises ValueError for undefined flag bits, a
    ``vlan_tci`` with the DEI bit (0x1000) set, fields out of range, or a buffer too
    small."""
    if int(hdr.flags) & ~_DEFINED_FLAGS:
        raise ValueError(f"stt flags {int(hdr.flags):#x} has undefined bits")
    if hdr.vlan_tci is None:
        vlan = 0
    elif 0 <= hdr.vlan_tci <= 0xFFFF and not hdr.vlan_tci & _VLAN_V:
        vlan = hdr.vlan_tci | _VLAN_V
    else:
        raise ValueError(f"stt vlan tci {hdr.vlan_tci:#x} out of range or has DEI set")
    if offset < 0 or len(buf) - offset < STT_HLEN:
        raise ValueError("buffer too small for stt header")
    try:
        _HDR.pack_into(
            buf, offset, STT_VERSION, int(hdr.flags), hdr.l4_offset, hdr.mss, vlan, hdr.context_id
        )
    except struct.error as exc:
        raise ValueError(f"stt field out of range: {exc}") from None
    return STT_HLEN


def encode(hdr: SttHeader) -> bytes:
    """The header as 18 bytes."""
    buf = bytearray(STT_HLEN)
    encode_into(buf, 0, hdr)
    return bytes(buf)


def stt_seq(frame_len: int, offset: int) -> int:
    """The pseudo-TCP sequence number of a segment (draft-davie-stt-08 §3.2): the STT
    frame length in the upper 16 bits, the segment's offset in the frame in the lower.
    Raises ValueError if either does not fit in 16 bits."""
    if not 0 <= frame_len <= STT_FRAME_MAX_LEN or not 0 <= offset <= 0xFFFF:
        raise ValueError(f"stt frame length/offset out of range: {frame_len}/{offset}")
    return (frame_len << 16) | offset


def split_stt_seq(seq: int) -> tuple[int, int]:
    """``(frame_len, offset)`` from a pseudo-TCP sequence number (32 bits)."""
    if not 0 <= seq <= 0xFFFFFFFF:
        raise ValueError(f"tcp sequence number out of range: {seq}")
    return seq >> 16, seq & 0xFFFF

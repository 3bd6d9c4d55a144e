"""NVGRE header codec: the GRE header of RFC 7637 §3.2 (GRE of RFC 2784 with the Key
extension of RFC 2890).

NVGRE is one of the classic tunnels SCLP is compared with.  It runs directly over IP
(protocol 47) and always has exactly one shape: K set, C and S clear, version 0,
protocol type 0x6558 (Transparent Ethernet Bridging), and a key holding the 24-bit
Virtual Subnet ID and an 8-bit FlowID.  :func:`header` and :func:`frame_of` are
:func:`encode` and :func:`decode` without a header object, for the data path
(tests/wire/test_nvgre.py holds them equal).

Layout (RFC 2890 §2 with RFC 7637 §3.2)::

    0-1    C(1) R(1) K(1) S(1) Reserved0(9) Ver(3)    2-3  Protocol Type (0x6558)
    4-6    Virtual Subnet ID (VSID)                   7    FlowID

RFC 2784 §2.3: a receiver discards packets with bits 1-5 non-zero unless it implements
RFC 1701; RFC 2890 took bits 2 and 3 for K and S, so bits 1, 4 and 5 are checked and
bits 6-12 are ignored.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from sclp.wire.checksum import Buffer
from sclp.wire.errors import DropReason, MalformedPacket
from sclp.wire.ethernet import ETHERTYPE_TEB
from sclp.wire.ipproto import IPPROTO_GRE

__all__ = [
    "IPPROTO_GRE",
    "NVGRE_LEN",
    "VSID_MAX",
    "GreFlags",
    "NvgreHeader",
    "decode",
    "encode",
    "encode_into",
    "frame_of",
    "header",
]

NVGRE_LEN: Final = 8
VSID_MAX: Final = 0xFFFFFF

_HDR = struct.Struct("!HHI")  # flags|version, protocol type, VSID(24)|FlowID(8)


class GreFlags(enum.IntFlag):
    """The high bits of the first 16-bit word (RFC 2784 §2, RFC 2890 §2)."""

    NONE = 0
    C = 0x8000  # checksum present
    R = 0x4000  # routing present (RFC 1701, reserved by RFC 2784)
    K = 0x2000  # key present
    S = 0x1000  # sequence number present


_VERSION_MASK: Final = 0x0007
_RFC1701_BITS_4_5: Final = 0x0C00  # strict source route, recursion control (high bit)
_MUST_BE_ZERO: Final = GreFlags.C | GreFlags.R | GreFlags.S | _RFC1701_BITS_4_5
_NVGRE_WORD0: Final = int(GreFlags.K)  # K set, everything else zero, version 0


@dataclass(frozen=True, slots=True)
class NvgreHeader:
    """An NVGRE header: the Virtual Subnet ID (24 bits) and FlowID (8 bits, per-flow
    entropy for ECMP, RFC 7637 §3.2)."""

    vsid: int
    flow_id: int = 0


def decode(view: Buffer) -> NvgreHeader:
    """Decode the NVGRE (GRE) header at the start of ``view``; the inner Ethernet frame
    follows at offset 8.

    Raises :class:`MalformedPacket` with TOO_SHORT (fewer than 8 bytes) or
    BAD_TUNNEL_HEADER (K clear, C/R/S or bits 4-5 set, version != 0, or protocol type
    not 0x6558).
    """
    if len(view) < NVGRE_LEN:
        raise MalformedPacket(DropReason.TOO_SHORT, f"nvgre header needs 8 bytes, got {len(view)}")
    word0, protocol_type, key = _HDR.unpack_from(view, 0)
    if not word0 & GreFlags.K:
        raise MalformedPacket(DropReason.BAD_TUNNEL_HEADER, "nvgre: gre key bit clear")
    if word0 & _MUST_BE_ZERO:
        raise MalformedPacket(
            DropReason.BAD_TUNNEL_HEADER, f"nvgre: gre flags {word0 & _MUST_BE_ZERO:#06x} set"
        )
    if word0 & _VERSION_MASK:
        raise MalformedPacket(
            DropReason.BAD_TUNNEL_HEADER, f"nvgre: gre version {word0 & _VERSION_MASK}"
        )
    if protocol_type != ETHERTYPE_TEB:
        raise MalformedPacket(
            DropReason.BAD_TUNNEL_HEADER, f"nvgre: protocol type {protocol_type:#06x}"
        )
    return NvgreHeader(vsid=key >> 8, flow_id=key & 0xFF)


def encode_into(buf: bytearray | memoryview, offset: int, hdr: NvgreHeader) -> int:
    """Write ``hdr`` at ``buf[offset:]``.  Returns the bytes written (8).  Raises
    ValueError for a VSID or FlowID out of range, or a buffer too small."""
    if not 0 <= hdr.vsid <= VSID_MAX or not 0 <= hdr.flow_id <= 0xFF:
        raise ValueError(f"nvgre vsid/flow id out of range: {hdr.vsid}/{hdr.flow_id}")
    if offset < 0 or len(buf) - offset < NVGRE_LEN:
        raise ValueError("buffer too small for nvgre header")
    _HDR.pack_into(buf, offset, _NVGRE_WORD0, ETHERTYPE_TEB, (hdr.vsid << 8) | hdr.flow_id)
    return NVGRE_LEN


def encode(hdr: NvgreHeader) -> bytes:
    """The header as 8 bytes."""
    buf = bytearray(NVGRE_LEN)
    encode_into(buf, 0, hdr)
    return bytes(buf)


def header(vsid: int, flow_id: int) -> bytes:
    """``encode(NvgreHeader(vsid, flow_id & 0xFF))`` without the object or the range
    checks (the transmit hot path; ``vsid`` is a valid VSID, ``flow_id`` any flow
    hash, of which the low 8 bits are taken)."""
    return _HDR.pack(_NVGRE_WORD0, ETHERTYPE_TEB, (vsid << 8) | (flow_id & 0xFF))


def frame_of(view: Buffer) -> tuple[int, int, int]:
    """(VSID, offset of the inner frame, 0), in the shape of
    :func:`sclp.wire.geneve.frame_of`: the one shape this project and most senders
    emit (K only, Ethernet) is read with one unpack, anything else goes through
    :func:`decode` (same exceptions)."""
    if len(view) >= NVGRE_LEN:
        word, proto, key = _HDR.unpack_from(view, 0)
        if word == _NVGRE_WORD0 and proto == ETHERTYPE_TEB:
            return key >> 8, NVGRE_LEN, 0
    return decode(view).vsid, NVGRE_LEN, 0

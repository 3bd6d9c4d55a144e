"""VXLAN header codec (RFC 7348 §5).

VXLAN is the tunnel header SCLP was built to carry (sclp-spec §2) and one of the
classic UDP tunnels it is compared with, so this module sits on the hot path of both:
:func:`header` and :func:`frame_of` are :func:`encode` and :func:`decode` without a
header object, for the data path (tests/wire/test_vxlan.py holds them equal).

Layout (RFC 7348 §5)::

    0      flags: R R R R I R R R      1-3  reserved (24 bits)
    4-6    VXLAN Network Identifier    7    reserved (8 bits)

The I flag must be set for a valid VNI; the reserved bits "MUST be set to zero on
transmission and ignored on receipt", so decoding keeps the received flags byte but
only checks I.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from sclp.wire.checksum import Buffer
from sclp.wire.errors import DropReason, MalformedPacket

__all__ = [
    "VNI_MAX",
    "VXLAN_LEN",
    "VXLAN_PORT",
    "VxlanFlags",
    "VxlanHeader",
    "decode",
    "encode",
    "encode_into",
    "frame_of",
    "header",
    "vni_of",
]

VXLAN_LEN: Final = 8
VXLAN_PORT: Final = 4789  # IANA-assigned UDP destination port (RFC 7348 §5)
VNI_MAX: Final = 0xFFFFFF  # 24 bits

_HDR = struct.Struct("!B3xI")  # flags, reserved, VNI(24) | reserved(8)


class VxlanFlags(enum.IntFlag):
    """The flags byte (RFC 7348 §5).  Only I is defined; the rest are reserved."""

    NONE = 0
    I = 0x08  # noqa: E741 - the RFC's name for the "VNI valid" flag


@dataclass(frozen=True, slots=True)
class VxlanHeader:
    """A VXLAN header.  ``flags`` is the whole flags byte as sent or received
    (reserved bits included); it must have :attr:`VxlanFlags.I` set to be valid."""

    vni: int
    flags: int = VxlanFlags.I.value


def vni_of(view: Buffer) -> int:
    """The VNI of the VXLAN header at the start of ``view``, without building a header
    object (the hot path).

    Raises :class:`MalformedPacket` with TOO_SHORT (fewer than 8 bytes) or
    BAD_TUNNEL_HEADER (I flag clear).  Reserved bits are ignored.
    """
    if len(view) < VXLAN_LEN:
        raise MalformedPacket(DropReason.TOO_SHORT, f"vxlan header needs 8 bytes, got {len(view)}")
    if not view[0] & VxlanFlags.I:
        raise MalformedPacket(DropReason.BAD_TUNNEL_HEADER, f"vxlan I flag clear: {view[0]:#04x}")
    return (view[4] << 16) | (view[5] << 8) | view[6]


def decode(view: Buffer) -> VxlanHeader:
    """Decode the VXLAN header at the start of ``view`` (the inner frame follows it).
    Same checks and exceptions as :func:`vni_of`."""
    return VxlanHeader(vni=vni_of(view), flags=view[0])


def encode_into(buf: bytearray | memoryview, offset: int, hdr: VxlanHeader) -> int:
    """Write ``hdr`` at ``buf[offset:]``; reserved fields are written as zero.
    Returns the number of bytes written (8).  Raises ValueError for a VNI or flags
    value out of range, or a buffer too small."""
    if not 0 <= hdr.vni <= VNI_MAX:
        raise ValueError(f"vxlan vni out of range: {hdr.vni}")
    if not 0 <= hdr.flags <= 0xFF:
        raise ValueError(f"vxlan flags out of range: {hdr.flags}")
    if len(buf) - offset < VXLAN_LEN or offset < 0:
        raise ValueError("buffer too small for vxlan header")
    _HDR.pack_into(buf, offset, hdr.flags, hdr.vni << 8)
    return VXLAN_LEN


def encode(hdr: VxlanHeader) -> bytes:
    """The header as 8 bytes."""
    buf = bytearray(VXLAN_LEN)
    encode_into(buf, 0, hdr)
    return bytes(buf)


def header(vni: int) -> bytes:
    """``encode(VxlanHeader(vni))`` without the object or the range checks (the
    transmit hot path; ``vni`` is a valid VNI): the I flag and the 24-bit VNI."""
    return _HDR.pack(VxlanFlags.I.value, vni << 8)


def frame_of(view: Buffer) -> tuple[int, int, int]:
    """(VNI, offset of the inner frame, 0): :func:`decode` without the object (the
    receive hot path), in the shape of :func:`sclp.wire.geneve.frame_of` (VXLAN carries
    no MSS, hence the 0).  Same checks and exceptions as :func:`vni_of`."""
    if len(view) < VXLAN_LEN:
        raise MalformedPacket(DropReason.TOO_SHORT, f"vxlan header needs 8 bytes, got {len(view)}")
    if not view[0] & 0x08:  # VxlanFlags.I
        raise MalformedPacket(DropReason.BAD_TUNNEL_HEADER, f"vxlan I flag clear: {view[0]:#04x}")
    return (view[4] << 16) | (view[5] << 8) | view[6], VXLAN_LEN, 0

"""Geneve header codec (RFC 8926 §3) and the project's MSS option (sclp-spec §6).

Geneve is carried over UDP 6081 as a classic tunnel and, *(extension)*, over SCLP;
unlike VXLAN it has room for TLV options, which this project uses to tell the receiver
the sender's MSS so that the reassembled inner frame can be handed to the TAP as a GSO
frame with the right segment size.

Base header (RFC 8926 §3.4)::

    0      Ver(2) | Opt Len(6)          1  O(1) | C(1) | Rsvd(6)
    2-3    Protocol Type                4-6  VNI (24 bits)   7  reserved
    8-     options, Opt Len * 4 bytes (at most 252)

Option (RFC 8926 §3.5)::

    0-1    Option Class   2  Type (high bit = critical)   3  R R R | Length(5)
    4-     data, Length * 4 bytes (at most 124)

Reserved bits are ignored on receipt.  :func:`decode` parses options without
interpreting them; :func:`frame_of`, the data path's receive step, drops a packet with
a critical option outside the MSS option's class (RFC 8926 §3.5.1).  :func:`header` and
:func:`frame_of` are :func:`encode` and :func:`decode` without header objects, for the
hot path (tests/wire/test_geneve.py holds them equal).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from sclp.wire.checksum import Buffer
from sclp.wire.errors import DropReason, MalformedPacket
from sclp.wire.ethernet import ETHERTYPE_TEB

__all__ = [
    "GENEVE_BASE_LEN",
    "GENEVE_OPTIONS_MAX_LEN",
    "GENEVE_OPTION_DATA_MAX_LEN",
    "GENEVE_OPTION_HLEN",
    "GENEVE_PORT",
    "GENEVE_VERSION",
    "MSS_OPTION_CLASS",
    "MSS_OPTION_TYPE",
    "GeneveFlags",
    "GeneveHeader",
    "GeneveOption",
    "decode",
    "encode",
    "encode_into",
    "find_mss",
    "frame_of",
    "header",
    "mss_option",
]

GENEVE_PORT: Final = 6081  # IANA-assigned UDP destination port (RFC 8926 §3.3)
GENEVE_BASE_LEN: Final = 8
GENEVE_VERSION: Final = 0
GENEVE_OPTIONS_MAX_LEN: Final = 252  # Opt Len is 6 bits of 4-byte words
GENEVE_OPTION_HLEN: Final = 4
GENEVE_OPTION_DATA_MAX_LEN: Final = 124  # option Length is 5 bits of 4-byte words

_VNI_MAX: Final = 0xFFFFFF
_CRITICAL_TYPE_BIT: Final = 0x80

# sclp-spec §6 (extension): the sender's MSS, in RFC 8926 §7.2's experimental class
# range (0xFF00-0xFFFF).  Not critical: a receiver that ignores it loses nothing but the
# hint.  Data: MSS (16 bits) followed by 16 reserved bits.
MSS_OPTION_CLASS: Final = 0xFFF0
MSS_OPTION_TYPE: Final = 0x01
_MSS_DATA = struct.Struct("!H2x")

_BASE = struct.Struct("!BBHI")  # ver|optlen, flags, protocol type, VNI(24)|reserved(8)
_OPT = struct.Struct("!HBB")  # class, type, rsvd(3)|length(5)
_MSS_OPT = struct.Struct("!HBBH2x")  # the MSS option whole: class, type, length 1, MSS


class GeneveFlags(enum.IntFlag):
    """Byte 1 of the base header (RFC 8926 §3.4); the low 6 bits are reserved."""

    NONE = 0
    CRITICAL = 0x40  # C: one or more options have the critical bit set
    OAM = 0x80  # O: control packet, not to be forwarded to the tenant


@dataclass(frozen=True, slots=True)
class GeneveOption:
    """One option TLV.  ``data`` must be a multiple of 4 bytes, at most 124."""

    opt_class: int
    opt_type: int
    data: bytes = b""

    @property
    def critical(self) -> bool:
        """RFC 8926 §3.5: the high bit of the type marks an option the receiver must
        understand (or drop the packet)."""
        return bool(self.opt_type & _CRITICAL_TYPE_BIT)

    @property
    def length(self) -> int:
        """Bytes on the wire, option header included."""
        return GENEVE_OPTION_HLEN + len(self.data)


@dataclass(frozen=True, slots=True)
class GeneveHeader:
    """A Geneve header with its options.  ``critical`` is the C flag as received; on
    encode it is also set whenever an option is critical (RFC 8926 §3.4 requires it)."""

    vni: int
    protocol_type: int = ETHERTYPE_TEB
    options: tuple[GeneveOption, ...] = ()
    oam: bool = False
    critical: bool = False

    @property
    def header_len(self) -> int:
        """Base header plus options: where the payload (inner frame) starts."""
        return GENEVE_BASE_LEN + sum(GENEVE_OPTION_HLEN + len(o.data) for o in self.options)


def _decode_options(view: Buffer, start: int, end: int) -> tuple[GeneveOption, ...]:
    options = []
    offset = start
    # Opt Len and option lengths are both in 4-byte words, so an option header (4
    # bytes) always fits before ``end``; only option data can overrun it.
    while offset < end:
        opt_class, opt_type, rsvd_len = _OPT.unpack_from(view, offset)
        data_start = offset + GENEVE_OPTION_HLEN
        data_end = data_start + (rsvd_len & 0x1F) * 4
        if data_end > end:
            raise MalformedPacket(
                DropReason.BAD_TUNNEL_HEADER,
                f"geneve option at offset {offset} runs {data_end - end} bytes past opt len",
            )
        options.append(GeneveOption(opt_class, opt_type, bytes(view[data_start:data_end])))
        offset = data_end
    return tuple(options)


def decode(view: Buffer) -> GeneveHeader:
    """Decode the Geneve header and options at the start of ``view``.

    Raises :class:`MalformedPacket` with TOO_SHORT (base header or options truncated),
    BAD_VERSION (version != 0) or BAD_TUNNEL_HEADER (options do not exactly fill
    Opt Len).  The payload starts at ``hdr.header_len``.
    """
    n = len(view)
    if n < GENEVE_BASE_LEN:
        raise MalformedPacket(DropReason.TOO_SHORT, f"geneve header needs 8 bytes, got {n}")
    ver_optlen, flags, protocol_type, word = _BASE.unpack_from(view, 0)
    version = ver_optlen >> 6
    if version != GENEVE_VERSION:
        raise MalformedPacket(DropReason.BAD_VERSION, f"geneve version {version}, expected 0")
    end = GENEVE_BASE_LEN + (ver_optlen & 0x3F) * 4
    if n < end:
        raise MalformedPacket(DropReason.TOO_SHORT, f"geneve header of {end} bytes, got {n}")
    return GeneveHeader(
        vni=word >> 8,
        protocol_type=protocol_type,
        options=_decode_options(view, GENEVE_BASE_LEN, end),
        oam=bool(flags & GeneveFlags.OAM),
        critical=bool(flags & GeneveFlags.CRITICAL),
    )


def encode_into(buf: bytearray | memoryview, offset: int, hdr: GeneveHeader) -> int:
    """Write ``hdr`` and its options at ``buf[offset:]``; reserved fields are zero and C
    is set if ``hdr.critical`` or any option is critical.  Returns the bytes written
    (``hdr.header_len``).  Raises ValueError for fields that do not fit (VNI, protocol
    type, option class/type, option data not a multiple of 4 or over 124 bytes, options
    over 252 bytes in all) or a buffer too small."""
    hlen = hdr.header_len
    opt_len = hlen - GENEVE_BASE_LEN
    if opt_len > GENEVE_OPTIONS_MAX_LEN:
        raise ValueError(f"geneve options are {opt_len} bytes, at most 252 allowed")
    if not 0 <= hdr.vni <= _VNI_MAX:
        raise ValueError(f"geneve vni out of range: {hdr.vni}")
    if offset < 0 or len(buf) - offset < hlen:
        raise ValueError("buffer too small for geneve header")
    flags = 0
    if hdr.oam:
        flags |= GeneveFlags.OAM
    if hdr.critical or any(o.critical for o in hdr.options):
        flags |= GeneveFlags.CRITICAL
    try:
        _BASE.pack_into(buf, offset, opt_len >> 2, flags, hdr.protocol_type, hdr.vni << 8)
        pos = offset + GENEVE_BASE_LEN
        for opt in hdr.options:
            dlen = len(opt.data)
            if dlen % 4 or dlen > GENEVE_OPTION_DATA_MAX_LEN:
                raise ValueError(f"geneve option data must be a multiple of 4, <= 124: {dlen}")
            _OPT.pack_into(buf, pos, opt.opt_class, opt.opt_type, dlen >> 2)
            pos += GENEVE_OPTION_HLEN
            buf[pos : pos + dlen] = opt.data
            pos += dlen
    except struct.error as exc:
        raise ValueError(f"geneve field out of range: {exc}") from None
    return hlen


def encode(hdr: GeneveHeader) -> bytes:
    """The header and its options as bytes."""
    buf = bytearray(hdr.header_len)
    encode_into(buf, 0, hdr)
    return bytes(buf)


def mss_option(mss: int) -> GeneveOption:
    """The sclp-spec §6 option carrying the sender's inner TCP MSS (1..65535)."""
    if not 0 < mss <= 0xFFFF:
        raise ValueError(f"mss out of range: {mss}")
    return GeneveOption(MSS_OPTION_CLASS, MSS_OPTION_TYPE, _MSS_DATA.pack(mss))


def find_mss(hdr: GeneveHeader) -> int | None:
    """The MSS from the first well-formed MSS option of ``hdr``, or None.  An MSS option
    with the wrong data length or an MSS of 0 is skipped, as an option we do not
    understand (it is not critical)."""
    for opt in hdr.options:
        if (
            opt.opt_class == MSS_OPTION_CLASS
            and opt.opt_type == MSS_OPTION_TYPE
            and len(opt.data) == _MSS_DATA.size
        ):
            (mss,) = _MSS_DATA.unpack(opt.data)
            if mss:
                return int(mss)
    return None


def header(vni: int, mss: int = 0) -> bytes:
    """``encode(GeneveHeader(vni))`` — with ``options=(mss_option(mss),)`` when
    ``mss`` is given — without objects or range checks (the transmit hot path): the
    base header, version 0, no flags, Ethernet payload."""
    if not mss:
        return _BASE.pack(0, 0, ETHERTYPE_TEB, vni << 8)
    return _BASE.pack(2, 0, ETHERTYPE_TEB, vni << 8) + _MSS_OPT.pack(
        MSS_OPTION_CLASS, MSS_OPTION_TYPE, 1, mss
    )


def frame_of(view: Buffer) -> tuple[int, int, int]:
    """(VNI, offset of the inner Ethernet frame, the MSS option's value or 0) of the
    Geneve packet at the start of ``view``: the receive hot path.  Version 0 without
    options carrying Ethernet (what this project and most senders emit) is read with
    one unpack; anything else goes through :func:`decode`.

    Raises :class:`MalformedPacket` as :func:`decode` does, and BAD_TUNNEL_HEADER for
    a payload that is not Ethernet or a critical option outside the MSS option's class
    (RFC 8926 §3.5.1: a critical option the receiver does not understand means drop).
    """
    if len(view) >= GENEVE_BASE_LEN:
        ver_optlen, _flags, proto, vni_word = _BASE.unpack_from(view, 0)
        if ver_optlen == 0 and proto == ETHERTYPE_TEB:
            return vni_word >> 8, GENEVE_BASE_LEN, 0
    hdr = decode(view)
    if hdr.protocol_type != ETHERTYPE_TEB:
        raise MalformedPacket(
            DropReason.BAD_TUNNEL_HEADER,
            f"geneve protocol {hdr.protocol_type:#06x} is not Ethernet",
        )
    if any(opt.critical for opt in hdr.options if opt.opt_class != MSS_OPTION_CLASS):
        raise MalformedPacket(DropReason.BAD_TUNNEL_HEADER, "unknown critical geneve option")
    return hdr.vni, hdr.header_len, find_mss(hdr) or 0

"""The tunnel formats the endpoint speaks, as one registry (design.md: a new format
touches its codec and one entry here).

A :class:`TunnelFormat` knows how to write its header in front of an inner frame and
how to find the VNI and the inner frame in a received payload.  How the encapsulated
payload crosses the underlay (one UDP datagram per frame, SCLP segments, GRE,
pseudo-TCP) is the transport's business, not the format's.  Nothing here does I/O.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from sclp.wire import geneve, nvgre, stt, vxlan
from sclp.wire.checksum import Buffer
from sclp.wire.errors import DropReason, MalformedPacket
from sclp.wire.ethernet import ETHERTYPE_TEB

_VXLAN = struct.Struct("!II")  # flags(8)|reserved(24), VNI(24)|reserved(8)
_GENEVE_BASE = struct.Struct("!BBHI")
_GENEVE_MSS_OPT = struct.Struct("!HBBH2x")  # class, type, length(5), mss, reserved


class Decapsulated(NamedTuple):
    """A received payload taken apart: the VNI, where the inner frame starts, and the
    sender's MSS when the format carries one (Geneve option, STT header), else 0."""

    vni: int
    inner_offset: int
    mss: int = 0


def vxlan_header(vni: int) -> bytes:
    """RFC 7348 §5: flags with I set, 24-bit VNI."""
    return _VXLAN.pack(0x08 << 24, vni << 8)


def vxlan_decapsulate(payload: Buffer) -> Decapsulated:
    return Decapsulated(vxlan.vni_of(payload), vxlan.VXLAN_LEN)


def geneve_header(vni: int, mss: int = 0) -> bytes:
    """RFC 8926 §3.4 with no options, or with the project's MSS option (spec §6)
    when ``mss`` is given (Geneve over SCLP tells the receiver the sender's MSS)."""
    if not mss:
        return _GENEVE_BASE.pack(0, 0, ETHERTYPE_TEB, vni << 8)
    return _GENEVE_BASE.pack(2, 0, ETHERTYPE_TEB, vni << 8) + _GENEVE_MSS_OPT.pack(
        geneve.MSS_OPTION_CLASS, geneve.MSS_OPTION_TYPE, 1, mss
    )


def geneve_decapsulate(payload: Buffer) -> Decapsulated:
    # Hot path: version 0, no options, Ethernet payload (what we and most senders
    # emit) is read with one unpack; everything else goes through the full codec.
    if len(payload) >= geneve.GENEVE_BASE_LEN:
        ver_optlen, _flags, proto, vni_word = _GENEVE_BASE.unpack_from(payload, 0)
        if ver_optlen == 0 and proto == ETHERTYPE_TEB:
            return Decapsulated(vni_word >> 8, geneve.GENEVE_BASE_LEN, 0)
    hdr = geneve.decode(payload)
    if hdr.protocol_type != ETHERTYPE_TEB:
        raise MalformedPacket(
            DropReason.BAD_TUNNEL_HEADER,
            f"geneve protocol {hdr.protocol_type:#06x} is not Ethernet",
        )
    if any(opt.critical for opt in hdr.options if opt.opt_class != geneve.MSS_OPTION_CLASS):
        # RFC 8926 §3.5.1: a critical option we do not understand means drop.
        raise MalformedPacket(DropReason.BAD_TUNNEL_HEADER, "unknown critical geneve option")
    return Decapsulated(hdr.vni, hdr.header_len, geneve.find_mss(hdr) or 0)


def nvgre_header(vni: int, flow_id: int) -> bytes:
    return nvgre.encode(nvgre.NvgreHeader(vsid=vni, flow_id=flow_id & 0xFF))


_NVGRE_FAST = struct.Struct("!HHI")
_NVGRE_K_ONLY = 0x2000  # flags|version word of an NVGRE header: K set, all else 0


def nvgre_decapsulate(payload: Buffer) -> Decapsulated:
    if len(payload) >= nvgre.NVGRE_LEN:
        word, proto, key = _NVGRE_FAST.unpack_from(payload, 0)
        if word == _NVGRE_K_ONLY and proto == ETHERTYPE_TEB:
            return Decapsulated(key >> 8, nvgre.NVGRE_LEN, 0)
    return Decapsulated(nvgre.decode(payload).vsid, nvgre.NVGRE_LEN)


def stt_decapsulate(payload: Buffer) -> Decapsulated:
    hdr = stt.decode(payload)
    if hdr.context_id >= 1 << 24:
        raise MalformedPacket(DropReason.UNKNOWN_VNI, f"stt context {hdr.context_id:#x}")
    return Decapsulated(hdr.context_id, stt.STT_HLEN, hdr.mss)


# SCLP destination port -> the tunnel format it carries (sclp-spec §2).
SCLP_VXLAN_PORT: Final = 4789
SCLP_GENEVE_PORT: Final = 6081
SCLP_PORT_OF: Final = {"vxlan-sclp": SCLP_VXLAN_PORT, "geneve-sclp": SCLP_GENEVE_PORT}
PROTOCOL_OF_SCLP_PORT: Final = {port: proto for proto, port in SCLP_PORT_OF.items()}


def decapsulate(protocol: str, payload: Buffer) -> Decapsulated:
    """Find the VNI and inner frame of a payload of ``protocol``'s tunnel format.
    Raises :class:`MalformedPacket` (BAD_TUNNEL_HEADER, TOO_SHORT, ...)."""
    if protocol in ("vxlan", "vxlan-sclp"):
        return vxlan_decapsulate(payload)
    if protocol in ("geneve", "geneve-sclp"):
        return geneve_decapsulate(payload)
    if protocol == "nvgre":
        return nvgre_decapsulate(payload)
    if protocol == "stt":
        return stt_decapsulate(payload)
    raise ValueError(f"unknown protocol {protocol!r}")


def overhead(protocol: str, ip_version: int = 4) -> int:
    """Outer bytes a classic tunnel adds to an inner frame (IP + L4 + tunnel header +
    the inner Ethernet header), for the VM MTU that avoids fragmentation."""
    ip = 20 if ip_version == 4 else 40
    return {
        "vxlan": ip + 8 + vxlan.VXLAN_LEN + 14,
        "geneve": ip + 8 + geneve.GENEVE_BASE_LEN + 14,
        "nvgre": ip + nvgre.NVGRE_LEN + 14,
    }[protocol]

"""Ethernet II header codec with 802.1Q / 802.1ad VLAN tags (IEEE 802.3 §3.2.6,
IEEE 802.1Q §9).

The tunnels carry Ethernet frames; the endpoint reads the MACs (FDB learning and
lookup) and the EtherType after any VLAN tags (to find the inner IP header).

Layout::

    0-5 destination MAC   6-11 source MAC
    12-13 EtherType, or a TPID (0x8100 / 0x88A8) followed by a 2-byte TCI and the next
    EtherType/TPID; at most :data:`MAX_VLAN_TAGS` tags are accepted.

Round trip: decoding accepts either TPID at any depth, but :func:`encode_into` writes
the 802.1ad convention (0x88A8 for every outer tag, 0x8100 for the innermost), so a
frame tagged 0x8100/0x8100 re-encodes as 0x88A8/0x8100.  The TCIs are kept exactly.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from sclp.wire.checksum import Buffer
from sclp.wire.errors import DropReason, MalformedPacket

__all__ = [
    "BROADCAST_MAC",
    "ETHERTYPE_ARP",
    "ETHERTYPE_IPV4",
    "ETHERTYPE_IPV6",
    "ETHERTYPE_QINQ",
    "ETHERTYPE_TEB",
    "ETHERTYPE_VLAN",
    "ETH_ALEN",
    "ETH_HLEN",
    "MAX_VLAN_TAGS",
    "VLAN_TAG_LEN",
    "EthernetHeader",
    "decode",
    "encode",
    "encode_into",
    "is_multicast",
    "mac_from_str",
    "mac_to_str",
]

ETH_ALEN: Final = 6
ETH_HLEN: Final = 14  # untagged header
VLAN_TAG_LEN: Final = 4
MAX_VLAN_TAGS: Final = 4  # more nested tags than this is treated as malformed

ETHERTYPE_IPV4: Final = 0x0800
ETHERTYPE_ARP: Final = 0x0806
ETHERTYPE_TEB: Final = 0x6558  # Transparent Ethernet Bridging (GRE/NVGRE payload type)
ETHERTYPE_VLAN: Final = 0x8100  # 802.1Q C-tag TPID
ETHERTYPE_IPV6: Final = 0x86DD
ETHERTYPE_QINQ: Final = 0x88A8  # 802.1ad S-tag TPID

BROADCAST_MAC: Final = b"\xff" * 6

_MACS_TYPE = struct.Struct("!6s6sH")
_U16 = struct.Struct("!H")
_TAG = struct.Struct("!HH")  # TPID, TCI
_TPIDS: Final = frozenset((ETHERTYPE_VLAN, ETHERTYPE_QINQ))
_HEX: Final = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class EthernetHeader:
    """An Ethernet II header.  ``vlan_tags`` are the 16-bit TCIs (PCP|DEI|VID), outermost
    first; ``ethertype`` is the one after the tags (a value below 0x0600 is an 802.3
    length field and is reported as-is)."""

    dst: bytes
    src: bytes
    ethertype: int
    vlan_tags: tuple[int, ...] = ()

    @property
    def header_len(self) -> int:
        return ETH_HLEN + VLAN_TAG_LEN * len(self.vlan_tags)


def decode(view: Buffer) -> EthernetHeader:
    """Decode the Ethernet header (and VLAN tags) at the start of ``view``.
    Raises :class:`MalformedPacket`: TOO_SHORT (header or a tag truncated), MALFORMED
    (more than :data:`MAX_VLAN_TAGS` tags)."""
    n = len(view)
    if n < ETH_HLEN:
        raise MalformedPacket(DropReason.TOO_SHORT, f"ethernet header needs 14 bytes, got {n}")
    dst, src, ethertype = _MACS_TYPE.unpack_from(view, 0)
    if ethertype not in _TPIDS:
        return EthernetHeader(dst, src, ethertype)
    tags: list[int] = []
    off = 12
    while ethertype in _TPIDS:
        if len(tags) == MAX_VLAN_TAGS:
            raise MalformedPacket(DropReason.MALFORMED, f"more than {MAX_VLAN_TAGS} vlan tags")
        if n < off + VLAN_TAG_LEN + 2:
            raise MalformedPacket(DropReason.TOO_SHORT, "truncated vlan tag")
        (tci,) = _U16.unpack_from(view, off + 2)
        (ethertype,) = _U16.unpack_from(view, off + VLAN_TAG_LEN)
        tags.append(tci)
        off += VLAN_TAG_LEN
    return EthernetHeader(dst, src, ethertype, tuple(tags))


def encode_into(buf: bytearray | memoryview, offset: int, hdr: EthernetHeader) -> int:
    """Write ``hdr`` at ``buf[offset:]``; returns the header length.  Raises ValueError
    for MACs not 6 bytes, out-of-range fields or a buffer too small."""
    if len(hdr.dst) != ETH_ALEN or len(hdr.src) != ETH_ALEN:
        raise ValueError("MAC addresses must be 6 bytes")
    hlen = hdr.header_len
    if len(buf) - offset < hlen:
        raise ValueError("buffer too small for ethernet header")
    tags = hdr.vlan_tags
    try:
        _MACS_TYPE.pack_into(
            buf, offset, hdr.dst, hdr.src, hdr.ethertype if not tags else ETHERTYPE_QINQ
        )
        off = offset + 12
        last = len(tags) - 1
        for i, tci in enumerate(tags):
            _TAG.pack_into(buf, off, ETHERTYPE_VLAN if i == last else ETHERTYPE_QINQ, tci)
            off += VLAN_TAG_LEN
        if tags:
            _U16.pack_into(buf, off, hdr.ethertype)
    except struct.error as exc:
        raise ValueError(f"ethernet field out of range: {exc}") from None
    return hlen


def encode(hdr: EthernetHeader) -> bytes:
    buf = bytearray(hdr.header_len)
    encode_into(buf, 0, hdr)
    return bytes(buf)


def is_multicast(mac: Buffer) -> bool:
    """True if the I/G (group) bit is set: multicast and broadcast destinations."""
    return bool(mac[0] & 1)


def mac_from_str(text: str) -> bytes:
    """``"02:00:00:00:00:01"`` (or with ``-`` separators) -> 6 bytes.
    Raises ValueError for anything else."""
    parts = text.replace("-", ":").split(":")
    if len(parts) != ETH_ALEN or not all(1 <= len(p) <= 2 and _HEX.issuperset(p) for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)


def mac_to_str(mac: Buffer) -> str:
    """6 bytes -> ``"02:00:00:00:00:01"`` (lower-case hex)."""
    return bytes(mac).hex(":")

"""``struct virtio_net_hdr``: the 10-byte metadata a TAP with ``IFF_VNET_HDR`` puts
before every frame (Linux ``include/uapi/linux/virtio_net.h``; virtio spec v1.2 §5.1.6).

It carries the offload contract with the kernel: a TSO/USO frame arrives as one large
frame with ``gso_type``/``gso_size``, and a frame with ``NEEDS_CSUM`` has a partial
checksum to finish from ``csum_start`` and store at ``csum_start + csum_offset``.

Byte order: the fields are in the device's byte order.  A TAP uses native order unless
``TUNSETVNETBE`` is set, and modern virtio is little-endian; this project runs on
x86_64 and never sets BE, so the layout is explicitly little-endian (``<``) rather than
native (``=``).  Only the legacy 10-byte form is handled (the 12-byte form with
``num_buffers`` is used only with ``VIRTIO_NET_F_MRG_RXBUF``, i.e. ``TUNSETVNETHDRSZ``
12, which the TAP adapter does not set).

Layout::

    0 flags   1 gso_type   2-3 hdr_len   4-5 gso_size   6-7 csum_start   8-9 csum_offset
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from sclp.wire.checksum import Buffer
from sclp.wire.errors import DropReason, MalformedPacket

__all__ = [
    "DATA_VALID",
    "GSO_ECN",
    "GSO_NONE",
    "GSO_TCPV4",
    "GSO_TCPV6",
    "GSO_UDP",
    "GSO_UDP_L4",
    "NEEDS_CSUM",
    "VIRTIO_NET_HDR_F_DATA_VALID",
    "VIRTIO_NET_HDR_F_NEEDS_CSUM",
    "VIRTIO_NET_HDR_GSO_ECN",
    "VIRTIO_NET_HDR_GSO_NONE",
    "VIRTIO_NET_HDR_GSO_TCPV4",
    "VIRTIO_NET_HDR_GSO_TCPV6",
    "VIRTIO_NET_HDR_GSO_UDP",
    "VIRTIO_NET_HDR_GSO_UDP_L4",
    "VNET_HDR",
    "VNET_HDR_LEN",
    "VNET_HDR_NONE",
    "GsoType",
    "VirtioNetFlags",
    "VirtioNetHeader",
    "decode",
    "encode",
    "encode_into",
]

VNET_HDR_LEN: Final = 10

VNET_HDR: Final = struct.Struct("<BBHHHH")
"""The header as one struct, for the data path's hot path (``VNET_HDR.pack``,
``unpack_from``, ``pack_into``: no header object per frame): flags, gso_type,
hdr_len, gso_size, csum_start, csum_offset."""
_HDR = VNET_HDR


class VirtioNetFlags(enum.IntFlag):
    NONE = 0
    NEEDS_CSUM = 1  # VIRTIO_NET_HDR_F_NEEDS_CSUM: checksum from csum_start is partial
    DATA_VALID = 2  # VIRTIO_NET_HDR_F_DATA_VALID: checksum already verified (rx only)


class GsoType(enum.IntEnum):
    """``gso_type`` without the ECN bit (``VIRTIO_NET_HDR_GSO_*``)."""

    NONE = 0
    TCPV4 = 1
    UDP = 3  # UFO (IPv4/IPv6 fragmentation offload); deprecated in Linux
    TCPV6 = 4
    UDP_L4 = 5  # USO: UDP segmentation (Linux >= 6.2)


VIRTIO_NET_HDR_F_NEEDS_CSUM: Final = 1
VIRTIO_NET_HDR_F_DATA_VALID: Final = 2
VIRTIO_NET_HDR_GSO_NONE: Final = 0
VIRTIO_NET_HDR_GSO_TCPV4: Final = 1
VIRTIO_NET_HDR_GSO_UDP: Final = 3
VIRTIO_NET_HDR_GSO_TCPV6: Final = 4
VIRTIO_NET_HDR_GSO_UDP_L4: Final = 5
VIRTIO_NET_HDR_GSO_ECN: Final = 0x80  # OR-ed into gso_type: the TCP segments carry CWR

# Short aliases (same values): sclp.wire.virtio_net.NEEDS_CSUM, GSO_TCPV4, ...
NEEDS_CSUM: Final = VIRTIO_NET_HDR_F_NEEDS_CSUM
DATA_VALID: Final = VIRTIO_NET_HDR_F_DATA_VALID
GSO_NONE: Final = VIRTIO_NET_HDR_GSO_NONE
GSO_TCPV4: Final = VIRTIO_NET_HDR_GSO_TCPV4
GSO_UDP: Final = VIRTIO_NET_HDR_GSO_UDP
GSO_TCPV6: Final = VIRTIO_NET_HDR_GSO_TCPV6
GSO_UDP_L4: Final = VIRTIO_NET_HDR_GSO_UDP_L4
GSO_ECN: Final = VIRTIO_NET_HDR_GSO_ECN


@dataclass(frozen=True, slots=True)
class VirtioNetHeader:
    """A ``virtio_net_hdr``.  Fields are plain ints as on the wire: ``flags`` is a
    :class:`VirtioNetFlags` bit set, ``gso_type`` a :class:`GsoType` value possibly
    OR-ed with :data:`GSO_ECN`.  ``hdr_len`` is a hint (Ethernet+IP+L4 header length)
    that guests may leave 0; ``gso_size`` is the L4 payload per segment."""

    flags: int = 0
    gso_type: int = 0
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    @property
    def needs_csum(self) -> bool:
        return bool(self.flags & NEEDS_CSUM)

    @property
    def gso_kind(self) -> int:
        """``gso_type`` without the ECN bit."""
        return self.gso_type & ~GSO_ECN


def decode(view: Buffer) -> VirtioNetHeader:
    """Decode the 10-byte header at the start of ``view``.  Any field values are
    accepted (the adapter decides what it supports).  Raises :class:`MalformedPacket`
    TOO_SHORT under 10 bytes."""
    if len(view) < VNET_HDR_LEN:
        raise MalformedPacket(
            DropReason.TOO_SHORT, f"virtio_net_hdr needs 10 bytes, got {len(view)}"
        )
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = _HDR.unpack_from(view, 0)
    return VirtioNetHeader(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def encode_into(buf: bytearray | memoryview, offset: int, hdr: VirtioNetHeader) -> int:
    """Write ``hdr`` at ``buf[offset:]``; returns 10.  Raises ValueError for
    out-of-range fields or a buffer too small."""
    if len(buf) - offset < VNET_HDR_LEN:
        raise ValueError("buffer too small for virtio_net_hdr")
    try:
        _HDR.pack_into(
            buf,
            offset,
            hdr.flags,
            hdr.gso_type,
            hdr.hdr_len,
            hdr.gso_size,
            hdr.csum_start,
            hdr.csum_offset,
        )
    except struct.error as exc:
        raise ValueError(f"virtio_net_hdr field out of range: {exc}") from None
    return VNET_HDR_LEN


def encode(hdr: VirtioNetHeader) -> bytes:
    buf = bytearray(VNET_HDR_LEN)
    encode_into(buf, 0, hdr)
    return bytes(buf)


VNET_HDR_NONE: Final = bytes(VNET_HDR_LEN)
"""A header saying "plain frame: no GSO, checksum complete" (all zero), precomputed:
most frames delivered to a VM carry it."""

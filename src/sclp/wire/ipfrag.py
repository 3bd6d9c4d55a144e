"""IPv4 fragmentation of a whole Ethernet frame (RFC 791 §3.2, "Fragmentation").

What a router does with a packet without DF that is larger than the next hop
carries: the data is cut at multiples of 8 bytes, each fragment gets a copy of the
IP header with its offset, MF on all but the last (and on the last too if the packet
was a fragment itself with MF set), total length and header checksum rewritten.  The
endpoint uses it on the *inner* packet, so that its outer packets never need
fragmenting (RFC 7348 §4.3).  Packets with IP options are not fragmented here (their
copy rules differ per option): :func:`fragment_ipv4` returns ``None`` for them.  Pure.
"""

from __future__ import annotations

import struct
from typing import Final

from sclp.wire.checksum import Buffer, internet_checksum

__all__ = ["fragment_ipv4"]

_MF: Final = 0x2000
_OFFSET: Final = 0x1FFF


def fragment_ipv4(frame: Buffer, l3: int, mtu: int) -> list[bytes] | None:
    """The frames (the L2 bytes before ``l3`` copied into each) of the IPv4 packet at
    ``frame[l3:]`` cut into fragments of at most ``mtu`` bytes; ``None`` if it has IP
    options, a bad header, or ``mtu`` leaves no room for 8 bytes of data."""
    if len(frame) < l3 + 20 or frame[l3] != 0x45:
        return None
    total = struct.unpack_from("!H", frame, l3 + 2)[0]
    if total < 20 or len(frame) < l3 + total:
        return None
    step = (mtu - 20) & ~7
    if step <= 0:
        return None
    l2 = bytes(frame[:l3])
    header = bytearray(frame[l3 : l3 + 20])
    flags_offset = struct.unpack_from("!H", header, 6)[0]
    base = flags_offset & _OFFSET
    last_mf = flags_offset & _MF
    data = memoryview(frame)[l3 + 20 : l3 + total]
    out: list[bytes] = []
    for start in range(0, len(data), step):
        chunk = data[start : start + step]
        more = _MF if start + step < len(data) else last_mf
        struct.pack_into("!H", header, 2, 20 + len(chunk))
        struct.pack_into("!H", header, 6, (flags_offset & 0x4000) | more | (base + start // 8))
        struct.pack_into("!H", header, 10, 0)
        struct.pack_into("!H", header, 10, internet_checksum(header))
        out.append(l2 + bytes(header) + bytes(chunk))
    return out

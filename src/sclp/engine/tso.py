"""Software TCP segmentation (what a NIC's TSO does) and virtio partial-checksum
completion.

Why: a TAP with ``IFF_VNET_HDR`` and TSO enabled hands the endpoint TCP frames of up to
~64 KB (virtio-net ``gso_type`` TCPV4/TCPV6, ``gso_size`` = MSS).  The classic tunnels
(VXLAN, Geneve, NVGRE over UDP/GRE) carry one MTU-sized inner frame per outer packet,
so those paths must cut the large frame into wire-sized TCP segments exactly as a NIC
would: per segment the L2/L3/L4 headers are copied and the IPv4 total length and ID
(RFC 791 §3.1), the IPv6 payload length (RFC 8200 §3), the TCP sequence number, the
flags and the TCP checksum over the IP pseudo-header (RFC 9293 §3.1) are fixed.
Flags follow the Linux GSO/NIC convention: FIN and PSH only on the last segment, CWR
only on the first (RFC 3168 §6.1.2: CWR marks the first new data after a window
reduction).

Strategy: one pass of NumPy (:func:`sclp.wire.checksum.rows_ones_sums`) sums the
payload chunks, which lie at stride ``mss`` in the original frame; every per-segment
header sum is then the template's sum plus the few changed words (incremental
checksum, RFC 1624 style arithmetic).  Each output segment is one ``bytearray``
(template + payload slice, no further reallocation) whose changed fields are written
with two ``Struct.pack_into`` calls.

:func:`complete_checksum` finishes a virtio ``NEEDS_CSUM`` frame: the L4 checksum field
then holds the pseudo-header sum and the sender expects the receiver of the frame (NIC
or us) to fold in everything from ``csum_start`` to the end of the packet.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from sclp.wire import ipv4, ipv6, tcp
from sclp.wire.checksum import Buffer, ones_sum, rows_ones_sums
from sclp.wire.errors import DropReason, MalformedPacket
from sclp.wire.ipproto import IPPROTO_TCP

__all__ = [
    "ETH_HLEN",
    "TcpFrameLayout",
    "complete_checksum",
    "gso_segment_count",
    "gso_segment_sizes",
    "parse_tcp_frame",
    "segment_tcp_frame",
]

ETH_HLEN: Final = 14  # untagged Ethernet header: the default L3 offset

# Fields rewritten per segment, packed in one call each:
# IPv4 bytes 2..11: total length, identification, flags|frag offset, TTL, protocol, csum.
_IPV4_MUTABLE = struct.Struct("!HHHBBH")
_IPV4_MUTABLE_OFFSET: Final = 2
# IPv6 bytes 4..5: payload length.
_IPV6_PLEN = struct.Struct("!H")
_IPV6_PLEN_OFFSET: Final = 4
# TCP bytes 4..17: seq, ack, data offset byte, flags, window, checksum.
_TCP_MUTABLE = struct.Struct("!IIBBHH")
_TCP_MUTABLE_OFFSET: Final = 4

_FLAGS_OFFSET: Final = 13  # TCP flags byte within the TCP header
_LAST_ONLY: Final = int(tcp.TcpFlags.FIN | tcp.TcpFlags.PSH)
_FIRST_ONLY: Final = int(tcp.TcpFlags.CWR)


@dataclass(frozen=True, slots=True)
class TcpFrameLayout:
    """Where things are in an Ethernet + IPv4/IPv6 + TCP frame.

    ``l3_offset``/``l4_offset`` are the IP and TCP header offsets, ``header_len`` is
    where the TCP payload starts (L2 + L3 + L4 headers, options included) and ``end``
    is where the IP packet ends (bytes past it, e.g. Ethernet padding, are ignored).
    """

    ip_version: int
    l3_offset: int
    l4_offset: int
    header_len: int
    end: int

    @property
    def payload_len(self) -> int:
        return self.end - self.header_len

    @property
    def tcp_header_len(self) -> int:
        return self.header_len - self.l4_offset


def parse_tcp_frame(frame: Buffer, l3_offset: int = ETH_HLEN) -> TcpFrameLayout:
    """Locate the headers of a TCP frame (IPv4 without fragmentation, or IPv6 whose
    fixed header is followed directly by TCP).

    Raises :class:`MalformedPacket`: TOO_SHORT (truncated headers), BAD_VERSION (not
    IPv4/IPv6), MALFORMED (not TCP, an IPv4 fragment, IPv6 extension headers or a
    jumbogram, inconsistent lengths).  The IPv4 header checksum is not verified: the
    segmenter rewrites it.
    """
    view = memoryview(frame)
    n = len(view)
    if n <= l3_offset:
        raise MalformedPacket(DropReason.TOO_SHORT, f"frame of {n} bytes has no L3 header")
    version = view[l3_offset] >> 4
    l3 = view[l3_offset:]
    if version == 4:
        h4 = ipv4.decode(l3, verify_checksum=False)
        if h4.protocol != IPPROTO_TCP:
            raise MalformedPacket(DropReason.MALFORMED, f"ip protocol {h4.protocol} is not tcp")
        if h4.is_fragment:
            raise MalformedPacket(DropReason.MALFORMED, "ipv4 fragment cannot be segmented")
        l4_offset = l3_offset + h4.header_len
        end = l3_offset + h4.total_length
    elif version == 6:
        h6 = ipv6.decode(l3)
        if h6.next_header != IPPROTO_TCP:
            raise MalformedPacket(
                DropReason.MALFORMED, f"ipv6 next header {h6.next_header} is not tcp"
            )
        l4_offset = l3_offset + ipv6.IPV6_HLEN
        end = l4_offset + h6.payload_length
    else:
        raise MalformedPacket(DropReason.BAD_VERSION, f"ip version {version}")
    th = tcp.decode(view[l4_offset:end])
    return TcpFrameLayout(
        ip_version=version,
        l3_offset=l3_offset,
        l4_offset=l4_offset,
        header_len=l4_offset + th.header_len,
        end=end,
    )


def gso_segment_count(payload_len: int, mss: int) -> int:
    """How many segments a payload of ``payload_len`` bytes becomes at ``mss`` bytes
    per segment (at least one: an empty payload still makes one segment)."""
    if mss <= 0:
        raise ValueError(f"mss must be positive: {mss}")
    return max(1, -(-payload_len // mss))


def gso_segment_sizes(payload_len: int, mss: int) -> list[int]:
    """Payload bytes of each segment: ``mss`` for all but the last, which gets the rest."""
    count = gso_segment_count(payload_len, mss)
    return [mss] * (count - 1) + [payload_len - (count - 1) * mss]


def _fold(value: int) -> int:
    value = (value & 0xFFFF) + (value >> 16)
    return (value & 0xFFFF) + (value >> 16)


def segment_tcp_frame(frame: Buffer, mss: int, l3_offset: int = ETH_HLEN) -> list[bytearray]:
    """Cut one large TCP frame into frames whose TCP payload is at most ``mss`` bytes.

    Every segment gets a copy of the L2 bytes before ``l3_offset`` and of the IP and
    TCP headers (options included; TCP timestamps are repeated as a NIC does), then:
    IPv4 total length, ID (original + segment index, mod 2**16) and header checksum;
    IPv6 payload length; TCP sequence number (original + offset of the data); flags
    (FIN and PSH only on the last segment, CWR only on the first); a full TCP checksum
    with the pseudo-header.  The checksum fields of ``frame`` are ignored, so a
    virtio NEEDS_CSUM frame (partial checksum) is fine as input.  A frame whose payload
    already fits in ``mss`` comes back as one segment with complete checksums.

    ``frame`` is not modified; the returned ``bytearray``s are new and owned by the
    caller.  Raises :class:`MalformedPacket` for frames :func:`parse_tcp_frame` refuses
    and ValueError for ``mss`` < 1.
    """
    if mss <= 0:
        raise ValueError(f"mss must be positive: {mss}")
    layout = parse_tcp_frame(frame, l3_offset)
    view = memoryview(frame)
    l4 = layout.l4_offset
    hlen = layout.header_len
    tcp_hlen = hlen - l4
    payload = view[hlen : layout.end]
    plen = len(payload)
    count = max(1, -(-plen // mss))
    last_len = plen - (count - 1) * mss

    template = bytearray(view[:hlen])
    seq0, ack, doff_byte, flags0, window, _ = _TCP_MUTABLE.unpack_from(
        template, l4 + _TCP_MUTABLE_OFFSET
    )
    middle_flags = flags0 & ~(_LAST_ONLY | _FIRST_ONLY)
    first_flags = middle_flags | (flags0 & _FIRST_ONLY)
    last_flags = middle_flags | (flags0 & _LAST_ONLY)
    # TCP header sum without the fields that change per segment (seq, flags, checksum).
    _TCP_MUTABLE.pack_into(template, l4 + _TCP_MUTABLE_OFFSET, 0, ack, doff_byte, 0, window, 0)
    tcp_base = ones_sum(template[l4:hlen])

    row_sums = rows_ones_sums(payload, mss, count, last_len).tolist()

    l3 = layout.l3_offset
    is_v4 = layout.ip_version == 4
    if is_v4:
        ip_hlen = l4 - l3
        _, ident0, frag, ttl, proto, _ = _IPV4_MUTABLE.unpack_from(
            template, l3 + _IPV4_MUTABLE_OFFSET
        )
        src_dst = template[l3 + 12 : l3 + 20]
        _IPV4_MUTABLE.pack_into(template, l3 + _IPV4_MUTABLE_OFFSET, 0, 0, frag, ttl, proto, 0)
        ip_base = ones_sum(template[l3:l4])
    else:
        ip_hlen = 0  # not in the IPv6 payload length
        ident0 = frag = ttl = proto = ip_base = 0
        src_dst = template[l3 + 8 : l3 + 40]
    addr_sum = ones_sum(src_dst)
    tcp_const = addr_sum + IPPROTO_TCP + tcp_base + tcp_hlen

    segments: list[bytearray] = []
    offset = 0
    last = count - 1
    for i in range(count):
        seg_len = mss if i < last else last_len
        seq = (seq0 + offset) & 0xFFFFFFFF
        if i == last:
            flags = last_flags if i else last_flags | first_flags
        else:
            flags = first_flags if i == 0 else middle_flags
        csum = (
            ~_fold(tcp_const + seg_len + (seq >> 16) + (seq & 0xFFFF) + flags + row_sums[i])
            & 0xFFFF
        )
        seg = bytearray(template)
        seg += payload[offset : offset + seg_len]
        if is_v4:
            total = ip_hlen + tcp_hlen + seg_len
            ident = (ident0 + i) & 0xFFFF
            ip_csum = ~_fold(ip_base + total + ident) & 0xFFFF
            _IPV4_MUTABLE.pack_into(
                seg, l3 + _IPV4_MUTABLE_OFFSET, total, ident, frag, ttl, proto, ip_csum
            )
        else:
            _IPV6_PLEN.pack_into(seg, l3 + _IPV6_PLEN_OFFSET, tcp_hlen + seg_len)
        _TCP_MUTABLE.pack_into(
            seg, l4 + _TCP_MUTABLE_OFFSET, seq, ack, doff_byte, flags, window, csum
        )
        segments.append(seg)
        offset += seg_len
    return segments


def complete_checksum(
    frame: bytearray | memoryview, csum_start: int, csum_offset: int, end: int | None = None
) -> int:
    """Finish a virtio-net NEEDS_CSUM checksum in place and return it.

    The field at ``csum_start + csum_offset`` holds the (uncomplemented) pseudo-header
    sum; the final checksum is the complement of the ones' complement sum of
    ``frame[csum_start:end]`` *including* that field (virtio spec §5.1.6.2, the
    kernel's ``skb_checksum_help``).  A result of 0 is written as 0xFFFF (the same
    value in ones' complement; required for UDP by RFC 768, harmless for TCP).
    ``end`` defaults to the end of ``frame``.  Raises ValueError if the field does
    not lie inside ``frame[csum_start:end]``.
    """
    stop = len(frame) if end is None else end
    field = csum_start + csum_offset
    if csum_start < 0 or csum_offset < 0 or field + 2 > stop or stop > len(frame):
        raise ValueError(
            f"checksum field at {csum_start}+{csum_offset} outside the {stop}-byte packet"
        )
    csum = ~ones_sum(memoryview(frame)[csum_start:stop]) & 0xFFFF
    if csum == 0:
        csum = 0xFFFF
    struct.pack_into("!H", frame, field, csum)
    return csum


def split_gso_frame(
    frame: Buffer, mss: int, max_frame: int, headroom: int = 0, l3_offset: int = ETH_HLEN
) -> list[bytearray]:
    """Cut one TCP GSO frame (a virtio NEEDS_CSUM super-frame, payload cut at ``mss``
    by whoever segments it) into GSO frames of at most ``max_frame`` bytes each, every
    one a whole number of ``mss`` segments but the last.

    For a tunnel whose payload limit is below the frame a VM or container may send
    (a guest's TSO frames reach ~65,549 bytes; an endpoint-owned TAP is kept below the
    limit by its ``gso_max_size``, an attached interface is not).  Each part gets the
    headers with: IPv4 total length, ID advanced by the segments before it and header
    checksum; IPv6 payload length; TCP sequence number; FIN and PSH only on the last
    part, CWR only on the first; and the TCP checksum field set to the pseudo-header
    sum of the part, as NEEDS_CSUM expects.  Each returned buffer starts with
    ``headroom`` zero bytes.  Raises :class:`MalformedPacket` for frames
    :func:`parse_tcp_frame` refuses, ValueError when not even one segment fits.
    """
    layout = parse_tcp_frame(frame, l3_offset)
    hlen = layout.header_len
    per_part = (max_frame - hlen) // mss if mss > 0 else 0
    if per_part < 1:
        raise ValueError(f"a {mss}-byte segment does not fit in {max_frame} bytes")
    view = memoryview(frame)
    l3, l4 = layout.l3_offset, layout.l4_offset
    tcp_hlen = hlen - l4
    payload = view[hlen : layout.end]
    plen = len(payload)
    chunk = per_part * mss
    seq0, ack, doff_byte, flags0, window, _ = _TCP_MUTABLE.unpack_from(
        view, l4 + _TCP_MUTABLE_OFFSET
    )
    middle = flags0 & ~(_LAST_ONLY | _FIRST_ONLY)
    is_v4 = layout.ip_version == 4
    if is_v4:
        _, ident0, frag, ttl, proto, _ = _IPV4_MUTABLE.unpack_from(view, l3 + _IPV4_MUTABLE_OFFSET)
        template = bytearray(view[l3:l4])
        _IPV4_MUTABLE.pack_into(template, _IPV4_MUTABLE_OFFSET, 0, 0, frag, ttl, proto, 0)
        ip_base = ones_sum(template)
        addr_sum = ones_sum(view[l3 + 12 : l3 + 20])
    else:
        ident0 = frag = ttl = proto = ip_base = 0
        addr_sum = ones_sum(view[l3 + 8 : l3 + 40])
    parts: list[bytearray] = []
    for index, offset in enumerate(range(0, max(plen, 1), chunk)):
        size = min(chunk, plen - offset)
        part = bytearray(headroom)
        part += view[:hlen]
        part += payload[offset : offset + size]
        flags = middle
        if index == 0:
            flags |= flags0 & _FIRST_ONLY
        if offset + size >= plen:
            flags |= flags0 & _LAST_ONLY
        seq = (seq0 + offset) & 0xFFFFFFFF
        tcp_len = tcp_hlen + size
        pseudo = _fold(addr_sum + IPPROTO_TCP + tcp_len)
        _TCP_MUTABLE.pack_into(
            part, headroom + l4 + _TCP_MUTABLE_OFFSET, seq, ack, doff_byte, flags, window, pseudo
        )
        if is_v4:
            total = (l4 - l3) + tcp_len
            ident = (ident0 + offset // mss) & 0xFFFF
            ip_csum = ~_fold(ip_base + total + ident) & 0xFFFF
            _IPV4_MUTABLE.pack_into(
                part, headroom + l3 + _IPV4_MUTABLE_OFFSET, total, ident, frag, ttl, proto, ip_csum
            )
        else:
            _IPV6_PLEN.pack_into(part, headroom + l3 + _IPV6_PLEN_OFFSET, tcp_len)
        parts.append(part)
    return parts

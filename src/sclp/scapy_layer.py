"""SCLP as a Scapy layer, for crafting and reading SCLP packets interactively (sclp-spec
§1 header, §2 ports, §3 segmentation, §5 UDP carrier).

Optional: needs Scapy, the ``scapy`` extra (``pip install -e '.[scapy]'`` in a checkout,
docs/wireshark.md).  Scapy is imported here and nowhere else in the package; importing
this module registers the bindings::

    >>> from scapy.all import IP, Ether
    >>> from sclp.scapy_layer import SCLP, segment
    >>> pkt = IP(dst="192.0.2.2") / SCLP(sport=49321, id=0x1A2B) / VXLAN(vni=42) / Ether()
    >>> frags = [IP(dst="192.0.2.2") / s for s in segment(big, 49321, 4789, 1468, 7)]

Bindings: IPv4 protocol 234, IPv6 next header 234, UDP destination port 7234 (the
carrier's default); past SCLP, destination port 4789 is VXLAN and 6081 Geneve, but only
for a first segment (later segments carry raw continuation bytes, sclp-spec §3).

The checksum (``chksum``) is computed on build when left as None: RFC 1071 over the
SCLP header with the field as 0 plus this segment's payload, no pseudo-header; a
computed 0 is sent as 0xFFFF, since 0 means "not computed" (legal only in the UDP
carrier mode).  Set ``chksum=0`` to send "not computed".
"""

from __future__ import annotations

import struct
from typing import Any

from scapy.contrib.geneve import GENEVE
from scapy.fields import BitField, FlagsField, ShortField, XShortField
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw, bind_layers
from scapy.utils import checksum

__all__ = [
    "SCLP",
    "SCLP_HLEN",
    "SCLP_IP_PROTO",
    "SCLP_PORT_GENEVE",
    "SCLP_PORT_VXLAN",
    "SCLP_UDP_PORT",
    "segment",
]

# The numbers of sclp-spec §1/§2/§5, repeated so this module needs nothing but Scapy.
SCLP_IP_PROTO = 234
SCLP_HLEN = 12
SCLP_PORT_VXLAN = 4789
SCLP_PORT_GENEVE = 6081
SCLP_UDP_PORT = 7234
_CSUM_OFFSET = 10
_MAX_PAYLOAD = 65535
_IDENT_MAX = 0x7FFFFFFF


class SCLP(Packet):
    """One SCLP segment: header (12 bytes) + this segment's payload.

    ``id`` is the 31-bit identification and ``flags`` holds F (first segment), the low
    bit of the identification word; ``remaining`` counts the payload bytes that follow
    this segment's.  Defaults describe an unsegmented VXLAN payload (F set,
    remaining 0)."""

    name = "SCLP"
    fields_desc = [  # noqa: RUF012 (Scapy's declarative field list)
        ShortField("sport", 49152),
        ShortField("dport", SCLP_PORT_VXLAN),
        BitField("id", 0, 31),
        FlagsField("flags", 1, 1, ["F"]),
        ShortField("remaining", 0),
        XShortField("chksum", None),
    ]

    def post_build(self, pkt: bytes, pay: bytes) -> bytes:
        if self.chksum is None:
            zeroed = pkt[:_CSUM_OFFSET] + b"\0\0" + pkt[_CSUM_OFFSET + 2 :]
            csum = checksum(zeroed + pay) or 0xFFFF
            pkt = pkt[:_CSUM_OFFSET] + struct.pack("!H", csum) + pkt[_CSUM_OFFSET + 2 :]
        return pkt + pay

    def guess_payload_class(self, payload: bytes) -> Any:
        # Only segment 0 starts with the tunnel header; the others continue raw bytes.
        if not self.flags.F:
            return Raw
        return super().guess_payload_class(payload)

    def mysummary(self) -> str:
        first = " first" if self.flags.F else ""
        return str(
            self.sprintf(
                f"SCLP %SCLP.sport% > %SCLP.dport% id=%SCLP.id%{first} rem=%SCLP.remaining%"
            )
        )

    def checksum_ok(self, udp_carrier: bool = False) -> bool:
        """Whether this segment's checksum verifies (sclp-spec §1): the ones' complement
        sum of header and payload, field included, is 0xFFFF.  A field of 0 is "not
        computed", accepted only when ``udp_carrier``."""
        raw = bytes(self)
        if raw[_CSUM_OFFSET : _CSUM_OFFSET + 2] == b"\0\0":
            return udp_carrier
        return bool(checksum(raw) == 0)


def segment(payload: bytes, sport: int, dport: int, seg_size: int, ident: int) -> list[SCLP]:
    """Cut ``payload`` (at most 65,535 bytes) into SCLP segments of ``seg_size`` payload
    bytes as a sender must (sclp-spec §3): every segment but the last exactly
    ``seg_size`` bytes, F on segment 0 only, Remaining = bytes after each segment, the
    same ``ident`` on all; checksums are computed when the packets are built.  An empty
    payload gives one segment (F=1, Remaining=0).  The segments carry ``Raw`` payloads.
    Raises ValueError for a payload too large, ``seg_size`` < 1 or ``ident`` not 31 bits.
    """
    total = len(payload)
    if total > _MAX_PAYLOAD:
        raise ValueError(f"sclp payload of {total} bytes exceeds {_MAX_PAYLOAD}")
    if seg_size < 1:
        raise ValueError(f"segment size must be positive, got {seg_size}")
    if not 0 <= ident <= _IDENT_MAX:
        raise ValueError(f"identification {ident} is not a 31-bit value")
    out: list[SCLP] = []
    for start in range(0, max(total, 1), seg_size):
        piece = payload[start : start + seg_size]
        out.append(
            SCLP(
                sport=sport,
                dport=dport,
                id=ident,
                flags=1 if start == 0 else 0,
                remaining=total - start - len(piece),
            )
            / Raw(piece)
        )
    return out


bind_layers(IP, SCLP, proto=SCLP_IP_PROTO)
bind_layers(IPv6, SCLP, nh=SCLP_IP_PROTO)
bind_layers(UDP, SCLP, dport=SCLP_UDP_PORT)
bind_layers(SCLP, VXLAN, dport=SCLP_PORT_VXLAN)
bind_layers(SCLP, GENEVE, dport=SCLP_PORT_GENEVE)

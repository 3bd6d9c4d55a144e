"""Classic libpcap file encoding (the "tcpdump" format, LINKTYPE values from the
tcpdump.org link-layer header type registry).

Used to hand packets the project builds to independent dissectors (tshark) and to dump
traffic for debugging.  Pure encoding: :class:`PcapWriter` writes to a binary file-like
object the caller opened and owns; this module never opens files or reads clocks
(timestamps are passed in).

Layout, all fields in the writer's byte order (little-endian here; readers detect it
from the magic number)::

    global header (24 bytes): magic 0xa1b2c3d4 (microsecond timestamps),
        version 2.4, thiszone 0, sigfigs 0, snaplen, link type
    per packet (16 bytes + data): ts seconds, ts microseconds,
        captured length, original length
"""

from __future__ import annotations

import struct
from typing import Final, Protocol

from sclp.wire.checksum import Buffer

__all__ = [
    "DEFAULT_SNAPLEN",
    "LINKTYPE_ETHERNET",
    "LINKTYPE_RAW",
    "PCAP_GLOBAL_HLEN",
    "PCAP_MAGIC",
    "PCAP_RECORD_HLEN",
    "PcapWriter",
    "encode_global_header",
    "encode_record_header",
]

PCAP_MAGIC: Final = 0xA1B2C3D4  # microsecond-resolution timestamps
PCAP_VERSION: Final = (2, 4)
PCAP_GLOBAL_HLEN: Final = 24
PCAP_RECORD_HLEN: Final = 16
DEFAULT_SNAPLEN: Final = 262144  # what tcpdump and Wireshark use by default

LINKTYPE_ETHERNET: Final = 1  # packets start with an Ethernet header
LINKTYPE_RAW: Final = 101  # packets start with an IPv4 or IPv6 header

_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")


class BinaryWritable(Protocol):
    """Anything with ``write(bytes)``: an open file, ``io.BytesIO``, a pipe."""

    def write(self, data: bytes, /) -> object: ...


def encode_global_header(
    linktype: int = LINKTYPE_ETHERNET, snaplen: int = DEFAULT_SNAPLEN
) -> bytes:
    """The 24-byte file header."""
    return _GLOBAL.pack(PCAP_MAGIC, *PCAP_VERSION, 0, 0, snaplen, linktype)


def encode_record_header(ts: float, captured_len: int, original_len: int) -> bytes:
    """The 16-byte header of one packet record; ``ts`` is seconds since the epoch (>= 0),
    rounded to the microsecond.  Raises ValueError for a negative or too-late time."""
    if ts < 0:
        raise ValueError(f"pcap timestamp must not be negative: {ts}")
    usec_total = round(ts * 1_000_000)
    sec, usec = divmod(usec_total, 1_000_000)
    if sec > 0xFFFFFFFF:
        raise ValueError(f"pcap timestamp past 2106: {ts}")
    return _RECORD.pack(sec, usec, captured_len, original_len)


class PcapWriter:
    """Writes a classic pcap stream to ``fileobj``: the global header at construction,
    then one record per :meth:`write`.  Packets longer than ``snaplen`` are truncated
    (the record keeps their original length).  The caller owns ``fileobj`` (opens,
    flushes and closes it)."""

    def __init__(
        self,
        fileobj: BinaryWritable,
        linktype: int = LINKTYPE_ETHERNET,
        snaplen: int = DEFAULT_SNAPLEN,
    ) -> None:
        if snaplen <= 0:
            raise ValueError(f"pcap snaplen must be positive: {snaplen}")
        self._file = fileobj
        self.linktype = linktype
        self.snaplen = snaplen
        self._file.write(encode_global_header(linktype, snaplen))

    def write(self, packet: Buffer, ts: float) -> None:
        """Append one packet captured at time ``ts`` (seconds since the epoch)."""
        original_len = len(packet)
        captured_len = min(original_len, self.snaplen)
        self._file.write(encode_record_header(ts, captured_len, original_len))
        self._file.write(bytes(packet[:captured_len]))

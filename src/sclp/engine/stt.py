"""STT segmentation and reassembly (draft-davie-stt-08 §3–4).

Why: STT sends one large *STT frame* (the 18-byte STT frame header followed by the
inner Ethernet frame, at most 65,535 bytes) as several MTU-sized segments behind a
TCP-looking header, so that NICs segment it (TSO) and coalesce it (LRO).  Without a
NIC doing that for us, this module is the software TSO and the receiver's reassembly.

Transmit (what the reference implementation asks TSO to produce, and what TSO then
puts on the wire): every segment carries a 20-byte TCP header without options —
source port = flow entropy, destination port 7471, sequence number = STT frame length
in the upper 16 bits and the offset of this segment's data in the frame in the lower
16 (§3.2), acknowledgment number = the packet identifier shared by all segments of
one frame (§3.3; a per-sender counter from a random start, so frames in flight never
collide), flags ACK on every segment and PSH on the last, window 65535, urgent pointer
0 — and a TCP checksum over the outer IP pseudo-header.  Every segment except the last
carries exactly ``mss`` data bytes.  The segments are written into one contiguous
buffer at a fixed stride (20 + mss) with NumPy (data rows, header template, per-row
offsets and checksums), and exposed as ``memoryview``s for batch I/O.

Receive: the frame length and the segment's offset come from the sequence number, so
every segment is placed in the frame buffer as it arrives, in any order.  Key =
(outer source, outer destination, source port, destination port, packet ID).  Exact
duplicates, and late segments of a frame already delivered or discarded, are ignored;
overlapping bytes that disagree, a segment running past the frame length, or segments
disagreeing on the frame length discard the whole frame (in the spirit of RFC 5722,
like the SCLP reassembler, sclp-spec §4).  The incomplete frames live in a
:class:`~sclp.engine.table.ReassemblyTable` (possibly the one the SCLP reassembler
uses: one memory budget), which times them out, bounds memory by byte and entry caps
with oldest-first eviction and remembers finished keys; this module only places
segments (a coverage map per frame) and detects completion.  Every loss is counted by
:class:`~sclp.wire.errors.DropReason`.  Time is passed in (``now``).
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from sclp.engine.segmenter import StridedBatch
from sclp.engine.table import Account, ReassemblyTable, TableEntry, TableUser
from sclp.wire import ipv4, ipv6
from sclp.wire.checksum import Buffer, ones_sum, rows_ones_sums
from sclp.wire.errors import DropReason
from sclp.wire.ipproto import IPPROTO_TCP
from sclp.wire.stt import STT_FRAME_MAX_LEN, STT_HLEN, STT_PORT
from sclp.wire.tcp import TCP_HLEN, TcpFlags

__all__ = [
    "STT_SEGMENT_FLAGS",
    "STT_WINDOW",
    "SttReassembler",
    "SttSegmentBatch",
    "SttSegmenter",
    "pseudo_sum_for",
]

STT_WINDOW: Final = 0xFFFF  # window of every STT segment (the reference uses the maximum)
STT_SEGMENT_FLAGS: Final = TcpFlags.ACK  # every segment; the last adds PSH
_LAST_SEGMENT_FLAGS: Final = TcpFlags.ACK | TcpFlags.PSH
_DOFF_BYTE: Final = (TCP_HLEN // 4) << 4  # data offset 5, no options

# sport, dport, seq, ack, data offset byte, flags, window, checksum, urgent pointer
_TCP = struct.Struct("!HHIIBBHHH")
_SEQ_LO: Final = 6  # offset of the sequence number's low 16 bits (the frame offset)
_FLAGS: Final = 13  # offset of the flags byte
_CSUM: Final = 16  # offset of the TCP checksum

_ONES: Final = b"\x01" * STT_FRAME_MAX_LEN  # coverage-map filler


def pseudo_sum_for(src: bytes, dst: bytes, l4_length: int) -> int:
    """The TCP pseudo-header sum for outer addresses ``src``/``dst`` (4 bytes: IPv4,
    16 bytes: IPv6) and a TCP segment of ``l4_length`` bytes.  Raises ValueError for
    addresses of any other size or of different families."""
    if len(src) == 4 and len(dst) == 4:
        return ipv4.pseudo_header_sum(src, dst, IPPROTO_TCP, l4_length)
    if len(src) == 16 and len(dst) == 16:
        return ipv6.pseudo_header_sum(src, dst, IPPROTO_TCP, l4_length)
    raise ValueError(f"addresses must both be 4 or 16 bytes, got {len(src)} and {len(dst)}")


def _fold(value: int) -> int:
    value = (value & 0xFFFF) + (value >> 16)
    return (value & 0xFFFF) + (value >> 16)


@dataclass(slots=True, eq=False)
class SttSegmentBatch(StridedBatch):
    """The segments of one STT frame (20-byte TCP headers; see
    :class:`sclp.engine.segmenter.StridedBatch`).  ``total`` is the STT frame length,
    ``ident`` the packet ID in the acknowledgment number.  The caller adds the outer
    IP header (or sends the views on a raw socket)."""

    @property
    def header_len(self) -> int:
        return TCP_HLEN


class SttSegmenter:
    """Cuts STT frames into pseudo-TCP segments; owns the sender's packet-ID counter.

    ``ident_start`` is the first packet ID (default: 32 random bits).  One segmenter
    serves every peer of a sender: the ID only has to be unique among the frames in
    flight to one receiver, which a counter guarantees.
    """

    def __init__(self, ident_start: int | None = None) -> None:
        if ident_start is None:
            ident_start = secrets.randbits(32)
        if not 0 <= ident_start <= 0xFFFFFFFF:
            raise ValueError(f"packet id must fit in 32 bits: {ident_start}")
        self._next_ident = ident_start

    @property
    def next_ident(self) -> int:
        """The packet ID the next frame will get."""
        return self._next_ident

    def segment_frame(
        self,
        stt_frame: Buffer,
        sport: int,
        mss: int,
        src: bytes,
        dst: bytes,
        *,
        dport: int = STT_PORT,
        ident: int | None = None,
    ) -> SttSegmentBatch:
        """Segment ``stt_frame`` (STT frame header + inner Ethernet frame) into
        segments of at most ``mss`` data bytes each, checksummed for the outer
        addresses ``src`` → ``dst`` (4 or 16 bytes each).

        ``mss`` is the TCP payload per segment: path MTU − outer IP header − 20.
        ``ident`` overrides the packet ID (default: the next from the counter, which an
        explicit ``ident`` does not advance).
        ``stt_frame`` is copied, not kept.  Raises ValueError for a frame shorter than
        the STT header or longer than 65,535 bytes (the sequence number's 16-bit
        length), ``mss`` < 1, ports out of range or bad addresses.
        """
        total = len(stt_frame)
        if total > STT_FRAME_MAX_LEN:
            raise ValueError(f"stt frame of {total} bytes exceeds {STT_FRAME_MAX_LEN}")
        if total < STT_HLEN:
            raise ValueError(f"stt frame of {total} bytes is shorter than its header")
        if mss <= 0:
            raise ValueError(f"mss must be positive: {mss}")
        if not 0 <= sport <= 0xFFFF or not 0 <= dport <= 0xFFFF:
            raise ValueError(f"ports out of range: {sport}, {dport}")
        if ident is None:
            ident = self._next_ident
            self._next_ident = (ident + 1) & 0xFFFFFFFF
        elif not 0 <= ident <= 0xFFFFFFFF:
            raise ValueError(f"packet id must fit in 32 bits: {ident}")
        count = -(-total // mss)
        full = count - 1
        last_len = total - full * mss
        stride = TCP_HLEN + mss

        template = bytearray(TCP_HLEN)
        _TCP.pack_into(
            template, 0, sport, dport, total << 16, ident, _DOFF_BYTE, 0, STT_WINDOW, 0, 0
        )
        # Sum of everything that does not change from segment to segment.
        pseudo_zero_len = pseudo_sum_for(src, dst, 0)
        const = pseudo_zero_len + ones_sum(template) + TCP_HLEN
        row_sums = rows_ones_sums(stt_frame, mss, count, last_len)

        buffer = bytearray(full * stride + TCP_HLEN + last_len)
        if full:
            rows = np.frombuffer(buffer, np.uint8, full * stride).reshape(full, stride)
            rows[:, TCP_HLEN:] = np.frombuffer(stt_frame, np.uint8, full * mss).reshape(full, mss)
            rows[:, :TCP_HLEN] = np.frombuffer(template, np.uint8)
            rows[:, _FLAGS] = int(STT_SEGMENT_FLAGS)
            offsets = np.arange(0, full * mss, mss, dtype=np.uint64)
            sums = (
                row_sums[:full].astype(np.uint64) + offsets + (const + mss + int(STT_SEGMENT_FLAGS))
            )
            sums = (sums & 0xFFFF) + (sums >> 16)
            sums = (sums & 0xFFFF) + (sums >> 16)
            csums = ~sums & 0xFFFF
            rows[:, _SEQ_LO] = offsets >> 8
            rows[:, _SEQ_LO + 1] = offsets & 0xFF
            rows[:, _CSUM] = csums >> 8
            rows[:, _CSUM + 1] = csums & 0xFF
        last_off = full * mss
        base = full * stride
        buffer[base + TCP_HLEN :] = memoryview(stt_frame)[last_off:]
        flags = int(_LAST_SEGMENT_FLAGS)
        csum = ~_fold(const + last_len + last_off + flags + int(row_sums[full])) & 0xFFFF
        _TCP.pack_into(
            buffer,
            base,
            sport,
            dport,
            (total << 16) | last_off,
            ident,
            _DOFF_BYTE,
            flags,
            STT_WINDOW,
            csum,
            0,
        )
        return SttSegmentBatch(buffer=buffer, stride=stride, count=count, ident=ident, total=total)


class _Entry(TableEntry):
    """One incomplete frame; the table accounts ``size`` = 2 * ``total`` for it (the
    frame buffer and its coverage map, one byte per frame byte: 1 once received)."""

    __slots__ = ("buf", "covered", "received", "total")

    def __init__(self, account: Account, total: int) -> None:
        self.account = account
        self.size = 2 * total
        self.total = total
        self.buf = bytearray(total)
        self.covered = bytearray(total)
        self.received = 0


# (account tag, src, dst, sport, dport, packet ID): the tag keeps keys apart in a
# shared table
_Key = tuple[int, bytes, bytes, int, int, int]


class SttReassembler(TableUser):
    """Reassembles STT frames from pseudo-TCP segments (any order, duplicates fine).

    The counters and caps follow :class:`sclp.engine.reassembler.Reassembler`:
    ``timeout`` (seconds) bounds how long an incomplete frame is kept after its first
    segment; ``max_bytes`` caps the memory held by incomplete frames (each counts twice
    its frame length: the frame buffer and its coverage map) and ``max_entries`` their
    number.  When a new frame does not fit, the oldest incomplete frames are evicted
    (EVICTED); a frame that cannot fit even in an empty table is refused (OVERSIZE).
    Only destination port ``port`` is STT (others: UNKNOWN_PORT).

    Keys of frames completed or discarded are remembered for ``timeout`` (at most
    ``max_entries`` of them, no bytes), so that their late or duplicated segments are
    ignored (counted in :attr:`duplicates`) instead of opening an entry that could only
    time out.  A frame that fits in one segment leaves no state: a network duplicate of
    it is delivered again, like any datagram.

    ``table``: a :class:`~sclp.engine.table.ReassemblyTable` to hold the frames in,
    possibly shared with the SCLP reassembler (one memory budget; eviction is oldest
    first across both, and ``expire`` expires both); its timeout and caps then apply
    and ``timeout``/``max_bytes``/``max_entries`` are ignored.  Without it the
    reassembler makes its own.  The counters are this reassembler's own even in a
    shared table (a frame evicted for an SCLP payload is an EVICTED drop here).
    """

    def __init__(
        self,
        timeout: float = 1.0,
        max_bytes: int = 16 * 1024 * 1024,
        max_entries: int = 1024,
        port: int = STT_PORT,
        *,
        table: ReassemblyTable[Any] | None = None,
    ) -> None:
        super().__init__(timeout, max_bytes, max_entries, table)
        self._port = port
        self.foreign = 0  # segments add_batch(skip_foreign=True) skipped

    # -- input ------------------------------------------------------------------------

    def add_segment(
        self,
        src: bytes,
        dst: bytes,
        tcp_segment: Buffer,
        now: float,
        verify_checksum: bool = True,
        pseudo_sum: int | None = None,
    ) -> bytes | None:
        """Take one pseudo-TCP segment (TCP header + data) received from outer
        ``src`` → ``dst`` (packed addresses); return the STT frame (STT header + inner
        frame) when this segment completes it, else ``None``.

        With ``verify_checksum`` the TCP checksum is checked against ``pseudo_sum``
        (the pseudo-header sum for this segment's length; computed from ``src``/``dst``
        when ``None``).  Never raises on bad input: a bad segment is counted in
        :attr:`drops` and ``None`` is returned.  ``tcp_segment`` is copied, not kept.
        """
        table = self._table
        if now >= table.next_at:
            table.expire(now)
        view = memoryview(tcp_segment)
        n = len(view)
        if n < TCP_HLEN:
            self.drops[DropReason.TOO_SHORT] += 1
            return None
        sport, dport, seq, ident, doff_byte = _TCP.unpack_from(view, 0)[:5]
        if dport != self._port:
            self.drops[DropReason.UNKNOWN_PORT] += 1
            return None
        hlen = (doff_byte >> 4) * 4
        if hlen < TCP_HLEN:
            self.drops[DropReason.MALFORMED] += 1
            return None
        if hlen > n:
            self.drops[DropReason.TOO_SHORT] += 1
            return None
        if verify_checksum:
            if pseudo_sum is None:
                try:
                    pseudo_sum = pseudo_sum_for(src, dst, n)
                except ValueError:
                    self.drops[DropReason.MALFORMED] += 1
                    return None
            if ones_sum(view, pseudo_sum) != 0xFFFF:
                self.drops[DropReason.BAD_CHECKSUM] += 1
                return None
        total = seq >> 16
        offset = seq & 0xFFFF
        dlen = n - hlen
        if dlen == 0 or total < STT_HLEN:
            # no data, or a frame too short to hold its own STT header
            self.drops[DropReason.MALFORMED] += 1
            return None
        key = (self._tag, src, dst, sport, dport, ident)
        return self._place(key, total, offset, view[hlen:], now)

    def add_batch(
        self,
        srcs: Sequence[bytes],
        dst: bytes,
        views: Sequence[memoryview],
        starts: Sequence[int],
        ends: Sequence[int],
        l4_sums: Sequence[int] | None,
        now: float,
        *,
        skip_foreign: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        """Take a receive batch: segment ``i`` is ``views[i][starts[i]:ends[i]]`` (TCP
        header included) from outer ``srcs[i]`` to ``dst`` (packed addresses), and
        ``l4_sums[i]`` its folded ones' complement sum without the pseudo-header (None:
        summed here).  Returns ``(src, frame)`` for every frame completed, in order;
        the same frames, counters and state as :meth:`add_segment` with the checksum
        verified, segment by segment.

        ``skip_foreign``: a segment shorter than 4 bytes or to another port is the
        host's other TCP traffic, skipped without a count (what the endpoint does before
        it hands a segment over); they are added up in :attr:`foreign`.

        Why: one call per segment costs more than the segment's bytes (a 64 KB frame is
        ~45 segments).  Here consecutive segments of one frame (same key and frame
        length, each starting where the previous one ended) are collected in one tight
        loop and placed as a run: a run that is a whole frame in order needs no table
        entry and no coverage map, one that continues a frame is copied in without
        comparing."""
        table = self._table
        if now >= table.next_at:
            table.expire(now)
        drops = self.drops
        port = self._port
        tag = self._tag
        unpack = _TCP.unpack_from
        out: list[tuple[bytes, bytes]] = []
        run: list[memoryview] = []
        run_key: _Key = (tag, b"", dst, -1, -1, -1)
        run_src = b""
        run_lo = run_hi = run_total = 0
        for i, off in enumerate(starts):
            view = views[i]
            end = ends[i]
            n = end - off
            if skip_foreign and (n < 4 or (view[off + 2] << 8 | view[off + 3]) != port):
                self.foreign += 1
                continue
            if n < TCP_HLEN:
                drops[DropReason.TOO_SHORT] += 1
                continue
            sport, dport, seq, ident, doff_byte = unpack(view, off)[:5]
            if dport != port:
                drops[DropReason.UNKNOWN_PORT] += 1
                continue
            hlen = (doff_byte >> 4) * 4
            if hlen < TCP_HLEN:
                drops[DropReason.MALFORMED] += 1
                continue
            if hlen > n:
                drops[DropReason.TOO_SHORT] += 1
                continue
            src = srcs[i]
            try:
                pseudo = pseudo_sum_for(src, dst, n)
            except ValueError:
                drops[DropReason.MALFORMED] += 1
                continue
            if l4_sums is None:
                folded = ones_sum(view[off:end], pseudo)
            else:
                folded = l4_sums[i] + pseudo
                folded = (folded & 0xFFFF) + (folded >> 16)
            if folded != 0xFFFF:
                drops[DropReason.BAD_CHECKSUM] += 1
                continue
            total = seq >> 16
            offset = seq & 0xFFFF
            dlen = n - hlen
            if dlen == 0 or total < STT_HLEN:
                drops[DropReason.MALFORMED] += 1
                continue
            key = (tag, src, dst, sport, dport, ident)
            if (
                offset == run_hi
                and total == run_total
                and key == run_key
                and run
                and run_hi + dlen <= total
            ):
                run.append(view[off + hlen : end])
                run_hi += dlen
                continue
            if run:
                self._add_run(run_key, run_src, run_total, run_lo, run, now, out)
                run = []
            if offset + dlen > total:  # past the end: never part of a run
                frame = self._place(key, total, offset, view[off + hlen : end], now)
                if frame is not None:
                    out.append((src, frame))
                continue
            run = [view[off + hlen : end]]
            run_key, run_src, run_total = key, src, total
            run_lo, run_hi = offset, offset + dlen
        if run:
            self._add_run(run_key, run_src, run_total, run_lo, run, now, out)
        return out

    # -- internals --------------------------------------------------------------------

    def _add_run(
        self,
        key: _Key,
        src: bytes,
        total: int,
        lo: int,
        pieces: list[memoryview],
        now: float,
        out: list[tuple[bytes, bytes]],
    ) -> None:
        """Place ``pieces``: the data of consecutive segments of frame ``key`` (length
        ``total``) from offset ``lo`` on, ending at or before ``total``; a completed
        frame goes to ``out``.  The same outcome as :meth:`_place` piece by piece."""
        if len(pieces) == 1:
            frame = self._place(key, total, lo, pieces[0], now)
            if frame is not None:
                out.append((src, frame))
            return
        hi = lo + sum(len(p) for p in pieces)
        table = self._table
        entry = self._entries.get(key)
        if entry is None:
            if key in self._finished:
                self._account.duplicates += len(pieces)
                return
            # No piece is the whole frame (there are several), so the first one asks
            # for room as add_segment would, and so does every one after a refusal.
            if not table.make_room(2 * total, now):
                self.drops[DropReason.OVERSIZE] += len(pieces)
                return
            if lo == 0 and hi == total:  # the whole frame in order: no entry
                self._account.completed += 1
                table.remember(key, now)
                out.append((src, b"".join(pieces)))
                return
            entry = _Entry(self._account, total)
            table.insert(key, entry, now)
        elif entry.total != total or entry.covered.count(1, lo, hi):
            # Overlaps and inconsistencies: the careful way, piece by piece.
            for piece in pieces:
                frame = self._place(key, total, lo, piece, now)
                if frame is not None:
                    out.append((src, frame))
                lo += len(piece)
            return
        buf = entry.buf
        pos = lo
        for piece in pieces:
            end = pos + len(piece)
            buf[pos:end] = piece
            pos = end
        entry.covered[lo:hi] = _ONES[: hi - lo]
        entry.received += hi - lo
        if entry.received >= total:  # only the last piece can complete a frame
            table.complete(key, entry, now)
            out.append((src, bytes(buf)))

    def _place(
        self, key: _Key, total: int, offset: int, data: memoryview, now: float
    ) -> bytes | None:
        """One checked segment's ``data`` at ``offset`` of frame ``key`` (length
        ``total``): the part of :meth:`add_segment` that depends on the table."""
        table = self._table
        dlen = len(data)
        end = offset + dlen
        entry = self._entries.get(key)
        if entry is None:
            if key in self._finished:
                self._account.duplicates += 1
                return None
            if end > total:
                self.drops[DropReason.PAST_END] += 1
                return None
            if dlen == total:  # the whole frame in one segment (or LRO-merged)
                self._account.completed += 1
                return bytes(data)
            if not table.make_room(2 * total, now):
                self.drops[DropReason.OVERSIZE] += 1  # cannot fit even in an empty table
                return None
            entry = _Entry(self._account, total)
            table.insert(key, entry, now)
        elif entry.total != total:
            table.discard(key, entry, DropReason.INCONSISTENT_TOTAL, now)
            return None
        elif end > total:
            table.discard(key, entry, DropReason.PAST_END, now)
            return None

        covered = entry.covered.count(1, offset, end)
        if covered:
            if not _agrees(entry, offset, data, covered == dlen):
                table.discard(key, entry, DropReason.OVERLAP, now)
                return None
            if covered == dlen:
                self._account.duplicates += 1
                return None
        entry.buf[offset:end] = data
        entry.covered[offset:end] = _ONES[:dlen]
        entry.received += dlen - covered
        if entry.received < total:
            return None
        table.complete(key, entry, now)
        return bytes(entry.buf)


def _agrees(entry: _Entry, offset: int, data: memoryview, all_covered: bool) -> bool:
    """Do the bytes of ``data`` already present in ``entry`` equal the new ones?"""
    end = offset + len(data)
    if all_covered:
        return memoryview(entry.buf)[offset:end] == data
    mask = np.frombuffer(entry.covered, np.uint8)[offset:end].astype(bool)
    old = np.frombuffer(entry.buf, np.uint8)[offset:end]
    new = np.frombuffer(data, np.uint8)
    return bool(np.array_equal(old[mask], new[mask]))

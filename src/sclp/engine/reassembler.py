"""SCLP receive side: put segments back together into payloads (sclp-spec §4).

Strategy.  Every segment is placed by *tail offset*: a segment with ``len`` payload
bytes and Remaining ``rem`` covers ``[rem, rem + len)`` counted back from the end of the
payload, whether or not the total length is known yet (only the first segment tells
it: ``total = len + rem``).  So segments that arrive before the first need no side
list: an entry whose total is unknown gets a buffer of the largest size a payload may
have and fills it from the end; when the first segment arrives the payload is the
buffer's last ``total`` bytes.  An entry that starts with the first segment (the usual
case) gets a buffer of exactly ``total``.  Received byte ranges are a sorted interval
list in tail coordinates; in-order arrival only ever extends its lowest interval, and
the bytes of an overlap are compared only when the list says there is one.

Fast paths: an unsegmented payload (F=1, Remaining=0) and a kernel GRO buffer that holds
a whole payload in order never create a table entry (in the UDP carrier the latter is
recognised without a Python step per segment: ``_whole_in_order``); a GRO buffer's checksums are
verified in one NumPy pass and its consecutive segments of one payload are placed as a
run with one interval update.

Memory (the original had no cap, sclp-spec §4): the entries live in a
:class:`~sclp.engine.table.ReassemblyTable`, which owns the caps, the timeouts, the
oldest-first eviction and the remembered keys (its docstring is the contract); this
module only places segments and detects completion.  An entry's size is its payload
buffer, allocated only after the table made room for it, so nothing a sender does can
make the table hold more than ``max_bytes``.  A payload that could not fit under the
cap is refused (OVERSIZE).  The bookkeeping beside the buffers is bounded too: at most
``max_entries`` entries of at most 128 disjoint ranges each (a payload cut into more
slivers is dropped as MALFORMED), and at most ``max_entries`` remembered keys.  The
table may be shared with an :class:`~sclp.engine.stt.SttReassembler` (one budget for
the endpoint).

Keys that were completed or discarded are remembered for ``timeout`` (at most
``max_entries`` of them, no payload bytes) so that their late or duplicated segments
are ignored instead of opening an entry that could only time out.  An unsegmented
payload has no state at all: a network duplicate of it is delivered again, like any
datagram.

Every discard is counted in :attr:`Reassembler.drops` by :class:`DropReason`; nothing
here raises on bad input.  Time is passed in as ``now`` (seconds); nothing reads a
clock.
"""

from __future__ import annotations

import struct
from bisect import bisect_left, bisect_right
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sclp.engine.segmenter import remaining_fields
from sclp.engine.table import Account, ReassemblyTable, TableEntry, TableUser
from sclp.wire.checksum import Buffer, ones_sum, rows_ones_sums
from sclp.wire.errors import DropReason
from sclp.wire.sclp import SCLP_HLEN, SCLP_MAX_PAYLOAD, Carrier

__all__ = ["Completed", "Reassembler"]

_HDR = struct.Struct("!HHIHH")
_FIRST_PREFIX = struct.Struct("!HHI")  # sport, dport, identification word
_unpack_hdr = _HDR.unpack_from
_CSUM_AT = 10  # the checksum field's offset in the header
# (account tag, src, dst, sport, dport, ident): the tag keeps keys apart in a shared table
_Key = tuple[int, Hashable, Hashable, int, int, int]
# Disjoint received ranges one payload may have.  A 65,535-byte payload at MTU 576 has
# 121 segments, so at most 61 gaps; more is a sender cutting a payload into slivers to
# make the bookkeeping (not counted in bytes_held) grow: the payload is dropped.
_MAX_RANGES = 128


@dataclass(slots=True)
class Completed:
    """A reassembled payload (tunnel header + inner frame) and the SCLP ports.

    Ownership: ``payload`` may be a view into the buffer passed to ``add_segment`` /
    ``add_coalesced`` (an unsegmented payload is not copied); it is valid until the
    caller reuses that buffer.  Copy it (``bytes(payload)``) to keep it longer.
    """

    sport: int
    dport: int
    payload: Buffer


class _Entry(TableEntry):
    """One incomplete payload.  The segment covering tail range ``[lo, hi)`` lives at
    ``buf[size - hi : size - lo]``; ``los``/``his`` are the received tail ranges,
    sorted, disjoint and never adjacent; ``total`` is -1 until the first segment.
    ``size`` (the buffer's length) is what the table accounts for it."""

    __slots__ = ("buf", "his", "los", "received", "total")

    def __init__(self, account: Account, size: int, total: int) -> None:
        self.account = account
        self.size = size
        self.buf = bytearray(size)
        self.total = total
        self.los: list[int] = []
        self.his: list[int] = []
        self.received = 0


class Reassembler(TableUser):
    """Reassembly table for SCLP segments received from any number of senders.

    ``carrier`` decides whether a zero checksum ("not computed") is accepted (UDP
    carrier only, sclp-spec §5).  ``timeout`` bounds how long an incomplete payload is
    kept, measured from its first segment.  ``max_bytes`` caps the payload buffers held
    and ``max_entries`` the number of incomplete payloads; over either cap the oldest
    incomplete payloads are evicted.

    ``table``: a :class:`~sclp.engine.table.ReassemblyTable` to hold the entries in,
    possibly shared with other reassemblers (one memory budget; eviction is oldest
    first across all of them, and ``expire`` expires all of them); its timeout and caps
    then apply and ``timeout``/``max_bytes``/``max_entries`` are ignored.  Without it
    the reassembler makes its own.  The counters (``drops``, ``completed``,
    ``duplicates``, ``bytes_held``, ``entries``) are this reassembler's own even
    in a shared table (an entry evicted for another reassembler's payload is counted
    in the ``drops`` of the reassembler that owned it).
    """

    def __init__(
        self,
        carrier: Carrier = Carrier.IP,
        timeout: float = 1.0,
        max_bytes: int = 16 * 1024 * 1024,
        max_entries: int = 1024,
        *,
        table: ReassemblyTable[Any] | None = None,
    ) -> None:
        super().__init__(timeout, max_bytes, max_entries, table)
        self._accept_zero_csum = carrier is Carrier.UDP
        # A payload whose total is unknown may be as large as the protocol allows, but
        # never larger than the cap.
        self._pending_size = min(SCLP_MAX_PAYLOAD, self._table.max_bytes)

    # -- input ------------------------------------------------------------------------

    def add_segment(
        self,
        src: Hashable,
        dst: Hashable,
        segment: Buffer,
        now: float,
        checksum_ok: bool | None = None,
    ) -> Completed | None:
        """Take one segment (SCLP header + its payload) received from outer address
        ``src`` to ``dst``; return the payload if this segment completed it.

        ``checksum_ok`` is the verdict of a caller that already summed the segment
        (e.g. a whole receive batch in one NumPy pass); ``None`` means "verify here".
        A zero checksum field is judged here either way (legal only in the UDP
        carrier).  The segment's bytes are copied if they must be kept; the caller may
        reuse ``segment``'s buffer once it is done with the returned payload."""
        if now >= self._table.next_at:
            self._table.expire(now)
        n = len(segment)
        if n < SCLP_HLEN:
            self.drops[DropReason.TOO_SHORT] += 1
            return None
        sport, dport, word, rem, csum = _unpack_hdr(segment, 0)
        if csum == 0:
            if not self._accept_zero_csum:
                self.drops[DropReason.BAD_CHECKSUM] += 1
                return None
        elif not (ones_sum(segment) == 0xFFFF if checksum_ok is None else checksum_ok):
            self.drops[DropReason.BAD_CHECKSUM] += 1
            return None
        first = word & 1
        hi = rem + n - SCLP_HLEN
        reason = self._segment_problem(first, n - SCLP_HLEN, hi)
        if reason is not None:
            self.drops[reason] += 1
            return None
        key = (self._tag, src, dst, sport, dport, word >> 1)
        return self._add_run(key, first, rem, hi, [memoryview(segment)[SCLP_HLEN:]], now)

    def add_coalesced(
        self, src: Hashable, dst: Hashable, buf: Buffer, seg_size: int, now: float
    ) -> list[Completed]:
        """Take several consecutive segments delivered as one buffer (kernel UDP GRO):
        every ``seg_size`` bytes (header included) a segment starts; the last may be
        shorter.  Returns the payloads completed, in order.

        The buffer is walked in place with memoryview offsets; checksums are verified
        in one pass; consecutive segments of one payload (the same key, each one ending
        where the previous one starts) are placed as one run.  A GRO buffer may hold
        the tail of one payload, whole payloads and the head of another: all fine.
        Raises ValueError only for ``seg_size`` < 1 (a caller bug)."""
        if seg_size < 1:
            raise ValueError(f"coalesced segment size must be positive, got {seg_size}")
        if now >= self._table.next_at:
            self._table.expire(now)
        mv = memoryview(buf)
        n = len(mv)
        if n <= seg_size:
            if n == 0:
                return []
            done = self.add_segment(src, dst, mv, now)
            return [] if done is None else [done]
        if self._accept_zero_csum:
            whole = self._whole_in_order(src, dst, mv, seg_size, now)
            if whole is not None:
                return [whole]
        count = -(-n // seg_size)
        starts = range(0, n, seg_size)
        ends = [*range(seg_size, n, seg_size), n]
        # The checksum fields (bytes 10-11 of each header): all zero is the UDP
        # carrier's "not computed", and then there is nothing to sum.
        fields = np.frombuffer(mv, dtype=np.uint8)
        if fields[_CSUM_AT::seg_size].any() or fields[_CSUM_AT + 1 :: seg_size].any():
            sums = rows_ones_sums(mv, seg_size, count, n - (count - 1) * seg_size).tolist()
        else:
            sums = [0] * count  # never read: a zero field skips the comparison
        runs = self._add_segments([src] * count, dst, [mv] * count, starts, ends, sums, now)
        return [payload for _, payload in runs]

    def add_batch(
        self,
        srcs: Sequence[Hashable],
        dst: Hashable,
        views: Sequence[memoryview],
        starts: Sequence[int],
        ends: Sequence[int],
        l4_sums: Sequence[int] | None,
        now: float,
    ) -> list[tuple[Hashable, Completed]]:
        """Take a receive batch of segments from any senders: segment ``i`` is
        ``views[i][starts[i]:ends[i]]`` (header included), from outer address
        ``srcs[i]``, and ``l4_sums[i]`` its folded ones' complement sum (0xFFFF: the
        checksum holds; None: sum each segment here); ``views`` may be longer than
        ``starts`` (a socket's slots), the rest is ignored.  Returns ``(src, payload)`` for
        every payload completed, in order; drops are counted as by
        :meth:`add_segment`, which this is equivalent to, segment by segment.

        Why: one call per segment costs more than the segment's bytes (a native-mode
        64 KB payload is ~45 segments); here consecutive segments of one payload are
        recognised in one tight loop and placed as a run, and a run that is a whole
        payload in order needs no table entry.  Payloads may be views into ``views``
        (as with :meth:`add_segment`)."""
        if now >= self._table.next_at:
            self._table.expire(now)
        if l4_sums is None:
            l4_sums = [
                ones_sum(views[i][a:b]) for i, (a, b) in enumerate(zip(starts, ends, strict=True))
            ]
        return self._add_segments(srcs, dst, views, starts, ends, l4_sums, now)

    def _add_segments(
        self,
        srcs: Sequence[Hashable],
        dst: Hashable,
        views: Sequence[memoryview],
        starts: Sequence[int],
        ends: Sequence[int],
        sums: Sequence[int],
        now: float,
    ) -> list[tuple[Hashable, Completed]]:
        """The loop of :meth:`add_batch` and :meth:`add_coalesced`: each segment is
        checked as :meth:`add_segment` checks it (inlined), and consecutive segments of
        one payload (same key, each ending in tail coordinates where the previous one
        starts) are collected into a run placed by one :meth:`_add_run`."""
        drops = self.drops
        accept_zero = self._accept_zero_csum
        out: list[tuple[Hashable, Completed]] = []
        # The run being collected: payloads of consecutive segments of one payload.
        run: list[memoryview] = []
        tag = self._tag
        run_key: _Key = (tag, None, dst, -1, -1, -1)
        run_src: Hashable = None
        run_first = run_hi = 0
        run_lo = run_word = run_sport = run_dport = -1
        for i, off in enumerate(starts):
            end = ends[i]
            plen = end - off - SCLP_HLEN
            if plen < 0:
                drops[DropReason.TOO_SHORT] += 1
                continue
            view = views[i]
            sport, dport, word, rem, csum = _unpack_hdr(view, off)
            if csum:
                if sums[i] != 0xFFFF:
                    drops[DropReason.BAD_CHECKSUM] += 1
                    continue
            elif not accept_zero:
                drops[DropReason.BAD_CHECKSUM] += 1
                continue
            hi = rem + plen
            # The checks of _segment_problem, inlined.
            if hi > SCLP_MAX_PAYLOAD:
                drops[DropReason.OVERSIZE] += 1
                continue
            src = srcs[i]
            if not word & 1:
                if plen == 0:
                    drops[DropReason.MALFORMED] += 1
                    continue
                if (
                    hi == run_lo
                    and word | 1 == run_word
                    and sport == run_sport
                    and dport == run_dport
                    and src == run_src
                ):
                    run.append(view[off + SCLP_HLEN : end])
                    run_lo = rem
                    continue
            if run:
                done = self._add_run(run_key, run_first, run_lo, run_hi, run, now)
                if done is not None:
                    out.append((run_src, done))
            run = [view[off + SCLP_HLEN : end]]
            run_key = (tag, src, dst, sport, dport, word >> 1)
            run_src = src
            run_first = word & 1
            run_lo = rem
            run_hi = hi
            run_word = word | 1
            run_sport = sport
            run_dport = dport
        if run:
            done = self._add_run(run_key, run_first, run_lo, run_hi, run, now)
            if done is not None:
                out.append((run_src, done))
        return out

    # -- internals --------------------------------------------------------------------

    def _whole_in_order(
        self, src: Hashable, dst: Hashable, mv: memoryview, seg_size: int, now: float
    ) -> Completed | None:
        """The fast path of :meth:`add_coalesced` in the UDP carrier: a GRO buffer that
        is exactly one payload's segments, in order, with zero checksums (what our
        sender's one GSO send per payload becomes), is recognised without a Python
        step per segment and returned as a new contiguous payload; None means "not
        that case, take the general path" (which then also does all the counting).

        How: the first header gives the total; the headers every segment must carry
        are then known to the byte (:func:`~sclp.engine.segmenter.remaining_fields`),
        and the buffer's headers, gathered by one strided NumPy copy, are compared with
        them in one ``==``; one more strided copy lifts the payload out.  (Measured on
        the 2-core test machine: ~15 us per 64 KB payload, against ~17 us just to cut
        the 45 views a ``writev`` of the segments in place would need.)"""
        n = len(mv)
        plen = seg_size - SCLP_HLEN
        if plen <= 0:
            return None
        sport, dport, word, rem, csum = _unpack_hdr(mv, 0)
        total = plen + rem
        count = -(-n // seg_size)
        if csum or not word & 1 or total > SCLP_MAX_PAYLOAD or total + SCLP_HLEN * count != n:
            return None
        key = (self._tag, src, dst, sport, dport, word >> 1)
        if key in self._entries or key in self._finished:
            return None
        fields = remaining_fields(total, plen)
        if len(fields) != count:
            return None
        full = count - 1
        last_off = full * seg_size
        rows = np.frombuffer(mv, dtype=np.uint8, count=last_off).reshape(full, seg_size)
        expected = _FIRST_PREFIX.pack(sport, dport, word) + _FIRST_PREFIX.pack(
            sport, dport, word ^ 1
        ).join(fields)
        if rows[:, :SCLP_HLEN].tobytes() + mv[last_off : last_off + SCLP_HLEN] != expected:
            return None
        payload = np.empty(total, dtype=np.uint8)
        payload[: full * plen].reshape(full, plen)[...] = rows[:, SCLP_HLEN:]
        payload[full * plen :] = np.frombuffer(mv, dtype=np.uint8, offset=last_off + SCLP_HLEN)
        self._account.completed += 1
        self._table.remember(key, now)
        return Completed(sport, dport, payload.data)

    @staticmethod
    def _segment_problem(first: int, plen: int, hi: int) -> DropReason | None:
        """Checks that need only the segment itself: it must end inside a payload of at
        most 65,535 bytes (``hi`` = its payload length + Remaining: a first segment's
        total, a lower bound of it for the others); a later segment must carry bytes."""
        if hi > SCLP_MAX_PAYLOAD:
            return DropReason.OVERSIZE
        if plen == 0 and not first:
            return DropReason.MALFORMED
        return None

    def _add_run(
        self, key: _Key, first: int, lo: int, hi: int, pieces: list[memoryview], now: float
    ) -> Completed | None:
        """Place ``pieces``: consecutive segment payloads of one key covering the tail
        range ``[lo, hi)``, in payload order; only the first piece may be a first
        segment (``first``).  ``key`` is (tag, src, dst, sport, dport, ident)."""
        sport = key[3]
        dport = key[4]
        entry = self._entries.get(key)
        if entry is None:
            if key in self._finished:
                self._account.duplicates += len(pieces)
                return None
            if first and lo == 0:  # the whole payload, in order: no table entry
                self._account.completed += 1
                if len(pieces) == 1:
                    return Completed(sport, dport, pieces[0])
                self._table.remember(key, now)
                return Completed(sport, dport, b"".join(pieces))
            size = hi if first else self._pending_size
            if hi > size or not self._table.make_room(size, now):
                self.drops[DropReason.OVERSIZE] += 1  # the payload cannot fit under the cap
                self._table.remember(key, now)
                return None
            entry = _Entry(self._account, size, hi if first else -1)
            self._table.insert(key, entry, now)
        elif first:
            if entry.total < 0:
                reason = self._learn_total(entry, hi)
                if reason is not None:
                    self._table.discard(key, entry, reason, now)
                    return None
            elif hi != entry.total:
                self._table.discard(key, entry, DropReason.INCONSISTENT_TOTAL, now)
                return None
        elif entry.total >= 0:
            if hi > entry.total:
                self._table.discard(key, entry, DropReason.PAST_END, now)
                return None
        elif hi > entry.size:
            self._table.discard(key, entry, DropReason.OVERSIZE, now)
            return None

        los = entry.los
        buf = entry.buf
        size = entry.size
        if hi == lo:
            pass  # an empty first segment of a longer payload: only its total counts
        elif not los or hi <= los[0]:
            # In-order arrival: the run ends exactly where the lowest range starts (or
            # lies wholly below it).  Nothing to compare, copy straight in.
            if los and hi == los[0]:
                los[0] = lo
            elif len(los) >= _MAX_RANGES:
                self._table.discard(key, entry, DropReason.MALFORMED, now)
                return None
            else:
                los.insert(0, lo)
                entry.his.insert(0, hi)
            pos = size - hi
            for piece in pieces:
                end = pos + len(piece)
                buf[pos:end] = piece
                pos = end
            entry.received += hi - lo
        else:
            top = hi
            for piece in pieces:
                bottom = top - len(piece)
                reason = self._place(entry, bottom, top, piece)
                if reason is not None:
                    self._table.discard(key, entry, reason, now)
                    return None
                top = bottom
        if entry.received == entry.total:
            self._table.complete(key, entry, now)
            if size == entry.total:
                return Completed(sport, dport, buf)
            return Completed(sport, dport, memoryview(buf)[size - entry.total :])
        return None

    def _place(self, entry: _Entry, lo: int, hi: int, data: memoryview) -> DropReason | None:
        """Place one segment payload covering tail range ``[lo, hi)`` anywhere: compare
        the bytes it shares with ranges already received (identical: fine, a duplicate;
        different: OVERLAP), then copy it and merge the ranges."""
        los, his = entry.los, entry.his
        i = bisect_left(his, lo)  # first range ending at or after lo
        j = bisect_right(los, hi)  # first range starting after hi
        size = entry.size
        buf = entry.buf
        shared = 0
        for k in range(i, j):
            a = max(lo, los[k])
            b = min(hi, his[k])
            if a < b:
                if buf[size - b : size - a] != data[hi - b : hi - a]:
                    return DropReason.OVERLAP
                shared += b - a
        if shared == hi - lo:
            self._account.duplicates += 1
            return None
        if i < j:
            new_lo = min(lo, los[i])
            new_hi = max(hi, his[j - 1])
            los[i:j] = [new_lo]
            his[i:j] = [new_hi]
        elif len(los) >= _MAX_RANGES:
            return DropReason.MALFORMED
        else:
            los.insert(i, lo)
            his.insert(i, hi)
        buf[size - hi : size - lo] = data
        entry.received += hi - lo - shared
        return None

    def _learn_total(self, entry: _Entry, total: int) -> DropReason | None:
        """The first segment of an entry that so far had only later ones: check the
        ranges already received against the now known total."""
        if total > entry.size:
            return DropReason.OVERSIZE  # larger than the cap allowed for this entry
        if entry.his and entry.his[-1] > total:
            return DropReason.PAST_END
        entry.total = total
        return None

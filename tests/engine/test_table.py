"""One ReassemblyTable shared by the SCLP and the STT reassembler: one memory budget
(caps hold for both together), oldest-first eviction across both, one expire for both,
keys that never collide, and counters that stay per reassembler."""

from __future__ import annotations

import random
import struct

import pytest

from sclp.engine.reassembler import Reassembler
from sclp.engine.segmenter import Segmenter
from sclp.engine.stt import SttReassembler, SttSegmenter
from sclp.engine.table import ReassemblyTable, TableEntry
from sclp.wire.errors import DropReason
from sclp.wire.stt import STT_HLEN, STT_PORT

SRC, DST = bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2])
SPORT = 50123


def sclp_segments(n: int, ident: int, m: int = 1000, seed: int = 0) -> tuple[bytes, list[bytes]]:
    """A payload of ``n`` bytes and its SCLP segments (ports as the STT ones)."""
    payload = random.Random(seed).randbytes(n)
    batch = Segmenter(ident).segment_payload(payload, SPORT, STT_PORT, m)
    return payload, [bytes(s) for s in batch.segments()]


def stt_segments(n: int, ident: int, mss: int = 1000, seed: int = 1) -> tuple[bytes, list[bytes]]:
    """An STT frame of ``n`` bytes and its segments."""
    head = struct.pack("!BBBxHHQ2x", 0, 0, 0, 0, 0, 42)
    frame = (head + random.Random(seed).randbytes(max(0, n - STT_HLEN)))[:n]
    batch = SttSegmenter(ident_start=ident).segment_frame(frame, SPORT, mss, SRC, DST)
    return frame, [bytes(s) for s in batch.segments()]


def pair(
    timeout: float = 1.0, max_bytes: int = 1 << 20, max_entries: int = 64
) -> tuple[ReassemblyTable[TableEntry], Reassembler, SttReassembler]:
    table: ReassemblyTable[TableEntry] = ReassemblyTable(timeout, max_bytes, max_entries)
    return table, Reassembler(table=table), SttReassembler(table=table)


def sclp_add(r: Reassembler, seg: bytes, now: float = 0.0) -> bytes | None:
    done = r.add_segment(SRC, DST, seg, now)
    return None if done is None else bytes(done.payload)


def assert_consistent(
    table: ReassemblyTable[TableEntry], s: Reassembler, t: SttReassembler
) -> None:
    assert table.bytes_held == s.bytes_held + t.bytes_held <= table.max_bytes
    assert len(table.entries) == s.entries + t.entries <= table.max_entries


def test_same_addresses_ports_and_ident_do_not_collide() -> None:
    table, s, t = pair()
    payload, psegs = sclp_segments(3000, ident=7)
    frame, fsegs = stt_segments(2500, ident=7)
    assert sclp_add(s, psegs[0]) is None
    assert t.add_segment(SRC, DST, fsegs[0], 0.0) is None
    assert s.entries == 1 and t.entries == 1 and len(table.entries) == 2
    assert s.bytes_held == 3000 and t.bytes_held == 2 * 2500
    assert table.bytes_held == 3000 + 5000
    out_s = [sclp_add(s, seg) for seg in psegs[1:]]
    out_t = [t.add_segment(SRC, DST, seg, 0.0) for seg in fsegs[1:]]
    assert out_s[-1] == payload and out_t[-1] == frame
    assert s.completed == 1 and t.completed == 1
    assert not s.drops and not t.drops and s.duplicates == t.duplicates == 0
    assert table.bytes_held == 0 and not table.entries
    # the remembered keys stay apart too: a straggler of each is a duplicate of its own
    assert sclp_add(s, psegs[1]) is None and t.add_segment(SRC, DST, fsegs[1], 0.0) is None
    assert s.duplicates == 1 and t.duplicates == 1


def test_byte_cap_holds_for_both_together_and_evicts_oldest_across_them() -> None:
    table, s, t = pair(max_bytes=10_000)
    _, fsegs = stt_segments(2000, ident=1)  # 4000 bytes accounted (buffer + coverage)
    _, p1 = sclp_segments(4000, ident=1)
    _, p2 = sclp_segments(3000, ident=2)
    assert t.add_segment(SRC, DST, fsegs[0], 0.0) is None
    assert sclp_add(s, p1[0], 0.1) is None
    assert table.bytes_held == 8000
    assert_consistent(table, s, t)
    # 8000 + 3000 > 10000: the oldest entry of the table goes, the STT frame
    assert sclp_add(s, p2[0], 0.2) is None
    assert t.drops == {DropReason.EVICTED: 1} and not s.drops
    assert t.entries == 0 and s.entries == 2 and table.bytes_held == 7000
    assert_consistent(table, s, t)
    # and the other way round: an STT frame evicts the oldest SCLP payload
    _, big = stt_segments(3000, ident=2)  # 6000 bytes: 7000 + 6000 > 10000
    assert t.add_segment(SRC, DST, big[0], 0.3) is None
    assert s.drops == {DropReason.EVICTED: 1} and t.entries == 1 and s.entries == 1
    assert table.bytes_held == 3000 + 6000
    assert_consistent(table, s, t)


def test_entry_cap_holds_for_both_together() -> None:
    table, s, t = pair(max_entries=2)
    _, p1 = sclp_segments(3000, ident=1)
    _, f1 = stt_segments(3000, ident=1)
    _, p2 = sclp_segments(3000, ident=2)
    assert sclp_add(s, p1[0]) is None
    assert t.add_segment(SRC, DST, f1[0], 0.0) is None
    assert sclp_add(s, p2[0]) is None
    assert s.drops == {DropReason.EVICTED: 1} and not t.drops  # SCLP 1 was the oldest
    assert s.entries == 1 and t.entries == 1
    assert_consistent(table, s, t)


def test_oversize_is_judged_against_the_shared_cap() -> None:
    table, s, t = pair(max_bytes=5000)
    _, fsegs = stt_segments(3000, ident=1)  # 6000 accounted: can never fit
    assert t.add_segment(SRC, DST, fsegs[0], 0.0) is None
    assert t.drops == {DropReason.OVERSIZE: 1} and not s.drops
    _, psegs = sclp_segments(6000, ident=1)
    assert sclp_add(s, psegs[0]) is None
    assert s.drops == {DropReason.OVERSIZE: 1}
    assert table.bytes_held == 0


def test_expire_drives_both_and_next_deadline_is_the_tables() -> None:
    table, s, t = pair(timeout=1.0)
    assert s.next_deadline() is None and t.next_deadline() is None
    _, psegs = sclp_segments(3000, ident=1)
    _, fsegs = stt_segments(3000, ident=1)
    assert sclp_add(s, psegs[0], 10.0) is None
    assert t.add_segment(SRC, DST, fsegs[0], 10.5) is None
    assert s.next_deadline() == t.next_deadline() == table.next_deadline() == 11.0
    # the STT reassembler's expire discards the SCLP payload, counted by its owner
    assert t.expire(11.0) == 1
    assert s.drops == {DropReason.TIMEOUT: 1} and not t.drops
    assert s.next_deadline() == 11.5  # the STT frame
    assert s.expire(11.5) == 1
    assert t.drops == {DropReason.TIMEOUT: 1}
    assert s.entries == t.entries == 0 and table.bytes_held == 0
    # the remembered keys (of 11.0 and 11.5) are forgotten after the timeout
    assert s.next_deadline() == 12.0
    assert table.expire(12.0) == 0 and t.next_deadline() == 12.5
    assert table.expire(12.5) == 0 and table.next_deadline() is None


def test_a_segment_of_one_expires_the_other_lazily() -> None:
    table, s, t = pair(timeout=1.0)
    _, fsegs = stt_segments(3000, ident=1)
    assert t.add_segment(SRC, DST, fsegs[0], 0.0) is None
    payload, psegs = sclp_segments(500, ident=1)  # one segment: no state
    assert sclp_add(s, psegs[0], 2.0) == payload
    assert t.drops == {DropReason.TIMEOUT: 1} and t.entries == 0
    assert table.next_deadline() == 3.0  # the STT key, remembered from 2.0


def test_the_shared_tables_caps_and_timeout_apply() -> None:
    table: ReassemblyTable[TableEntry] = ReassemblyTable(2.0, 4000, 3)
    s = Reassembler(timeout=9.0, max_bytes=1 << 24, max_entries=1000, table=table)
    assert s.table is table
    _, psegs = sclp_segments(5000, ident=1)
    assert sclp_add(s, psegs[0]) is None
    assert s.drops == {DropReason.OVERSIZE: 1}
    # a segment that is not the first gets a buffer of the table's cap, not 65,535
    assert sclp_add(s, sclp_segments(3000, ident=2)[1][1], 0.0) is None
    assert s.bytes_held == 4000
    assert s.next_deadline() == 2.0


def test_own_table_by_default() -> None:
    a, b = Reassembler(), SttReassembler()
    assert a.table is not b.table
    assert (a.table.timeout, a.table.max_bytes, a.table.max_entries) == (1.0, 1 << 24, 1024)
    with pytest.raises(ValueError):
        ReassemblyTable(timeout=0)
    with pytest.raises(ValueError):
        ReassemblyTable(max_bytes=0)


@pytest.mark.parametrize("seed", range(20))
def test_random_interleaving_keeps_the_budget(seed: int) -> None:
    rng = random.Random(seed)
    table, s, t = pair(timeout=0.5, max_bytes=40_000, max_entries=6)
    streams: list[tuple[bool, bytes, list[bytes]]] = []
    for ident in range(12):
        if rng.random() < 0.5:
            payload, segs = sclp_segments(rng.randrange(100, 9000), ident, seed=ident)
            streams.append((True, payload, segs))
        else:
            frame, segs = stt_segments(rng.randrange(STT_HLEN, 9000), ident, seed=ident)
            streams.append((False, frame, segs))
    work = [(is_sclp, whole, seg) for is_sclp, whole, segs in streams for seg in segs]
    rng.shuffle(work)
    delivered = 0
    for i, (is_sclp, whole, seg) in enumerate(work):
        now = i * 0.01
        got = sclp_add(s, seg, now) if is_sclp else t.add_segment(SRC, DST, seg, now)
        if got is not None:
            assert got == whole
            delivered += 1
        assert_consistent(table, s, t)
    assert delivered == s.completed + t.completed
    table.expire(1e9)
    assert table.bytes_held == 0 and s.entries == t.entries == 0
    lost = sum(s.drops.values()) + sum(t.drops.values())
    assert delivered + lost >= len(streams)  # every stream delivered or counted as lost

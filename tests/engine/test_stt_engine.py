"""STT segmentation and reassembly: every segment field checked, the reference checksum,
a Scapy cross-check, and the reassembler fed in every order with every kind of bad
input."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sclp.engine.stt import (
    STT_WINDOW,
    SttReassembler,
    SttSegmentBatch,
    SttSegmenter,
    pseudo_sum_for,
)
from sclp.wire.checksum import checksum_reference, ones_sum
from sclp.wire.errors import DropReason
from sclp.wire.stt import STT_HLEN, STT_PORT

ACK, PSH = 0x10, 0x08
SRC4, DST4 = bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2])
SRC6 = bytes.fromhex("20010db8000000000000000000000001")
DST6 = bytes.fromhex("20010db8000000000000000000000002")


def stt_frame(n: int, seed: int = 0) -> bytes:
    """An STT frame of ``n`` bytes: an STT header (version 0, context 42) then noise."""
    head = struct.pack("!BBBxHHQ2x", 0, 0, 0, 0, 0, 42)
    return (head + random.Random(seed).randbytes(max(0, n - STT_HLEN)))[:n]


def pseudo(src: bytes, dst: bytes, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, 6, length)
    return src + dst + struct.pack("!I3xB", length, 6)


def segment(
    frame: bytes, mss: int = 1460, src: bytes = SRC4, dst: bytes = DST4, ident: int = 7
) -> SttSegmentBatch:
    return SttSegmenter(ident_start=ident).segment_frame(frame, 50123, mss, src, dst)


def check_batch(batch: SttSegmentBatch, frame: bytes, mss: int, src: bytes, dst: bytes) -> None:
    assert batch.stride == 20 + mss
    assert batch.count == -(-len(frame) // mss)
    assert (
        len(batch.buffer)
        == (batch.count - 1) * batch.stride + 20 + len(frame) - (batch.count - 1) * mss
    )
    data = b""
    for i, seg in enumerate(batch.segments()):
        seg_b = bytes(seg)
        last = i == batch.count - 1
        # views sit at the fixed stride in the one buffer
        assert seg_b == bytes(batch.buffer[i * batch.stride : i * batch.stride + len(seg_b)])
        assert len(seg_b) == 20 + (mss if not last else len(frame) - mss * i)
        sport, dport, seq, ack, doff, flags, window, _csum, urg = struct.unpack_from(
            "!HHIIBBHHH", seg_b
        )
        assert (sport, dport, ack, doff, window, urg) == (
            50123,
            STT_PORT,
            batch.ident,
            0x50,
            0xFFFF,
            0,
        )
        assert seq == (len(frame) << 16) | (i * mss)
        assert flags == (ACK | PSH if last else ACK)
        assert checksum_reference(pseudo(src, dst, len(seg_b)) + seg_b) == 0
        data += seg_b[20:]
    assert data == frame


@pytest.mark.parametrize(("src", "dst"), [(SRC4, DST4), (SRC6, DST6)])
@pytest.mark.parametrize("mss", [1460, 1440, 1447, 8000])
def test_segments_all_fields(src: bytes, dst: bytes, mss: int) -> None:
    frame = stt_frame(64018, mss)
    batch = segment(frame, mss, src, dst)
    check_batch(batch, frame, mss, src, dst)


def test_largest_frame_and_tiny_frames() -> None:
    check_batch(segment(stt_frame(65535), 1460), stt_frame(65535), 1460, SRC4, DST4)
    one = segment(stt_frame(STT_HLEN), 1460)
    assert one.count == 1
    check_batch(one, stt_frame(STT_HLEN), 1460, SRC4, DST4)
    exact = segment(stt_frame(2920), 1460)
    assert [len(s) for s in exact.segments()] == [1480, 1480]


def test_refusals() -> None:
    seg = SttSegmenter(0)
    with pytest.raises(ValueError):
        seg.segment_frame(bytes(65536), 1, 1460, SRC4, DST4)
    with pytest.raises(ValueError):
        seg.segment_frame(bytes(STT_HLEN - 1), 1, 1460, SRC4, DST4)
    with pytest.raises(ValueError):
        seg.segment_frame(bytes(100), 1, 0, SRC4, DST4)
    with pytest.raises(ValueError):
        seg.segment_frame(bytes(100), 70000, 1460, SRC4, DST4)
    with pytest.raises(ValueError):
        seg.segment_frame(bytes(100), 1, 1460, SRC4, DST6)
    with pytest.raises(ValueError):
        seg.segment_frame(bytes(100), 1, 1460, SRC4, DST4, ident=2**32)
    with pytest.raises(ValueError):
        SttSegmenter(-1)


def test_packet_id_counter() -> None:
    seg = SttSegmenter(ident_start=0xFFFFFFFE)
    ids = [seg.segment_frame(stt_frame(3000), 1, 1460, SRC4, DST4).ident for _ in range(3)]
    assert ids == [0xFFFFFFFE, 0xFFFFFFFF, 0]
    explicit = seg.segment_frame(stt_frame(3000), 1, 1460, SRC4, DST4, ident=99)
    assert explicit.ident == 99
    assert struct.unpack_from("!I", explicit.segments()[1], 8)[0] == 99
    assert seg.next_ident == 1  # an explicit ID does not consume the counter
    starts = {SttSegmenter().next_ident for _ in range(8)}
    assert len(starts) > 1 and all(0 <= s <= 0xFFFFFFFF for s in starts)


def test_pseudo_sum_for_rejects_bad_addresses() -> None:
    with pytest.raises(ValueError):
        pseudo_sum_for(b"\0" * 5, b"\0" * 5, 10)


def test_scapy_agrees() -> None:
    inet = pytest.importorskip("scapy.layers.inet")
    inet6 = pytest.importorskip("scapy.layers.inet6")
    frame = stt_frame(20000, 3)
    for src, dst in ((SRC4, DST4), (SRC6, DST6)):
        batch = segment(frame, 1448, src, dst)
        for seg in batch.segments():
            if len(src) == 4:
                ip = inet.IP(src=".".join(map(str, src)), dst=".".join(map(str, dst)))
            else:
                import ipaddress

                ip = inet6.IPv6(
                    src=str(ipaddress.IPv6Address(src)), dst=str(ipaddress.IPv6Address(dst))
                )
            pkt = ip / inet.TCP(bytes(seg))
            tcp_layer = pkt[inet.TCP]
            assert tcp_layer.dport == 7471 and tcp_layer.window == STT_WINDOW
            del tcp_layer.chksum
            rebuilt = bytes(pkt.__class__(bytes(pkt))[inet.TCP])
            assert rebuilt == bytes(seg)


# --- reassembly ---------------------------------------------------------------------


def feed(
    r: SttReassembler, segs: list[bytes], now: float = 0.0, src: bytes = SRC4, dst: bytes = DST4
) -> list[bytes]:
    out = []
    for s in segs:
        got = r.add_segment(src, dst, s, now)
        if got is not None:
            out.append(got)
    return out


@pytest.mark.parametrize("order", ["in_order", "reversed", "shuffled", "duplicated"])
def test_reassembly_orders(order: str) -> None:
    frame = stt_frame(64018, 1)
    segs = [bytes(s) for s in segment(frame).segments()]
    if order == "reversed":
        segs.reverse()
    elif order == "shuffled":
        random.Random(4).shuffle(segs)
    elif order == "duplicated":
        segs = [s for s in segs for _ in range(2)]
    r = SttReassembler()
    assert feed(r, segs) == [frame]
    assert r.completed == 1
    assert r.drops == {}
    assert r.entries == 0 and r.bytes_held == 0
    assert r.duplicates == (len(segs) // 2 if order == "duplicated" else 0)


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(STT_HLEN, 65535),
    mss=st.integers(500, 8960),
    data=st.data(),
)
def test_reassembly_any_permutation_with_duplicates(
    size: int, mss: int, data: st.DataObject
) -> None:
    frame = stt_frame(size, size)
    for src, dst in ((SRC4, DST4), (SRC6, DST6)):
        segs = [bytes(s) for s in segment(frame, mss, src, dst).segments()]
        order = data.draw(st.permutations(segs))
        dups = data.draw(st.lists(st.sampled_from(segs), max_size=5))
        # duplicates anywhere before the last original segment is delivered
        stream = list(order[:-1]) + dups + [order[-1]]
        r = SttReassembler()
        # a one-segment frame is stateless: each copy is delivered, like a datagram
        expected = [frame] * (1 + len(dups) if len(segs) == 1 else 1)
        assert feed(r, stream, src=src, dst=dst) == expected
        assert r.drops == {}
        assert r.entries == 0


def test_single_segment_frame_needs_no_entry() -> None:
    frame = stt_frame(1000)
    r = SttReassembler()
    assert feed(r, [bytes(s) for s in segment(frame).segments()]) == [frame]
    assert r.entries == 0


def test_late_duplicates_are_not_delivered_twice() -> None:
    small = [bytes(s) for s in segment(stt_frame(1000), ident=1).segments()]
    big = [bytes(s) for s in segment(stt_frame(5000), ident=2).segments()]
    r = SttReassembler(timeout=1.0)
    assert feed(r, small + big, now=0.0) == [stt_frame(1000), stt_frame(5000)]
    assert r.next_deadline() == 1.0  # the remembered key of the big frame
    # a one-segment frame leaves no state: its duplicate is delivered like a datagram
    assert feed(r, small, now=0.5) == [stt_frame(1000)]
    assert feed(r, big[:2], now=0.5) == []
    assert r.duplicates == 2 and r.entries == 0 and r.drops == {}
    # the memory of finished frames lasts one timeout, then a repeat is a new frame
    assert feed(r, big, now=1.5) == [stt_frame(5000)]
    # and holds at most max_entries keys
    capped = SttReassembler(max_entries=2)
    frames = [[bytes(s) for s in segment(stt_frame(3000), ident=i).segments()] for i in range(3)]
    for segs in frames:
        feed(capped, segs)
    assert feed(capped, frames[0]) == [stt_frame(3000)]  # forgotten: oldest of three
    assert feed(capped, frames[2]) == []


def test_stragglers_of_a_discarded_frame_are_ignored() -> None:
    r = SttReassembler()
    assert _add(r, _tcp((100 << 16) | 0, b"a" * 40)) is None
    assert _add(r, _tcp((100 << 16) | 90, b"b" * 20)) is None  # past the end: discarded
    assert _add(r, _tcp((100 << 16) | 40, b"c" * 40)) is None  # straggler
    assert r.entries == 0 and r.duplicates == 1
    assert r.drops == {DropReason.PAST_END: 1}


def test_interleaved_frames_and_keys() -> None:
    seg = SttSegmenter(100)
    a, b = stt_frame(10000, 1), stt_frame(9000, 2)
    sa = [bytes(s) for s in seg.segment_frame(a, 1, 1460, SRC4, DST4).segments()]
    sb = [bytes(s) for s in seg.segment_frame(b, 1, 1460, SRC4, DST4).segments()]
    r = SttReassembler()
    mixed = [s for pair in zip(sa, sb, strict=False) for s in pair] + sa[len(sb) :]
    assert sorted(feed(r, mixed)) == sorted([a, b])
    # the same packet ID from another source is another frame
    other = SttReassembler()
    src2 = bytes([192, 0, 2, 3])
    sa2 = [bytes(s) for s in SttSegmenter(100).segment_frame(a, 1, 1460, src2, DST4).segments()]
    for s1, s2 in zip(sa[:-1], sa2[:-1], strict=True):
        assert other.add_segment(SRC4, DST4, s1, 0.0) is None
        assert other.add_segment(src2, DST4, s2, 0.0) is None
    assert other.entries == 2


def test_bad_checksum_and_verify_flag() -> None:
    frame = stt_frame(5000, 2)
    segs = [bytearray(s) for s in segment(frame).segments()]
    segs[1][100] ^= 0x40
    r = SttReassembler()
    assert feed(r, [bytes(s) for s in segs]) == []
    assert r.drops == {DropReason.BAD_CHECKSUM: 1}
    # without verification the corrupted byte goes through
    r2 = SttReassembler()
    out = [r2.add_segment(SRC4, DST4, bytes(s), 0.0, verify_checksum=False) for s in segs]
    assert out[-1] is not None and out[-1] != frame and len(out[-1]) == len(frame)


def test_explicit_pseudo_sum() -> None:
    frame = stt_frame(3000, 2)
    segs = [bytes(s) for s in segment(frame).segments()]
    r = SttReassembler()
    results = [
        r.add_segment(SRC4, DST4, s, 0.0, True, pseudo_sum_for(SRC4, DST4, len(s))) for s in segs
    ]
    assert results[-1] == frame
    wrong = SttReassembler()
    assert wrong.add_segment(SRC4, DST4, segs[0], 0.0, True, 0x1234) is None
    assert wrong.drops == {DropReason.BAD_CHECKSUM: 1}
    # addresses that cannot make a pseudo-header
    odd = SttReassembler()
    assert odd.add_segment(b"x", b"y", segs[0], 0.0) is None
    assert odd.drops == {DropReason.MALFORMED: 1}


def _tcp(seq: int, data: bytes, ident: int = 5, dport: int = STT_PORT, doff: int = 5) -> bytes:
    return struct.pack("!HHIIBBHHH", 1, dport, seq, ident, doff << 4, ACK, 0, 0, 0) + data


def _add(r: SttReassembler, seg: bytes, now: float = 0.0) -> bytes | None:
    return r.add_segment(SRC4, DST4, seg, now, verify_checksum=False)


def test_malformed_segments_are_counted() -> None:
    r = SttReassembler()
    assert _add(r, b"\0" * 19) is None
    assert _add(r, _tcp(100 << 16, b"x" * 50, dport=80)) is None
    assert _add(r, _tcp(100 << 16, b"x" * 50, doff=4)) is None
    assert _add(r, _tcp(100 << 16, b"x" * 20, doff=15)) is None  # header past the end
    assert _add(r, _tcp(100 << 16, b"")) is None  # no data
    assert _add(r, _tcp(10 << 16, b"x" * 10)) is None  # frame shorter than an STT header
    assert r.drops == {
        DropReason.TOO_SHORT: 2,
        DropReason.UNKNOWN_PORT: 1,
        DropReason.MALFORMED: 3,
    }
    assert r.entries == 0


def test_past_end_discards_the_frame() -> None:
    r = SttReassembler()
    assert _add(r, _tcp((100 << 16) | 0, b"a" * 40)) is None
    assert r.entries == 1
    assert _add(r, _tcp((100 << 16) | 90, b"b" * 20)) is None
    assert r.entries == 0 and r.bytes_held == 0
    assert _add(r, _tcp((100 << 16) | 90, b"b" * 20, ident=9)) is None  # no entry
    assert r.drops == {DropReason.PAST_END: 2}


def test_inconsistent_total_discards_the_frame() -> None:
    r = SttReassembler()
    assert _add(r, _tcp((100 << 16) | 0, b"a" * 40)) is None
    assert _add(r, _tcp((120 << 16) | 40, b"b" * 40)) is None
    assert r.entries == 0
    assert r.drops == {DropReason.INCONSISTENT_TOTAL: 1}


def test_overlap_conflict_and_agreeing_overlap() -> None:
    frame = bytes(range(100))
    r = SttReassembler()
    assert _add(r, _tcp((100 << 16) | 0, frame[:60])) is None
    bad = bytearray(frame[40:80])
    bad[5] ^= 1  # byte 45: already received, now different
    assert _add(r, _tcp((100 << 16) | 40, bytes(bad))) is None
    assert r.drops == {DropReason.OVERLAP: 1} and r.entries == 0
    # fully covered but different: also a conflict
    assert _add(r, _tcp((100 << 16) | 0, frame[:60], ident=6)) is None
    assert _add(r, _tcp((100 << 16) | 10, b"z" * 20, ident=6)) is None
    assert r.drops == {DropReason.OVERLAP: 2}
    # overlapping pieces that agree (a resegmented retransmission) are merged
    ok = SttReassembler()
    assert _add(ok, _tcp((100 << 16) | 0, frame[:60])) is None
    assert _add(ok, _tcp((100 << 16) | 70, frame[70:])) is None
    assert _add(ok, _tcp((100 << 16) | 50, frame[50:75])) == frame
    assert ok.drops == {} and ok.bytes_held == 0


def test_timeout_and_next_deadline() -> None:
    r = SttReassembler(timeout=1.0)
    assert r.next_deadline() is None
    assert _add(r, _tcp((100 << 16) | 0, b"a" * 40), now=10.0) is None
    assert _add(r, _tcp((100 << 16) | 0, b"a" * 40, ident=6), now=10.5) is None
    assert r.next_deadline() == 11.0
    assert r.expire(10.99) == 0
    assert r.expire(11.0) == 1
    assert r.next_deadline() == 11.5
    # a late segment of the expired frame starts a new entry; the other one times out
    # when the next segment arrives, never later than that
    assert _add(r, _tcp((100 << 16) | 40, b"b" * 60), now=12.0) is None
    assert r.drops == {DropReason.TIMEOUT: 2}
    assert r.entries == 1


def test_entry_cap_evicts_oldest() -> None:
    r = SttReassembler(max_entries=2)
    for ident in (1, 2, 3):
        assert _add(r, _tcp((100 << 16) | 0, b"a" * 50, ident=ident)) is None
    assert r.entries == 2 and r.drops == {DropReason.EVICTED: 1}
    # frame 1 was the oldest: completing it now starts over; frame 2 completes fine
    assert _add(r, _tcp((100 << 16) | 50, b"b" * 50, ident=2)) == b"a" * 50 + b"b" * 50


def test_byte_cap_evicts_and_oversize() -> None:
    r = SttReassembler(max_bytes=2 * 1000 + 2 * 500)
    assert _add(r, _tcp((1000 << 16) | 0, b"a" * 10, ident=1)) is None
    assert _add(r, _tcp((500 << 16) | 0, b"a" * 10, ident=2)) is None
    assert r.bytes_held == 3000
    assert _add(r, _tcp((600 << 16) | 0, b"a" * 10, ident=3)) is None
    assert r.drops == {DropReason.EVICTED: 1}
    assert r.bytes_held == 2 * 500 + 2 * 600 <= 3000
    tiny = SttReassembler(max_bytes=1000)
    assert _add(tiny, _tcp((600 << 16) | 0, b"a" * 10)) is None
    assert tiny.drops == {DropReason.OVERSIZE: 1} and tiny.entries == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=20))
def test_fuzz_never_raises_and_respects_caps(segments: list[bytes]) -> None:
    r = SttReassembler(max_bytes=4096, max_entries=3)
    for i, raw in enumerate(segments):
        seg = struct.pack("!HH", 1, STT_PORT) + raw
        r.add_segment(SRC4, DST4, seg, float(i), verify_checksum=i % 2 == 0)
        assert r.bytes_held <= 4096 and r.entries <= 3


def test_constructor_validation() -> None:
    with pytest.raises(ValueError):
        SttReassembler(timeout=0)
    with pytest.raises(ValueError):
        SttReassembler(max_entries=0)


# -- receive batches (a packet tap's or receive ring's segments from any senders) -------

OTHER4 = bytes([192, 0, 2, 9])


def _with_checksum(seg: bytearray, src: bytes, dst: bytes = DST4) -> bytes:
    """``seg`` with its TCP checksum recomputed (a hostile sender's valid segment)."""
    seg[16:18] = b"\0\0"
    csum = checksum_reference(pseudo(src, dst, len(seg)) + bytes(seg))
    struct.pack_into("!H", seg, 16, csum)
    return bytes(seg)


@st.composite
def hostile_stt_inputs(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    """Segments of a few frames from two senders (keys sharing packet IDs, one-segment
    frames among them), then duplicated, reordered, truncated, corrupted with and
    without a valid checksum, re-pointed (frame length, offset) and mixed with junk."""
    items: list[tuple[bytes, bytes]] = []
    for k in range(draw(st.integers(1, 3))):
        size = draw(st.integers(STT_HLEN, 4000))
        mss = draw(st.sampled_from([90, 400, 1460]))
        src = draw(st.sampled_from([SRC4, OTHER4]))
        ident = draw(st.integers(0, 2))
        batch = segment(stt_frame(size, k), mss, src, DST4, ident)
        items += [(bytes(s), src) for s in batch.segments()]
    for _ in range(draw(st.integers(0, 6))):
        if not items:
            break
        i = draw(st.integers(0, len(items) - 1))
        seg, src = items[i]
        kind = draw(st.sampled_from(["dup", "flip", "resum", "seq", "cut", "junk", "port"]))
        if kind == "dup":
            items.insert(draw(st.integers(0, len(items))), (seg, src))
            continue
        b = bytearray(seg)
        if len(b) < 20 and kind not in ("cut", "junk"):
            continue  # already cut or junk
        if kind == "flip":  # a bit error: the checksum no longer holds
            b[draw(st.integers(0, len(b) - 1))] ^= 1 << draw(st.integers(0, 7))
            items[i] = (bytes(b), src)
        elif kind == "resum":  # other data under a good checksum
            b[
                draw(st.integers(0, len(b) - 1))
                if len(b) == 20
                else draw(st.integers(20, len(b) - 1))
            ] ^= 0xFF
            items.insert(i + 1, (_with_checksum(b, src), src))
        elif kind == "seq":  # another frame length or offset, checksum recomputed
            struct.pack_into("!I", b, 4, draw(st.integers(0, 0xFFFFFFFF)))
            items[i] = (_with_checksum(b, src), src)
        elif kind == "cut":
            items[i] = (seg[: draw(st.integers(0, len(seg)))], src)
        elif kind == "junk":
            items.insert(i, (draw(st.binary(max_size=60)), src))
        else:  # another port, or a data offset out of range, under a good checksum
            b[2:4] = b"\x1d\x30" if draw(st.booleans()) else b[2:4]
            b[12] = draw(st.sampled_from([0x40, 0x50, 0xF0]))
            items[i] = (_with_checksum(b, src), src)
    if draw(st.booleans()):
        items = draw(st.permutations(items))
    return items


def _slots(
    segments: list[bytes], rnd: random.Random
) -> tuple[list[memoryview], list[int], list[int]]:
    """Each segment in a receive slot of its own, after an IP-header-sized prefix and
    before stale bytes, as a packet tap's batch lays them out."""
    views, starts, ends = [], [], []
    for seg in segments:
        lead = rnd.choice([0, 20, 24])
        slot = bytearray(rnd.randbytes(lead)) + seg + rnd.randbytes(rnd.randint(0, 30))
        views.append(memoryview(slot))
        starts.append(lead)
        ends.append(lead + len(seg))
    return views, starts, ends


def _state(r: SttReassembler) -> tuple[object, ...]:
    return (dict(r.drops), r.completed, r.duplicates, r.entries, r.bytes_held)


@settings(max_examples=200, deadline=None)
@given(
    hostile_stt_inputs(),
    st.sampled_from([200_000, 9_000, 3_000]),
    st.integers(1, 50),
    st.randoms(use_true_random=False),
)
def test_a_batch_is_the_same_as_its_segments_one_by_one(
    inputs: list[tuple[bytes, bytes]], max_bytes: int, batch: int, rnd: random.Random
) -> None:
    """Whatever the segments (hostile ones included), however they are cut into
    batches and whether the caller summed them: the same frames from the same
    sources, the same counters and table."""
    one = SttReassembler(max_bytes=max_bytes, max_entries=3)
    many = SttReassembler(max_bytes=max_bytes, max_entries=3)
    expected = []
    for data, src in inputs:
        done = one.add_segment(src, DST4, data, 0.0)
        if done is not None:
            expected.append((src, done))
    got = []
    for i in range(0, len(inputs), batch):
        chunk = inputs[i : i + batch]
        views, starts, ends = _slots([d for d, _ in chunk], rnd)
        sums = (
            None
            if rnd.random() < 0.5
            else [ones_sum(v[a:b]) for v, a, b in zip(views, starts, ends, strict=True)]
        )
        got += many.add_batch([s for _, s in chunk], DST4, views, starts, ends, sums, 0.0)
    assert got == expected
    assert _state(many) == _state(one)


@pytest.mark.white_box  # patches a method: the pure-Python tree only
def test_a_whole_frame_in_order_takes_no_entry_and_no_piecewise_placing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frame = stt_frame(64000, 3)
    segs = [bytes(s) for s in segment(frame, 1448).segments()]
    views, starts, ends = _slots(segs, random.Random(1))
    r = SttReassembler()
    placed: list[int] = []
    place = r._place

    def counting(*args: object) -> object:
        placed.append(1)
        return place(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(r, "_place", counting)
    sums = [ones_sum(v[a:b]) for v, a, b in zip(views, starts, ends, strict=True)]
    assert r.add_batch([SRC4] * len(segs), DST4, views, starts, ends, sums, 0.0) == [(SRC4, frame)]
    assert placed == [] and r.entries == 0 and r.completed == 1
    # A frame split over two batches: continued as one run into its entry.
    r2 = SttReassembler()
    cut = 30
    assert r2.add_batch([SRC4] * cut, DST4, views[:cut], starts[:cut], ends[:cut], None, 0) == []
    assert r2.entries == 1
    rest = len(segs) - cut
    out = r2.add_batch([SRC4] * rest, DST4, views[cut:], starts[cut:], ends[cut:], None, 0.0)
    assert out == [(SRC4, frame)] and r2.entries == 0
    # Late copies of its segments are duplicates, not a second frame.
    assert r.add_batch([SRC4] * 3, DST4, views[:3], starts[:3], ends[:3], None, 0.0) == []
    assert r.duplicates == 3 and not r.drops


def test_a_batch_can_skip_the_hosts_other_tcp_traffic() -> None:
    frame = stt_frame(3000, 4)
    segs = [bytes(s) for s in segment(frame, 1000).segments()]
    other = struct.pack("!HHIIBBHHH", 40000, 22, 1, 1, 0x50, 0x10, 100, 0, 0) + b"ssh"
    stream = [segs[0], other, b"\x01", segs[1], segs[2]]
    views, starts, ends = _slots(stream, random.Random(5))
    r = SttReassembler()
    out = r.add_batch([SRC4] * 5, DST4, views, starts, ends, None, 0.0, skip_foreign=True)
    assert out == [(SRC4, frame)] and r.foreign == 2 and not r.drops
    counted = SttReassembler()
    assert counted.add_batch([SRC4] * 5, DST4, views, starts, ends, None, 0.0) == [(SRC4, frame)]
    assert counted.drops == {DropReason.UNKNOWN_PORT: 1, DropReason.TOO_SHORT: 1}

import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sclp.engine.reassembler import Completed, Reassembler
from sclp.engine.segmenter import SegmentBatch, Segmenter
from sclp.wire import sclp
from sclp.wire.checksum import ones_sum
from sclp.wire.errors import DropReason
from sclp.wire.sclp import SCLP_HLEN, SCLP_MAX_PAYLOAD, Carrier, SclpHeader

A, B = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"  # outer addresses (opaque to the table)


def payload_of(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def batch_of(payload: bytes, m: int = 1468, ident: int = 77, checksum: bool = True) -> SegmentBatch:
    return Segmenter(ident).segment_payload(payload, 50000, 4789, m, checksum=checksum)


def segments_of(payload: bytes, m: int = 1468, ident: int = 77) -> list[bytes]:
    return [bytes(s) for s in batch_of(payload, m, ident).segments()]


def raw_segment(
    ident: int,
    first: bool,
    remaining: int,
    data: bytes,
    sport: int = 50000,
    dport: int = 4789,
    checksum: bool = True,
) -> bytes:
    """A hand-made segment with any field values (and a correct checksum)."""
    h = SclpHeader(sport, dport, ident, first, remaining)
    if checksum:
        h = replace(h, checksum=sclp.compute_checksum(h, data))
    return sclp.encode(h) + data


def feed(r: Reassembler, segments: list[bytes], now: float = 0.0) -> list[bytes]:
    """Feed segments one by one; return the payloads delivered (copied)."""
    out = []
    for s in segments:
        done = r.add_segment(A, B, s, now)
        if done is not None:
            assert isinstance(done, Completed)
            assert (done.sport, done.dport) == (50000, 4789)
            out.append(bytes(done.payload))
    return out


def assert_empty(r: Reassembler) -> None:
    assert r.entries == 0 and r.bytes_held == 0


# -- arrival orders ---------------------------------------------------------------------


def test_in_order_delivers_once_and_frees_everything() -> None:
    payload = payload_of(65000)
    segs = segments_of(payload)
    r = Reassembler()
    out = feed(r, segs[:-1])
    assert out == [] and r.entries == 1 and r.bytes_held == 65000
    assert feed(r, segs[-1:]) == [payload]
    assert_empty(r)
    assert r.completed == 1 and not r.drops


def test_unsegmented_payload_needs_no_entry_and_is_not_copied() -> None:
    seg = bytearray(segments_of(b"hello, world")[0])
    r = Reassembler()
    done = r.add_segment(A, B, seg, 0.0)
    assert done is not None and bytes(done.payload) == b"hello, world"
    assert_empty(r)
    seg[SCLP_HLEN] = ord("j")  # documented: the payload is a view into the caller's buffer
    assert bytes(done.payload) == b"jello, world"


def test_empty_payload() -> None:
    r = Reassembler()
    assert feed(r, segments_of(b"")) == [b""]
    assert_empty(r)


@pytest.mark.parametrize("order", ["reversed", "shuffled", "last-first", "first-last"])
def test_out_of_order(order: str) -> None:
    payload = payload_of(20000, seed=3)
    segs = segments_of(payload, m=1000)
    if order == "reversed":
        segs = segs[::-1]
    elif order == "shuffled":
        random.Random(5).shuffle(segs)
    elif order == "last-first":
        segs = segs[-1:] + segs[:-1]
    else:
        segs = segs[1:] + segs[:1]
    r = Reassembler()
    assert feed(r, segs) == [payload]
    assert_empty(r)
    assert not r.drops


def test_segment_before_first_is_held_until_total_known() -> None:
    payload = payload_of(3000)
    first, middle, last = segments_of(payload)
    r = Reassembler()
    assert feed(r, [last, middle]) == []
    assert r.entries == 1 and r.bytes_held == SCLP_MAX_PAYLOAD  # total unknown: largest buffer
    assert feed(r, [first]) == [payload]
    assert_empty(r)


def test_duplicates_are_ignored_not_dropped() -> None:
    payload = payload_of(5000)
    segs = segments_of(payload)
    r = Reassembler()
    assert feed(r, [segs[0], segs[1], segs[1], segs[0], segs[2], segs[2]]) == []
    assert feed(r, [segs[3]]) == [payload]
    assert r.duplicates == 3 and not r.drops


def test_late_duplicate_after_completion_opens_no_entry() -> None:
    payload = payload_of(5000)
    segs = segments_of(payload)
    r = Reassembler()
    assert feed(r, segs) == [payload]
    assert feed(r, [segs[2], segs[0]]) == []
    assert_empty(r)
    assert r.duplicates == 2 and not r.drops
    # After the timeout the key is forgotten: the same segment starts a new entry.
    assert feed(r, [segs[2]], now=1.5) == []
    assert r.entries == 1


def test_consistent_partial_overlap_is_accepted() -> None:
    payload = payload_of(3000)
    r = Reassembler()
    segs = [
        raw_segment(9, True, 2000, payload[:1000]),
        raw_segment(9, False, 1000, payload[500:2000]),  # overlaps [500, 1000) identically
        raw_segment(9, False, 0, payload[1800:]),  # overlaps [1800, 2000) identically
    ]
    assert feed(r, segs) == [payload]
    assert not r.drops


def test_addresses_and_ports_are_part_of_the_key() -> None:
    payload = payload_of(3000)
    segs = segments_of(payload)
    r = Reassembler()
    assert r.add_segment(A, B, segs[0], 0.0) is None
    assert r.add_segment(B, A, segs[1], 0.0) is None  # other direction: another entry
    assert r.add_segment("10.0.0.9", B, segs[2], 0.0) is None
    other_port = raw_segment(77, False, 0, payload[2936:], sport=50001)
    assert r.add_segment(A, B, other_port, 0.0) is None
    assert r.entries == 4
    done = [r.add_segment(A, B, s, 0.0) for s in segs[1:]]
    assert done[0] is None and done[1] is not None and bytes(done[1].payload) == payload


# -- drops ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 11])
def test_too_short(n: int) -> None:
    r = Reassembler()
    assert r.add_segment(A, B, bytes(n), 0.0) is None
    assert r.drops == {DropReason.TOO_SHORT: 1}


def test_bad_checksum_dropped_and_payload_not_delivered() -> None:
    payload = payload_of(5000)
    segs = segments_of(payload)
    bad = bytearray(segs[2])
    bad[100] ^= 0x10
    r = Reassembler()
    assert feed(r, [*segs[:2], bytes(bad), *segs[3:]]) == []
    assert r.drops == {DropReason.BAD_CHECKSUM: 1}
    assert feed(r, [segs[2]]) == [payload]  # the good copy still completes it


def test_zero_checksum_accepted_only_with_udp_carrier() -> None:
    payload = payload_of(4000)
    segs = [bytes(s) for s in batch_of(payload, checksum=False).segments()]
    udp = Reassembler(carrier=Carrier.UDP)
    assert feed(udp, segs) == [payload]
    native = Reassembler(carrier=Carrier.IP)
    assert feed(native, segs) == []
    assert native.drops == {DropReason.BAD_CHECKSUM: len(segs)}
    assert_empty(native)


def test_wrong_nonzero_checksum_dropped_with_udp_carrier() -> None:
    seg = bytearray(segments_of(b"abc" * 10)[0])
    seg[SCLP_HLEN] ^= 1
    r = Reassembler(carrier=Carrier.UDP)
    assert r.add_segment(A, B, seg, 0.0) is None
    assert r.drops == {DropReason.BAD_CHECKSUM: 1}


def test_conflicting_overlap_discards_whole_payload_never_spliced() -> None:
    payload = payload_of(3000)
    forged = bytearray(payload[500:1500])
    forged[300] ^= 0xFF
    r = Reassembler()
    segs = [
        raw_segment(9, True, 2000, payload[:1000]),
        raw_segment(9, False, 1500, bytes(forged)),  # [500, 1500): one byte differs
        raw_segment(9, False, 0, payload[1000:]),
    ]
    assert feed(r, segs) == []
    assert r.drops == {DropReason.OVERLAP: 1}
    assert_empty(r)
    # Every straggler of the discarded payload is ignored, in any order.
    assert feed(r, [segs[2], segs[0]]) == []
    assert_empty(r)


def test_conflicting_duplicate_of_same_range_is_overlap() -> None:
    payload = payload_of(3000)
    segs = segments_of(payload)
    changed = raw_segment(77, False, 64, bytes(1468))
    r = Reassembler()
    assert feed(r, [segs[1], changed, segs[0], segs[2]]) == []
    assert r.drops == {DropReason.OVERLAP: 1}


def test_first_segments_disagreeing_on_total() -> None:
    r = Reassembler()
    assert (
        feed(r, [raw_segment(5, True, 1000, bytes(100)), raw_segment(5, True, 900, bytes(100))])
        == []
    )
    assert r.drops == {DropReason.INCONSISTENT_TOTAL: 1}
    assert_empty(r)


def test_later_segment_overlapping_the_first() -> None:
    data = payload_of(1100)
    first = raw_segment(5, True, 1000, data[:100])
    same = raw_segment(5, False, 1000, data[:100])  # F clear but the first's bytes: harmless
    other = raw_segment(5, False, 1000, bytes(100))
    r = Reassembler()
    assert feed(r, [same, first, raw_segment(5, False, 0, data[100:])]) == [data]
    assert r.duplicates == 1 and not r.drops
    r = Reassembler()
    assert feed(r, [first, other]) == []
    assert r.drops == {DropReason.OVERLAP: 1}
    r = Reassembler()
    assert feed(r, [other, first]) == []
    assert r.drops == {DropReason.OVERLAP: 1}
    assert_empty(r)


def test_segment_past_end_after_first() -> None:
    r = Reassembler()
    assert (
        feed(r, [raw_segment(5, True, 1000, bytes(100)), raw_segment(5, False, 50, bytes(1100))])
        == []
    )
    assert r.drops == {DropReason.PAST_END: 1}
    assert_empty(r)


def test_segment_past_end_before_first() -> None:
    r = Reassembler()
    assert (
        feed(r, [raw_segment(5, False, 50, bytes(1100)), raw_segment(5, True, 1000, bytes(100))])
        == []
    )
    assert r.drops == {DropReason.PAST_END: 1}
    assert_empty(r)


def test_total_over_65535_is_oversize() -> None:
    r = Reassembler()
    assert r.add_segment(A, B, raw_segment(5, True, 65535, bytes(1)), 0.0) is None
    assert r.add_segment(A, B, raw_segment(6, False, 65001, bytes(535)), 0.0) is None
    assert r.drops == {DropReason.OVERSIZE: 2}
    assert_empty(r)
    # The largest legal payload is fine, even reassembled out of order.
    payload = payload_of(SCLP_MAX_PAYLOAD)
    assert feed(r, segments_of(payload)[::-1]) == [payload]


def test_empty_first_segment_of_longer_payload() -> None:
    r = Reassembler()
    data = payload_of(300)
    segs = [raw_segment(4, True, 300, b""), raw_segment(4, False, 100, data[:200])]
    assert feed(r, [*segs, raw_segment(4, False, 0, data[200:])]) == [data]
    assert feed(r, [raw_segment(5, False, 0, data[200:]), raw_segment(5, True, 300, b"")]) == []
    assert feed(r, [raw_segment(5, False, 100, data[:200])]) == [data]
    assert not r.drops


def test_empty_later_segment_is_malformed_and_harmless() -> None:
    payload = payload_of(3000)
    segs = segments_of(payload)
    r = Reassembler()
    assert feed(r, [segs[0], raw_segment(77, False, 100, b""), segs[1], segs[2]]) == [payload]
    assert r.drops == {DropReason.MALFORMED: 1}


@pytest.mark.parametrize("order", [1, -1])
def test_payload_cut_into_slivers_is_dropped(order: int) -> None:
    # 1-byte segments with gaps between them: each one is a separate range to track.
    tails = list(range(0, 2 * 129, 2))[::order]
    slivers = [raw_segment(3, False, rem, b"x") for rem in tails]
    r = Reassembler()
    assert feed(r, slivers[:128]) == []
    assert r.entries == 1 and not r.drops
    assert feed(r, slivers[128:]) == []
    assert r.drops == {DropReason.MALFORMED: 1}
    assert_empty(r)


def test_payload_larger_than_byte_cap_is_refused() -> None:
    payload = payload_of(5000)
    r = Reassembler(max_bytes=4000)
    assert feed(r, segments_of(payload)) == []
    assert r.drops == {DropReason.OVERSIZE: 1} and r.duplicates == 3  # stragglers ignored
    assert_empty(r)
    # Reordered: the last 4000 bytes fit in a cap-sized buffer; the first segment shows
    # the payload does not.
    r = Reassembler(max_bytes=4000)
    assert feed(r, segments_of(payload, m=1000)[::-1]) == []
    assert r.drops == {DropReason.OVERSIZE: 1}
    assert_empty(r)
    r = Reassembler(max_bytes=3999)  # here the segment ending 4000 bytes from the end
    assert feed(r, segments_of(payload, m=1000)[::-1]) == []
    assert r.drops == {DropReason.OVERSIZE: 1} and r.duplicates == 1
    assert_empty(r)
    # A payload that fits the small cap still works in any order.
    small = payload_of(3500)
    for order in (1, -1):
        r = Reassembler(max_bytes=4000)
        assert feed(r, segments_of(small, m=1000)[::order]) == [small]


# -- time and memory --------------------------------------------------------------------


def test_timeout_discards_incomplete_payload() -> None:
    payload = payload_of(3000)
    segs = segments_of(payload)
    r = Reassembler(timeout=1.0)
    assert feed(r, segs[:2], now=10.0) == []
    assert r.expire(10.99) == 0 and r.entries == 1
    assert r.expire(11.0) == 1
    assert_empty(r)
    assert r.drops == {DropReason.TIMEOUT: 1}
    assert feed(r, segs[2:], now=11.1) == []  # a straggler of a discarded payload


def test_timeout_is_checked_lazily_by_add() -> None:
    r = Reassembler(timeout=0.5)
    first = segments_of(payload_of(3000), ident=1)
    second = segments_of(payload_of(3000), ident=2)
    assert feed(r, first[:1], now=0.0) == []
    assert feed(r, second[:1], now=0.4) == []
    assert r.entries == 2
    assert feed(r, second[1:], now=0.6) == [payload_of(3000)]  # the first one expires here
    assert r.drops == {DropReason.TIMEOUT: 1}
    assert_empty(r)


def test_next_deadline_tracks_entries_and_remembered_keys() -> None:
    r = Reassembler(timeout=1.0)
    assert r.next_deadline() is None
    first = segments_of(payload_of(3000), ident=1)
    second = segments_of(payload_of(3000), ident=2)
    assert feed(r, first[:1], now=10.0) == []
    assert feed(r, second[:1], now=10.5) == []
    assert r.next_deadline() == 11.0
    assert r.expire(10.99) == 0 and r.next_deadline() == 11.0
    assert r.expire(11.0) == 1
    assert r.next_deadline() == 11.5  # the second payload
    assert feed(r, second[1:], now=11.2) == [payload_of(3000)]
    assert r.next_deadline() == 12.0  # the first key, remembered at 11.0
    assert r.expire(12.0) == 0 and r.next_deadline() == 12.2  # the second key
    assert r.expire(12.2) == 0 and r.next_deadline() is None
    # an unsegmented payload leaves nothing to do
    assert feed(r, segments_of(payload_of(500), ident=3), now=13.0) == [payload_of(500)]
    assert r.next_deadline() is None


def test_entry_cap_evicts_oldest_first() -> None:
    payloads = [payload_of(3000, seed=i) for i in range(4)]
    segs = [segments_of(p, ident=i) for i, p in enumerate(payloads)]
    r = Reassembler(max_entries=3)
    for s in segs:
        assert feed(r, s[:1], now=0.0) == []
    assert r.entries == 3 and r.drops == {DropReason.EVICTED: 1}
    assert feed(r, segs[0][1:]) == []  # payload 0 was the oldest: gone
    for i in (1, 2, 3):
        assert feed(r, segs[i][1:]) == [payloads[i]]
    assert_empty(r)


def test_byte_cap_evicts_oldest_until_it_fits() -> None:
    payloads = [payload_of(3000, seed=i) for i in range(4)]
    segs = [segments_of(p, ident=i) for i, p in enumerate(payloads)]
    r = Reassembler(max_bytes=9000)
    for s in segs[:3]:
        feed(r, s[:1])
    assert r.bytes_held == 9000 and not r.drops
    feed(r, segs[3][:1])  # needs 3000 more: the oldest goes
    assert r.bytes_held == 9000 and r.drops == {DropReason.EVICTED: 1}
    assert feed(r, segs[0][1:]) == []
    assert feed(r, segs[1][1:] + segs[2][1:] + segs[3][1:]) == payloads[1:]
    # A reordered payload needs the largest buffer: it evicts as many as needed.
    r = Reassembler(max_bytes=70000)
    for s in segs[:3]:
        feed(r, s[:1])
    feed(r, segments_of(payload_of(3000), ident=50)[-1:])
    assert r.entries == 2 and r.bytes_held == 3000 + SCLP_MAX_PAYLOAD
    assert r.drops == {DropReason.EVICTED: 2}
    assert feed(r, segs[2][1:]) == [payloads[2]]  # the newest of the three survived


def test_constructor_rejects_nonsense() -> None:
    for kwargs in ({"timeout": 0}, {"max_bytes": 0}, {"max_entries": 0}):
        with pytest.raises(ValueError):
            Reassembler(**kwargs)  # type: ignore[arg-type]


# -- coalesced (GRO) buffers ------------------------------------------------------------


def test_coalesced_whole_payload_fast_path() -> None:
    payload = payload_of(40000)
    batch = batch_of(payload)
    r = Reassembler()
    out = r.add_coalesced(A, B, batch.buffer, batch.stride, 0.0)
    assert [bytes(c.payload) for c in out] == [payload]
    assert_empty(r)
    # Its stragglers are ignored like any completed payload's.
    assert r.add_coalesced(A, B, batch.buffer, batch.stride, 0.0) == []
    assert r.duplicates == batch.count


def test_coalesced_buffer_spanning_payload_boundaries() -> None:
    # Kernel GRO merges equal-sized datagrams of one flow (only the last may be shorter),
    # so one buffer can hold the tail of one payload, whole payloads, the head of another.
    p1, p2, p3 = payload_of(3 * 1468, 1), payload_of(2 * 1468, 2), payload_of(5000, 3)
    s1, s2, s3 = (batch_of(p, ident=i).segments() for i, p in enumerate((p1, p2, p3)))
    gro = b"".join(bytes(s) for s in [*s1[1:], *s2, *s3[:2]])
    r = Reassembler()
    assert r.add_segment(A, B, s1[0], 0.0) is None
    out = r.add_coalesced(A, B, gro, SCLP_HLEN + 1468, 0.0)
    assert [bytes(c.payload) for c in out] == [p1, p2]
    assert r.entries == 1
    rest = b"".join(bytes(s) for s in s3[2:])
    out = r.add_coalesced(A, B, rest, SCLP_HLEN + 1468, 0.0)
    assert [bytes(c.payload) for c in out] == [p3]
    assert_empty(r)


def test_coalesced_mixed_payloads_with_equal_segments() -> None:
    # Two payloads whose segments are all full-sized can share one GRO buffer.
    p1, p2 = payload_of(2936, 1), payload_of(4404, 2)
    b1, b2 = batch_of(p1, ident=1), batch_of(p2, ident=2)
    gro = bytes(b1.buffer) + bytes(b2.buffer)
    r = Reassembler()
    assert [bytes(c.payload) for c in r.add_coalesced(A, B, gro, b1.stride, 0)] == [p1, p2]
    assert_empty(r)


def test_coalesced_bad_segment_in_the_middle() -> None:
    payload = payload_of(10000)
    batch = batch_of(payload)
    buf = bytearray(batch.buffer)
    buf[3 * batch.stride + 40] ^= 1
    r = Reassembler()
    assert r.add_coalesced(A, B, buf, batch.stride, 0.0) == []
    assert r.drops == {DropReason.BAD_CHECKSUM: 1}
    good = batch.segments()[3]
    done = r.add_segment(A, B, good, 0.0)
    assert done is not None and bytes(done.payload) == payload


def test_coalesced_truncated_tail_and_arguments() -> None:
    payload = payload_of(4000)
    batch = batch_of(payload)
    r = Reassembler()
    buf = bytes(batch.buffer[: 2 * batch.stride + 5])  # third segment cut inside its header
    assert r.add_coalesced(A, B, buf, batch.stride, 0.0) == []
    assert r.drops == {DropReason.TOO_SHORT: 1}
    assert r.add_coalesced(A, B, b"", batch.stride, 0.0) == []
    with pytest.raises(ValueError):
        r.add_coalesced(A, B, buf, 0, 0.0)


def test_coalesced_zero_checksums_udp_carrier() -> None:
    payload = payload_of(30000)
    batch = batch_of(payload, checksum=False)
    udp = Reassembler(carrier=Carrier.UDP)
    assert [bytes(c.payload) for c in udp.add_coalesced(A, B, batch.buffer, batch.stride, 0)] == [
        payload
    ]
    native = Reassembler()
    assert native.add_coalesced(A, B, batch.buffer, batch.stride, 0) == []
    assert native.drops == {DropReason.BAD_CHECKSUM: batch.count}


def _no_general_path(r: Reassembler, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("the general path ran")

    monkeypatch.setattr(r, "_add_run", fail)


@pytest.mark.white_box  # patches a method: the pure-Python tree only
def test_udp_carrier_whole_gro_buffer_takes_the_in_order_fast_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A GRO buffer that is exactly one payload in order, zero checksums (what our UDP
    carrier sends): recognised without the per-segment loop, copied out once, its key
    remembered so that stragglers are ignored."""
    payload = payload_of(64000, seed=4)
    batch = batch_of(payload, m=1460, checksum=False)
    buf = bytearray(batch.buffer)
    r = Reassembler(carrier=Carrier.UDP)
    with monkeypatch.context() as m:
        _no_general_path(r, m)
        out = r.add_coalesced(A, B, memoryview(buf), batch.stride, 0.0)
    assert [bytes(c.payload) for c in out] == [payload]
    assert (out[0].sport, out[0].dport) == (50000, 4789)
    buf[SCLP_HLEN] ^= 0xFF  # the payload is a copy: the receive slot may be reused
    assert bytes(out[0].payload) == payload
    assert_empty(r)
    assert r.completed == 1 and not r.drops
    assert r.add_coalesced(A, B, batch.buffer, batch.stride, 0.0) == []
    assert r.duplicates == batch.count


def _swap(buf: bytes, stride: int, i: int, j: int) -> bytes:
    segs = [buf[o : o + stride] for o in range(0, len(buf), stride)]
    segs[i], segs[j] = segs[j], segs[i]
    return b"".join(segs)


@pytest.mark.parametrize(
    "case", ["reordered", "two-payloads", "checksummed", "tail-only", "short-last", "bad-rem"]
)
def test_udp_carrier_gro_buffers_the_fast_path_refuses_take_the_general_one(case: str) -> None:
    payload = payload_of(20000, seed=6)
    batch = batch_of(payload, m=1460, checksum=case == "checksummed")
    buf, stride = bytes(batch.buffer), batch.stride
    r = Reassembler(carrier=Carrier.UDP)
    expected = [payload]
    if case == "reordered":  # segments 2 and 3 swapped inside one buffer
        buf = _swap(buf, stride, 2, 3)
    elif case == "two-payloads":  # the first payload's head, then a whole other one
        other = payload_of(2 * 1460, seed=7)
        buf = bytes(batch_of(payload, m=1460, ident=5, checksum=False).buffer[: 2 * stride])
        buf += bytes(batch_of(other, m=1460, ident=6, checksum=False).buffer)
        expected = [other]
    elif case == "tail-only":  # no first segment: held until the rest comes
        assert r.add_coalesced(A, B, buf[stride:], stride, 0.0) == []
        assert r.entries == 1
        buf = buf[:stride]
    elif case == "short-last":  # the last segment cut short: the totals disagree
        buf = buf[:-5]
        expected = []
    elif case == "bad-rem":  # a middle segment's Remaining off by one
        wrong = bytearray(buf)
        wrong[4 * stride + 9] ^= 1
        buf = bytes(wrong)
        expected = []
    out = r.add_coalesced(A, B, buf, stride, 0.0)
    assert [bytes(c.payload) for c in out] == expected
    if expected == [payload]:
        assert_empty(r)
        assert not r.drops


# -- properties -------------------------------------------------------------------------

MODES = ["in-order", "reversed", "shuffled", "duplicated", "coalesced"]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[bytes, int, Carrier, bool]:
    # Hypothesis favours small integers; draw large payloads uniformly on purpose.
    uniform = st.integers(0, 2**32 - 1).map(lambda x: x % (SCLP_MAX_PAYLOAD + 1))
    n = draw(st.one_of(st.integers(0, 3000), uniform, st.sampled_from([SCLP_MAX_PAYLOAD])))
    mtu = draw(st.integers(576, 9000))
    version = draw(st.sampled_from([4, 6]))
    if version == 6:
        mtu = max(mtu, 1280)
    carrier = draw(st.sampled_from(list(Carrier)))
    checksum = carrier is Carrier.IP or draw(st.booleans())
    return (
        payload_of(n, seed=n),
        sclp.segment_payload_size(mtu, version, carrier),
        carrier,
        checksum,
    )


@settings(max_examples=120, deadline=None)
@given(scenarios(), st.sampled_from(MODES), st.randoms(use_true_random=False))
def test_any_arrival_order_delivers_exactly_once(
    scenario: tuple[bytes, int, Carrier, bool], mode: str, rnd: random.Random
) -> None:
    payload, m, carrier, checksum = scenario
    batch = batch_of(payload, m=m, checksum=checksum)
    segs = [bytes(s) for s in batch.segments()]
    r = Reassembler(carrier=carrier)
    out: list[bytes] = []
    if mode == "coalesced":
        runs = []
        i = 0
        while i < len(segs):
            k = rnd.randint(1, 8)
            runs.append(bytes(batch.buffer[i * batch.stride : (i + k) * batch.stride]))
            i += k
        if rnd.random() < 0.5:
            rnd.shuffle(runs)
        for run in runs:
            out += [bytes(c.payload) for c in r.add_coalesced(A, B, run, batch.stride, 0.0)]
    else:
        order = segs[:]
        if mode == "reversed":
            order.reverse()
        elif mode == "shuffled":
            rnd.shuffle(order)
        elif mode == "duplicated":
            order += [rnd.choice(segs) for _ in range(rnd.randint(1, 5))]
            rnd.shuffle(order)
        out = feed(r, order)
    if mode == "duplicated" and len(segs) == 1:
        # An unsegmented payload has no state: each network copy is delivered.
        assert out and all(o == payload for o in out)
    else:
        assert out == [payload]
    assert_empty(r)
    assert not r.drops


@settings(max_examples=80, deadline=None)
@given(
    st.one_of(st.integers(1, 3000), st.integers(0, 2**32 - 1).map(lambda x: 1 + x % 20000)),
    st.integers(576, 1500),
    st.booleans(),
    st.integers(0, 2**32 - 1),
    st.integers(1, 255),
)
def test_any_single_corrupted_byte_is_caught(
    n: int, mtu: int, coalesced: bool, where: int, flip: int
) -> None:
    payload = payload_of(n, seed=n)
    batch = batch_of(payload, m=sclp.segment_payload_size(mtu, 4, Carrier.IP))
    buf = bytearray(batch.buffer)
    buf[where % len(buf)] ^= flip
    r = Reassembler(carrier=Carrier.IP)
    if coalesced:
        out = r.add_coalesced(A, B, buf, batch.stride, 0.0)
    else:
        mv = memoryview(buf)
        done = [
            r.add_segment(A, B, mv[i : i + batch.stride], 0.0)
            for i in range(0, len(buf), batch.stride)
        ]
        out = [d for d in done if d is not None]
    assert out == []
    assert r.drops == {DropReason.BAD_CHECKSUM: 1}
    assert r.completed == 0


@st.composite
def hostile_segments(draw: st.DrawFn) -> bytes:
    """Random bytes, or segments with arbitrary fields and a valid checksum (so they get
    past the checksum and reach the table logic)."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.binary(max_size=80))
    ident = draw(st.integers(0, 2))
    first = draw(st.booleans())
    # Lengths and offsets on a 100-byte grid, so that segments of a key meet and overlap.
    n = draw(st.one_of(st.integers(0, 10).map(lambda x: x * 100), st.integers(0, 3000)))
    remaining = draw(st.one_of(st.integers(0, 30).map(lambda x: x * 100), st.integers(0, 0xFFFF)))
    data = bytes([draw(st.integers(0, 1))]) * n  # two byte values: duplicates and conflicts
    return raw_segment(ident, first, remaining, data, sport=1, dport=draw(st.sampled_from([2, 3])))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(hostile_segments(), st.booleans(), st.floats(0, 0.3)), max_size=40),
    st.sampled_from(list(Carrier)),
    st.integers(1, 200000),
    st.integers(1, 6),
)
def test_hostile_input_never_raises_and_respects_caps(
    inputs: list[tuple[bytes, bool, float]],
    carrier: Carrier,
    max_bytes: int,
    max_entries: int,
) -> None:
    r = Reassembler(carrier, timeout=0.5, max_bytes=max_bytes, max_entries=max_entries)
    now = 0.0
    pending: list[bytes] = []
    for data, coalesce, dt in inputs:
        now += dt
        if coalesce and pending:
            stride = max(1, *(len(p) for p in pending))
            buf = b"".join(p.ljust(stride, b"\0") for p in pending[:-1]) + data
            r.add_coalesced(A, B, buf, stride, now)
            pending = []
        else:
            r.add_segment(A, B, data, now)
            pending.append(data)
        assert r.bytes_held <= max_bytes
        assert r.entries <= max_entries
        assert r.bytes_held >= 0
    r.expire(now + 1.0)
    assert_empty(r)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=5000), st.integers(1, 2000), st.sampled_from(list(Carrier)))
def test_random_coalesced_bytes_never_raise(data: bytes, seg_size: int, carrier: Carrier) -> None:
    r = Reassembler(carrier, max_bytes=100000, max_entries=4)
    r.add_coalesced(A, B, data, seg_size, 0.0)
    assert r.bytes_held <= 100000


def test_checksum_verdict_from_the_caller_is_used() -> None:
    seg = bytearray(Segmenter(ident_start=9).segment_payload(b"x" * 100, 50000, 4789, 1468).buffer)
    r = Reassembler(Carrier.IP)
    assert r.add_segment("a", "b", seg, 0.0, checksum_ok=False) is None
    assert r.drops[DropReason.BAD_CHECKSUM] == 1
    seg[20] ^= 1  # the caller's verdict wins over the bytes (it summed them itself)
    done = r.add_segment("a", "b", seg, 0.0, checksum_ok=True)
    assert done is not None and len(bytes(done.payload)) == 100
    seg[10:12] = b"\0\0"  # a zero checksum stays illegal in native mode
    assert r.add_segment("a", "b", seg, 0.0, checksum_ok=True) is None
    assert r.drops[DropReason.BAD_CHECKSUM] == 2


# -- receive batches (native mode: one recvmmsg's segments from any senders) ------------


def _slots(
    segments: list[bytes], rnd: random.Random
) -> tuple[list[memoryview], list[int], list[int]]:
    """Each segment in a receive slot of its own, after an IP-header-sized prefix and
    before some stale bytes, as a raw socket's batch lays them out."""
    views, starts, ends = [], [], []
    for seg in segments:
        lead = rnd.choice([0, 20, 24])
        slot = bytearray(rnd.randbytes(lead)) + seg + rnd.randbytes(rnd.randint(0, 30))
        views.append(memoryview(slot))
        starts.append(lead)
        ends.append(lead + len(seg))
    return views, starts, ends


def _state(r: Reassembler) -> tuple[object, ...]:
    return (dict(r.drops), r.completed, r.duplicates, r.entries, r.bytes_held)


def test_batch_of_interleaved_senders_delivers_each_payload_with_its_source() -> None:
    p1, p2 = payload_of(20000, seed=1), payload_of(9000, seed=2)
    s1, s2 = segments_of(p1, ident=5), segments_of(p2, ident=5)  # same ident, other source
    order = [x for pair in zip(s1, s2, strict=False) for x in pair] + s1[len(s2) :]
    srcs = [A, B] * len(s2) + [A] * (len(s1) - len(s2))
    views, starts, ends = _slots(order, random.Random(3))
    r = Reassembler()
    out = r.add_batch(srcs, "me", views, starts, ends, None, 0.0)
    assert [(src, bytes(done.payload)) for src, done in out] == [(B, p2), (A, p1)]
    assert_empty(r)
    assert not r.drops


@pytest.mark.white_box  # patches a method: the pure-Python tree only
def test_batch_places_a_whole_in_order_payload_as_one_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """45 segments of one payload in one batch: one _add_run call, no table entry."""
    payload = payload_of(64000, seed=8)
    segs = segments_of(payload)
    views, starts, ends = _slots(segs, random.Random(1))
    sums = [ones_sum(v[a:b]) for v, a, b in zip(views, starts, ends, strict=True)]
    r = Reassembler()
    runs: list[int] = []
    add_run = r._add_run

    def counting(
        key: Any, first: int, lo: int, hi: int, pieces: list[memoryview], now: float
    ) -> Any:
        runs.append(len(pieces))
        return add_run(key, first, lo, hi, pieces, now)

    monkeypatch.setattr(r, "_add_run", counting)
    out = r.add_batch([A] * len(segs), B, views, starts, ends, sums, 0.0)
    assert [bytes(done.payload) for _, done in out] == [payload]
    assert runs == [len(segs)]
    assert_empty(r)


def test_batch_trusts_the_callers_sums() -> None:
    segs = segments_of(payload_of(3000, seed=3))
    views, starts, ends = _slots(segs, random.Random(2))
    r = Reassembler()
    assert r.add_batch([A, A, A], B, views, starts, ends, [0xFFFF, 0x1234, 0xFFFF], 0.0) == []
    assert r.drops == {DropReason.BAD_CHECKSUM: 1}
    assert r.entries == 1  # the other two wait for the middle one


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(hostile_segments(), st.sampled_from([A, B])), max_size=40),
    st.sampled_from(list(Carrier)),
    st.integers(1, 12),
    st.randoms(use_true_random=False),
)
def test_a_batch_is_the_same_as_its_segments_one_by_one(
    inputs: list[tuple[bytes, bytes]], carrier: Carrier, batch: int, rnd: random.Random
) -> None:
    """Whatever the segments (hostile ones included) and however they are cut into
    batches: the same payloads from the same sources, the same counters."""
    one = Reassembler(carrier, max_bytes=200000, max_entries=4)
    many = Reassembler(carrier, max_bytes=200000, max_entries=4)
    expected = []
    for data, src in inputs:
        done = one.add_segment(src, "me", data, 0.0)
        if done is not None:
            expected.append((src, done.sport, done.dport, bytes(done.payload)))
    got = []
    for i in range(0, len(inputs), batch):
        chunk = inputs[i : i + batch]
        views, starts, ends = _slots([d for d, _ in chunk], rnd)
        sums = (
            None
            if rnd.random() < 0.5
            else [ones_sum(v[a:b]) for v, a, b in zip(views, starts, ends, strict=True)]
        )
        for src, done in many.add_batch(
            [s for _, s in chunk], "me", views, starts, ends, sums, 0.0
        ):
            got.append((src, done.sport, done.dport, bytes(done.payload)))
    assert got == expected
    assert _state(many) == _state(one)

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sclp.engine.segmenter import (
    GATHER_MAX_SEGMENTS,
    UDP_GSO_MAX_BYTES,
    Pieces,
    SegmentBatch,
    Segmenter,
)
from sclp.wire import sclp
from sclp.wire.checksum import checksum_reference
from sclp.wire.sclp import SCLP_HLEN, SCLP_MAX_PAYLOAD, Carrier
from tests.wire.sclp_vectors import case_payload, load_cases

CASES = load_cases()


def reference_segments(
    payload: bytes, sport: int, dport: int, m: int, ident: int, checksum: bool = True
) -> list[bytes]:
    """Slow, literal sclp-spec §1/§3: one segment at a time, checksum_reference."""
    n = len(payload)
    count = max(1, -(-n // m))
    out = []
    for i in range(count):
        data = payload[i * m : (i + 1) * m]
        remaining = max(n - (i + 1) * m, 0)
        word = (ident << 1) | (i == 0)
        csum = 0
        if checksum:
            csum = checksum_reference(
                struct.pack("!HHIHH", sport, dport, word, remaining, 0) + data
            )
            csum = csum or 0xFFFF
        out.append(struct.pack("!HHIHH", sport, dport, word, remaining, csum) + data)
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_golden_vectors_byte_for_byte(case: dict[str, Any]) -> None:
    payload = case_payload(case)
    batch = Segmenter(case["identification"]).segment_payload(
        payload, case["sport"], case["dport"], case["segment_payload_size"]
    )
    expected = b""
    off = 0
    for seg in case["segments"]:
        expected += bytes.fromhex(seg["header_hex"]) + payload[off : off + seg["payload_len"]]
        off += seg["payload_len"]
    assert bytes(batch.buffer) == expected
    assert batch.count == len(batch) == len(case["segments"])
    assert batch.ident == case["identification"]
    assert batch.total == len(payload)
    assert batch.stride == SCLP_HLEN + case["segment_payload_size"]
    for view, seg in zip(batch.segments(), case["segments"], strict=True):
        assert bytes(view[:SCLP_HLEN]).hex() == seg["header_hex"]
        assert len(view) == SCLP_HLEN + seg["payload_len"]


def test_layout_is_one_udp_gso_buffer() -> None:
    payload = bytes(range(256)) * 12  # 3072 bytes
    batch = Segmenter(5).segment_payload(payload, 50000, 4789, 1000)
    assert (batch.count, batch.stride, batch.seg_size) == (4, 1012, 1000)
    assert len(batch.buffer) == 3 * 1012 + 12 + 72
    # Cutting the buffer every gso_size (= stride) bytes gives exactly the segments.
    cuts = [bytes(batch.buffer[i : i + batch.stride]) for i in range(0, len(batch.buffer), 1012)]
    assert cuts == [bytes(s) for s in batch.segments()]
    headers = [sclp.decode(s) for s in batch.segments()]
    assert [h.first for h in headers] == [True, False, False, False]
    assert [h.remaining for h in headers] == [2072, 1072, 72, 0]
    assert {h.ident for h in headers} == {5}
    assert b"".join(bytes(s[SCLP_HLEN:]) for s in batch.segments()) == payload


def test_empty_payload_is_one_first_segment() -> None:
    batch = Segmenter(9).segment_payload(b"", 1, 2, 1468)
    assert batch.count == 1 and len(batch.buffer) == SCLP_HLEN and batch.total == 0
    h = sclp.decode(batch.buffer)
    assert h.first and h.remaining == 0 and h.ident == 9
    sclp.verify_checksum(batch.buffer, Carrier.IP)


def test_exact_multiple_has_no_empty_tail_segment() -> None:
    batch = Segmenter(1).segment_payload(bytes(2936), 1, 2, 1468)
    assert batch.count == 2
    assert [sclp.decode(s).remaining for s in batch.segments()] == [1468, 0]
    assert len(batch.segments()[-1]) == SCLP_HLEN + 1468


def test_largest_payload_and_one_over() -> None:
    seg = Segmenter(0)
    batch = seg.segment_payload(bytes(SCLP_MAX_PAYLOAD), 1, 2, 1460)
    assert batch.count == 45 and sclp.decode(batch.buffer).remaining == SCLP_MAX_PAYLOAD - 1460
    with pytest.raises(ValueError):
        seg.segment_payload(bytes(SCLP_MAX_PAYLOAD + 1), 1, 2, 1460)
    assert seg.next_ident == 1  # the refused payload did not use an identification


@pytest.mark.parametrize(("sport", "dport", "m"), [(-1, 1, 10), (1, 65536, 10), (1, 1, 0)])
def test_bad_arguments(sport: int, dport: int, m: int) -> None:
    with pytest.raises(ValueError):
        Segmenter(0).segment_payload(b"abc", sport, dport, m)


def test_identification_counter_increments_and_wraps() -> None:
    seg = Segmenter(2**31 - 2)
    idents = [seg.segment_payload(b"x", 1, 2, 100).ident for _ in range(4)]
    assert idents == [2**31 - 2, 2**31 - 1, 0, 1]
    assert sclp.decode(seg.segment_payload(b"x", 1, 2, 100).buffer).ident == 2


def test_identification_start_is_random_31_bit() -> None:
    starts = {Segmenter().next_ident for _ in range(20)}
    assert len(starts) > 15
    assert all(0 <= s < 2**31 for s in starts)


@pytest.mark.parametrize("start", [-1, 2**31])
def test_identification_start_out_of_range(start: int) -> None:
    with pytest.raises(ValueError):
        Segmenter(start)


def test_checksum_off_leaves_zero_for_udp_carrier() -> None:
    batch = Segmenter(3).segment_payload(bytes(range(200)) * 20, 1, 2, 1460, checksum=False)
    for view in batch.segments():
        assert view[10:12] == b"\0\0"
        sclp.verify_checksum(view, Carrier.UDP)
    assert batch.buffer == b"".join(
        reference_segments(bytes(range(200)) * 20, 1, 2, 1460, 3, checksum=False)
    )


def test_gso_chunks_split_on_segment_boundaries() -> None:
    batch = Segmenter(1).segment_payload(bytes(SCLP_MAX_PAYLOAD), 1, 2, 1460)
    chunks = batch.gso_chunks()
    assert len(batch.buffer) > UDP_GSO_MAX_BYTES and len(chunks) == 2
    assert all(len(c) <= UDP_GSO_MAX_BYTES and len(c) % batch.stride == 0 for c in chunks[:-1])
    assert b"".join(bytes(c) for c in chunks) == batch.buffer
    small = batch.gso_chunks(max_segments=10)
    assert [len(c) // batch.stride for c in small[:-1]] == [10, 10, 10, 10]
    assert b"".join(bytes(c) for c in small) == batch.buffer
    with pytest.raises(ValueError):
        batch.gso_chunks(max_bytes=1000)


def test_gso_chunks_single_short_segment_fits() -> None:
    batch = Segmenter(1).segment_payload(b"tiny", 1, 2, 65000)
    assert [bytes(c) for c in batch.gso_chunks()] == [bytes(batch.buffer)]


def test_payload_is_copied() -> None:
    payload = bytearray(b"a" * 3000)
    batch = Segmenter(1).segment_payload(payload, 1, 2, 1468)
    payload[:] = b"b" * 3000
    assert b"b" not in batch.buffer[SCLP_HLEN:]


@settings(max_examples=60, deadline=None)
@given(
    payload=st.binary(max_size=SCLP_MAX_PAYLOAD),
    m=st.one_of(st.integers(1, 64), st.integers(500, 9000)),
    ident=st.integers(0, 2**31 - 1),
    sport=st.integers(0, 0xFFFF),
    dport=st.sampled_from([4789, 6081, 0, 0xFFFF]),
)
def test_matches_slow_reference(payload: bytes, m: int, ident: int, sport: int, dport: int) -> None:
    if len(payload) > 200 * m:
        payload = payload[: 200 * m]  # keep the slow reference quick
    batch = Segmenter(ident).segment_payload(payload, sport, dport, m)
    ref = reference_segments(payload, sport, dport, m, ident)
    assert [bytes(s) for s in batch.segments()] == ref
    assert batch.buffer == b"".join(ref)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, SCLP_MAX_PAYLOAD),
    st.integers(576, 9000),
    st.sampled_from([4, 6]),
    st.sampled_from(list(Carrier)),
)
def test_every_segment_verifies_and_fits_the_mtu(
    n: int, mtu: int, version: int, carrier: Carrier
) -> None:
    mtu = max(mtu, 1280) if version == 6 else mtu
    m = sclp.segment_payload_size(mtu, version, carrier)
    payload = (bytes(range(251)) * (n // 251 + 1))[:n]
    batch = Segmenter(7).segment_payload(payload, 50000, 4789, m)
    outer = (20 if version == 4 else 40) + (8 if carrier is Carrier.UDP else 0)
    assert isinstance(batch, SegmentBatch)
    for view in batch.segments():
        assert outer + len(view) <= mtu
        sclp.verify_checksum(view, Carrier.IP)
    assert batch.count == max(1, -(-n // m))


# -- gather_payload: the UDP carrier's iovec ---------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    payload=st.binary(max_size=5000),
    m=st.integers(1, 1500),
    start=st.integers(0, 64),
    sport=st.integers(0, 0xFFFF),
)
def test_gather_is_segment_payload_without_checksums(
    payload: bytes, m: int, start: int, sport: int
) -> None:
    buf = bytearray(start) + payload + b"tail"
    expected = Segmenter(ident_start=9).segment_payload(payload, sport, 4789, m, checksum=False)
    got = Segmenter(ident_start=9).gather_payload(buf, start, start + len(payload), sport, 4789, m)
    assert isinstance(got.pieces, Pieces)
    assert bytes(got.pieces) == bytes(expected.buffer)
    assert len(got.pieces) == len(expected.buffer)
    assert (got.stride, got.count, got.ident, got.total) == (
        expected.stride,
        expected.count,
        expected.ident,
        expected.total,
    )


def test_gather_views_the_buffer_and_rewrites_only_headers() -> None:
    """Views of the read buffer are kept while the same buffer comes back: the next
    payload's bytes and headers show through them; a new buffer gets new views."""
    seg = Segmenter(ident_start=1)
    buf = bytearray(b"a" * 10_000)
    first = seg.gather_payload(buf, 100, 9_100, 50000, 4789, 1460)
    assert first.count == 7 and len(first.pieces.parts) == 14
    buf[100:9_100] = b"b" * 9_000
    second = seg.gather_payload(buf, 100, 9_100, 50001, 4789, 1460)
    assert second.pieces is first.pieces  # the same iovec, rewritten
    reference = Segmenter(ident_start=2).segment_payload(b"b" * 9_000, 50001, 4789, 1460, False)
    assert bytes(second.pieces) == bytes(reference.buffer)
    other = bytearray(b"c" * 10_000)
    third = seg.gather_payload(other, 100, 9_100, 50001, 4789, 1460)
    assert third.pieces is not first.pieces
    assert bytes(third.pieces)[12:24] == b"c" * 12


def test_gather_falls_back_to_one_strided_copy_past_the_iovec_limit() -> None:
    payload = bytes(range(256)) * 20  # 5,120 bytes at M = 10: 512 segments
    assert -(-len(payload) // 10) > GATHER_MAX_SEGMENTS
    got = Segmenter(ident_start=3).gather_payload(bytearray(payload), 0, len(payload), 1, 2, 10)
    expected = Segmenter(ident_start=3).segment_payload(payload, 1, 2, 10, checksum=False)
    assert len(got.pieces.parts) == 1
    assert bytes(got.pieces) == bytes(expected.buffer)
    with pytest.raises(ValueError):
        Segmenter().gather_payload(bytearray(10), 0, 10, 70000, 1, 4)
    with pytest.raises(ValueError):
        Segmenter().gather_payload(bytearray(10), 0, 10, 1, 1, 0)


def test_pieces_after_drops_bytes_of_the_first_part() -> None:
    pieces = Pieces([b"abcdef", b"ghi"], 9)
    assert bytes(pieces.after(2)) == b"cdefghi" and len(pieces.after(2)) == 7
    with pytest.raises(ValueError):
        pieces.after(7)

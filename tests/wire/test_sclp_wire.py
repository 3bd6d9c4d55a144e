import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sclp.wire import sclp
from sclp.wire.checksum import checksum_reference
from sclp.wire.errors import DropReason, MalformedPacket
from sclp.wire.geneve import GENEVE_PORT
from sclp.wire.sclp import SCLP_HLEN, Carrier, SclpHeader
from sclp.wire.vxlan import VXLAN_PORT
from tests.wire.sclp_vectors import REPO_COPY, case_payload, load_cases, shared_copy

CASES = load_cases()


def case_segments(case: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """(header bytes, segment payload) of each golden segment."""
    payload = case_payload(case)
    out = []
    off = 0
    for seg in case["segments"]:
        out.append((bytes.fromhex(seg["header_hex"]), payload[off : off + seg["payload_len"]]))
        off += seg["payload_len"]
    assert off == len(payload)
    return out


def test_vectors_are_all_there() -> None:
    names = {c["name"] for c in CASES}
    assert {"unsegmented", "three-segments-native", "checksum-zero-becomes-ffff"} <= names


def test_repo_copy_of_vectors_matches_shared() -> None:
    shared = shared_copy()
    if shared is None:
        pytest.skip("shared/ not available")
    assert REPO_COPY.read_bytes() == shared.read_bytes()


def test_constants() -> None:
    assert sclp.SCLP_HLEN == 12
    assert sclp.IPPROTO_SCLP == 234
    assert (sclp.SCLP_PORT_VXLAN, sclp.SCLP_PORT_GENEVE) == (4789, 6081)
    # sclp-spec §2: the SCLP port names the format by that format's UDP port.
    assert (sclp.SCLP_PORT_VXLAN, sclp.SCLP_PORT_GENEVE) == (VXLAN_PORT, GENEVE_PORT)
    assert sclp.SCLP_UDP_PORT == 7234
    assert sclp.SCLP_MAX_PAYLOAD == 65535


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_golden_headers_decode(case: dict[str, Any]) -> None:
    for (header, _), seg in zip(case_segments(case), case["segments"], strict=True):
        h = sclp.decode(header)
        assert h == SclpHeader(
            sport=case["sport"],
            dport=case["dport"],
            ident=case["identification"],
            first=seg["first"],
            remaining=seg["remaining"],
            checksum=seg["checksum"],
        )
        assert sclp.encode(h) == header


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_golden_checksums(case: dict[str, Any]) -> None:
    carrier = Carrier(case["carrier"])
    for header, data in case_segments(case):
        h = sclp.decode(header)
        assert sclp.compute_checksum(h, data) == h.checksum
        sclp.verify_checksum(header + data, carrier)
        sclp.verify_checksum(header + data, Carrier.IP)  # a computed sum is fine anywhere


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_golden_segment_payload_size(case: dict[str, Any]) -> None:
    m = sclp.segment_payload_size(case["mtu"], case["ip_version"], Carrier(case["carrier"]))
    assert m == case["segment_payload_size"]


def test_identification_word_and_first_bit() -> None:
    h = SclpHeader(sport=1, dport=2, ident=0x7FFFFFFF, first=True, remaining=3, checksum=4)
    raw = sclp.encode(h)
    assert raw == bytes.fromhex("0001 0002 ffffffff 0003 0004")
    assert h.word == 0xFFFFFFFF
    h2 = SclpHeader(sport=1, dport=2, ident=0x40000000, first=False, remaining=0)
    assert sclp.encode(h2)[4:8] == bytes.fromhex("80000000")
    assert sclp.decode(sclp.encode(h2)) == h2


def test_encode_into_writes_at_offset_only() -> None:
    h = SclpHeader(sport=0xC350, dport=4789, ident=7, first=True, remaining=9, checksum=0xBEEF)
    buf = bytearray(b"\xaa" * 20)
    assert sclp.encode_into(buf, 3, h) == SCLP_HLEN
    assert buf[:3] == b"\xaa" * 3 and buf[15:] == b"\xaa" * 5
    assert sclp.decode(memoryview(buf)[3:]) == h


@pytest.mark.parametrize(
    "bad",
    [
        SclpHeader(sport=70000, dport=1, ident=0, first=False, remaining=0),
        SclpHeader(sport=1, dport=-1, ident=0, first=False, remaining=0),
        SclpHeader(sport=1, dport=1, ident=2**31, first=False, remaining=0),
        SclpHeader(sport=1, dport=1, ident=-1, first=False, remaining=0),
        SclpHeader(sport=1, dport=1, ident=0, first=False, remaining=65536),
        SclpHeader(sport=1, dport=1, ident=0, first=False, remaining=0, checksum=65536),
    ],
)
def test_encode_rejects_out_of_range_fields(bad: SclpHeader) -> None:
    with pytest.raises(ValueError):
        sclp.encode(bad)


def test_encode_into_rejects_small_buffer() -> None:
    with pytest.raises(ValueError):
        sclp.encode_into(bytearray(14), 3, SclpHeader(1, 2, 3, True, 0))


@pytest.mark.parametrize("n", range(SCLP_HLEN))
def test_decode_too_short(n: int) -> None:
    with pytest.raises(MalformedPacket) as exc:
        sclp.decode(bytes(n))
    assert exc.value.reason is DropReason.TOO_SHORT
    with pytest.raises(MalformedPacket) as exc:
        sclp.verify_checksum(bytes(n), Carrier.UDP)
    assert exc.value.reason is DropReason.TOO_SHORT


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_decode_random_bytes_parses_or_raises_malformed(data: bytes) -> None:
    try:
        h = sclp.decode(data)
    except MalformedPacket as exc:
        assert len(data) < SCLP_HLEN and exc.reason is DropReason.TOO_SHORT
    else:
        assert sclp.encode(h) == data[:SCLP_HLEN]  # every 12 bytes are a valid header
    for carrier in Carrier:
        try:
            sclp.verify_checksum(data, carrier)
        except MalformedPacket as exc:
            assert exc.reason in (DropReason.TOO_SHORT, DropReason.BAD_CHECKSUM)


def _segment(payload: bytes, checksum: int | None = None) -> bytes:
    h = SclpHeader(sport=50000, dport=4789, ident=12345, first=True, remaining=0)
    if checksum is None:
        checksum = sclp.compute_checksum(h, payload)
    return sclp.encode(SclpHeader(50000, 4789, 12345, True, 0, checksum)) + payload


def test_zero_checksum_accepted_only_in_udp_carrier() -> None:
    seg = _segment(b"payload bytes", checksum=0)
    sclp.verify_checksum(seg, Carrier.UDP)
    with pytest.raises(MalformedPacket) as exc:
        sclp.verify_checksum(seg, Carrier.IP)
    assert exc.value.reason is DropReason.BAD_CHECKSUM


def test_wrong_checksum_rejected_in_both_carriers() -> None:
    seg = bytearray(_segment(b"payload bytes"))
    seg[-1] ^= 0x40
    for carrier in Carrier:
        with pytest.raises(MalformedPacket) as exc:
            sclp.verify_checksum(seg, carrier)
        assert exc.value.reason is DropReason.BAD_CHECKSUM


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.integers(0, sclp.SCLP_IDENT_MAX),
    st.booleans(),
    st.integers(0, 0xFFFF),
    st.binary(max_size=2000),
)
def test_compute_checksum_matches_reference(
    sport: int, dport: int, ident: int, first: bool, remaining: int, payload: bytes
) -> None:
    h = SclpHeader(sport, dport, ident, first, remaining)
    csum = sclp.compute_checksum(h, payload)
    expected = checksum_reference(sclp.encode(h) + payload)
    assert csum == (expected or 0xFFFF)
    sclp.verify_checksum(
        sclp.encode(SclpHeader(sport, dport, ident, first, remaining, csum)) + payload, Carrier.IP
    )


def test_checksum_of_all_zero_segment_is_sent_as_ffff() -> None:
    h = SclpHeader(0, 0, 0, False, 0)
    assert sclp.compute_checksum(h, bytes(10)) == 0xFFFF
    sclp.verify_checksum(struct.pack("!HHIHH", 0, 0, 0, 0, 0xFFFF) + bytes(10), Carrier.IP)


@pytest.mark.parametrize(
    ("mtu", "version", "carrier", "expected"),
    [
        (1500, 4, Carrier.IP, 1468),
        (1500, 4, Carrier.UDP, 1460),
        (1500, 6, Carrier.IP, 1448),
        (1500, 6, Carrier.UDP, 1440),
        (9000, 4, Carrier.IP, 8968),
        (576, 4, Carrier.IP, 544),
        (68, 4, Carrier.UDP, 28),
        (1280, 6, Carrier.UDP, 1220),
        (65536, 4, Carrier.IP, 65535 - 32),  # loopback's MTU: clamped to one IPv4 packet
        (65536, 6, Carrier.IP, 65536 - 52),
        (70000, 6, Carrier.IP, 65535 + 40 - 52),
    ],
)
def test_segment_payload_size(mtu: int, version: int, carrier: Carrier, expected: int) -> None:
    assert sclp.segment_payload_size(mtu, version, carrier) == expected


@pytest.mark.parametrize(
    ("mtu", "version"), [(67, 4), (0, 4), (-1500, 4), (1279, 6), (1500, 5), (1500, 0)]
)
def test_segment_payload_size_rejects_nonsense(mtu: int, version: int) -> None:
    with pytest.raises(ValueError):
        sclp.segment_payload_size(mtu, version, Carrier.IP)


@pytest.mark.parametrize("mtu", [1500.0, True, "1500", None])
def test_segment_payload_size_rejects_non_integer_mtu(mtu: object) -> None:
    with pytest.raises(ValueError):
        sclp.segment_payload_size(mtu, 4, Carrier.IP)  # type: ignore[arg-type]

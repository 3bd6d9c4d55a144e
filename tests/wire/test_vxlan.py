import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sclp.wire import vxlan
from sclp.wire.errors import DropReason, MalformedPacket
from sclp.wire.vxlan import VXLAN_LEN, VxlanFlags, VxlanHeader, decode, encode, encode_into, vni_of

# RFC 7348 §5 layout, written by hand: flags 0x08 (I), 24 reserved bits,
# VNI 0x123456, 8 reserved bits.
RFC_VECTOR = bytes([0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0])


def test_constants() -> None:
    assert VXLAN_LEN == 8
    assert vxlan.VXLAN_PORT == 4789


def test_encode_rfc_layout() -> None:
    assert encode(VxlanHeader(vni=0x123456)) == RFC_VECTOR


def test_decode_rfc_layout() -> None:
    hdr = decode(RFC_VECTOR)
    assert hdr == VxlanHeader(vni=0x123456, flags=0x08)
    assert vni_of(RFC_VECTOR) == 0x123456


def test_decode_accepts_bytearray_memoryview_and_trailing_payload() -> None:
    packet = RFC_VECTOR + b"\xaa" * 60  # the inner frame follows
    assert decode(bytearray(packet)).vni == 0x123456
    assert decode(memoryview(packet)).vni == 0x123456
    assert vni_of(memoryview(packet)[:8]) == 0x123456


def test_reserved_bits_ignored_on_receipt() -> None:
    # every reserved bit set: flags 0xff, reserved fields 0xff
    raw = bytes([0xFF, 0xFF, 0xFF, 0xFF, 0xAB, 0xCD, 0xEF, 0xFF])
    hdr = decode(raw)
    assert hdr.vni == 0xABCDEF
    assert hdr.flags == 0xFF  # the received flags byte is kept as is
    assert vni_of(raw) == 0xABCDEF


@pytest.mark.parametrize("flags", [0x00, 0xF7, 0x80, 0x01])
def test_i_flag_clear_is_bad_tunnel_header(flags: int) -> None:
    raw = bytes([flags]) + RFC_VECTOR[1:]
    with pytest.raises(MalformedPacket) as exc:
        decode(raw)
    assert exc.value.reason is DropReason.BAD_TUNNEL_HEADER
    with pytest.raises(MalformedPacket) as exc:
        vni_of(raw)
    assert exc.value.reason is DropReason.BAD_TUNNEL_HEADER


@pytest.mark.parametrize("n", range(VXLAN_LEN))
def test_truncated_is_too_short(n: int) -> None:
    for func in (decode, vni_of):
        with pytest.raises(MalformedPacket) as exc:
            func(RFC_VECTOR[:n])
        assert exc.value.reason is DropReason.TOO_SHORT


def test_encode_into_offset_leaves_other_bytes() -> None:
    buf = bytearray(b"\xee" * 20)
    assert encode_into(buf, 5, VxlanHeader(vni=7)) == VXLAN_LEN
    assert buf[:5] == b"\xee" * 5
    assert buf[5:13] == bytes([0x08, 0, 0, 0, 0, 0, 7, 0])
    assert buf[13:] == b"\xee" * 7
    # a memoryview into a larger buffer works the same
    view = memoryview(bytearray(16))
    encode_into(view, 8, VxlanHeader(vni=0xFFFFFF))
    assert bytes(view[8:]) == bytes([0x08, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0])


@pytest.mark.parametrize(
    "hdr",
    [VxlanHeader(vni=-1), VxlanHeader(vni=1 << 24), VxlanHeader(vni=1, flags=0x100)],
)
def test_encode_rejects_out_of_range(hdr: VxlanHeader) -> None:
    with pytest.raises(ValueError):
        encode(hdr)


def test_encode_into_rejects_small_buffer() -> None:
    with pytest.raises(ValueError):
        encode_into(bytearray(10), 3, VxlanHeader(vni=1))


def test_default_flags_is_i() -> None:
    assert VxlanHeader(vni=1).flags == VxlanFlags.I == 0x08


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0xFFFFFF), st.integers(0, 0xFF).map(lambda f: f | 0x08))
def test_round_trip(vni: int, flags: int) -> None:
    hdr = VxlanHeader(vni=vni, flags=flags)
    raw = encode(hdr)
    assert len(raw) == VXLAN_LEN
    assert raw[1:4] == b"\0\0\0" and raw[7] == 0  # reserved fields zero on transmission
    assert decode(raw) == hdr
    assert vni_of(raw) == vni


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=16))
def test_random_bytes_decode_or_malformed(data: bytes) -> None:
    try:
        hdr = decode(data)
    except MalformedPacket:
        with pytest.raises(MalformedPacket):
            vni_of(data)
        return
    assert vni_of(data) == hdr.vni
    assert hdr.flags == data[0]


# -- the data path's fast paths: the same bytes as the codec --------------------------


def test_fast_paths_on_the_rfc_vector() -> None:
    assert vxlan.header(0x123456) == RFC_VECTOR
    assert vxlan.frame_of(RFC_VECTOR + b"\xaa" * 14) == (0x123456, VXLAN_LEN, 0)


@settings(max_examples=300)
@given(st.integers(0, vxlan.VNI_MAX))
def test_header_is_encode(vni: int) -> None:
    assert vxlan.header(vni) == encode(VxlanHeader(vni))


@settings(max_examples=400)
@given(st.binary(max_size=24), st.booleans())
def test_frame_of_is_decode(data: bytes, flagged: bool) -> None:
    if flagged and data:  # make the I flag likely
        data = bytes([data[0] | 0x08]) + data[1:]
    try:
        expected: object = (decode(data).vni, VXLAN_LEN, 0)
    except MalformedPacket as exc:
        expected = exc.reason
    try:
        got: object = vxlan.frame_of(data)
    except MalformedPacket as exc:
        got = exc.reason
    assert got == expected

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sclp.wire import geneve
from sclp.wire.errors import DropReason, MalformedPacket
from sclp.wire.geneve import (
    GENEVE_BASE_LEN,
    GENEVE_OPTIONS_MAX_LEN,
    GENEVE_PORT,
    MSS_OPTION_CLASS,
    MSS_OPTION_TYPE,
    GeneveHeader,
    GeneveOption,
    decode,
    encode,
    encode_into,
    find_mss,
    mss_option,
)

# RFC 8926 §3.4 layout by hand, no options: Ver 0, Opt Len 0, O=0 C=0,
# protocol 0x6558, VNI 0x00007b, reserved.
NO_OPTIONS = bytes([0x00, 0x00, 0x65, 0x58, 0x00, 0x00, 0x7B, 0x00])

# With two options (RFC 8926 §3.5), Opt Len 3 words = 12 bytes, C set, VNI 0x000100:
#   class 0x0102, type 0x80 (critical), length 1 word, data de ad be ef
#   class 0xfff0, type 0x05, length 0
WITH_OPTIONS = bytes.fromhex(
    "03 40 65 58 00 01 00 00"  # base header
    "01 02 80 01 de ad be ef"  # option 1
    "ff f0 05 00"  # option 2
)
WITH_OPTIONS_HDR = GeneveHeader(
    vni=0x100,
    options=(
        GeneveOption(0x0102, 0x80, bytes.fromhex("deadbeef")),
        GeneveOption(0xFFF0, 0x05, b""),
    ),
    critical=True,
)

# sclp-spec §6 MSS option for MSS 1460 (0x05b4): class fff0, type 01, length 1 word,
# MSS then 16 reserved bits.
MSS_OPTION_1460 = bytes([0xFF, 0xF0, 0x01, 0x01, 0x05, 0xB4, 0x00, 0x00])


def test_constants() -> None:
    assert GENEVE_PORT == 6081
    assert GENEVE_BASE_LEN == 8
    assert GENEVE_OPTIONS_MAX_LEN == 252
    assert GeneveHeader(vni=1).protocol_type == 0x6558  # an Ethernet payload by default


def test_no_options_vector() -> None:
    hdr = decode(NO_OPTIONS)
    assert hdr == GeneveHeader(vni=123)
    assert hdr.header_len == 8
    assert encode(GeneveHeader(vni=123)) == NO_OPTIONS


def test_options_vector() -> None:
    hdr = decode(WITH_OPTIONS + b"payload")
    assert hdr == WITH_OPTIONS_HDR
    assert hdr.header_len == 20
    assert hdr.options[0].critical and not hdr.options[1].critical
    assert encode(WITH_OPTIONS_HDR) == WITH_OPTIONS


def test_oam_flag() -> None:
    raw = bytes([0x00, 0x80]) + NO_OPTIONS[2:]
    assert decode(raw).oam is True
    assert encode(GeneveHeader(vni=123, oam=True)) == raw


def test_critical_flag_set_on_encode_when_an_option_is_critical() -> None:
    hdr = GeneveHeader(vni=0x100, options=WITH_OPTIONS_HDR.options, critical=False)
    assert encode(hdr)[1] == 0x40
    assert decode(encode(hdr)).critical is True
    # a non-critical option does not set it; an explicit C without options is kept
    assert encode(GeneveHeader(vni=1, options=(GeneveOption(1, 0x7F, b""),)))[1] == 0
    assert encode(GeneveHeader(vni=1, critical=True))[1] == 0x40


def test_other_protocol_type_kept() -> None:
    raw = bytes([0, 0, 0x08, 0x00, 0, 0, 1, 0])  # IPv4 payload
    assert decode(raw).protocol_type == 0x0800
    assert encode(GeneveHeader(vni=1, protocol_type=0x0800)) == raw


def test_reserved_bits_ignored_on_receipt() -> None:
    raw = bytearray(WITH_OPTIONS)
    raw[1] |= 0x3F  # reserved flag bits
    raw[7] = 0xFF  # reserved byte after the VNI
    raw[11] |= 0xE0  # option R bits
    assert decode(bytes(raw)) == WITH_OPTIONS_HDR


@pytest.mark.parametrize("version", [1, 2, 3])
def test_bad_version(version: int) -> None:
    raw = bytes([version << 6]) + NO_OPTIONS[1:]
    with pytest.raises(MalformedPacket) as exc:
        decode(raw)
    assert exc.value.reason is DropReason.BAD_VERSION


def test_option_overrunning_opt_len_is_bad_tunnel_header() -> None:
    # Opt Len 1 word, but the option claims 1 word of data (needs 2 words)
    raw = bytes([0x01, 0, 0x65, 0x58, 0, 0, 1, 0, 0x01, 0x02, 0x03, 0x01]) + bytes(4)
    with pytest.raises(MalformedPacket) as exc:
        decode(raw)
    assert exc.value.reason is DropReason.BAD_TUNNEL_HEADER
    # second option overruns
    raw = bytearray(WITH_OPTIONS)
    raw[19] = 0x01
    with pytest.raises(MalformedPacket) as exc:
        decode(bytes(raw) + bytes(8))
    assert exc.value.reason is DropReason.BAD_TUNNEL_HEADER


@pytest.mark.parametrize("n", range(len(WITH_OPTIONS)))
def test_truncated_is_too_short(n: int) -> None:
    with pytest.raises(MalformedPacket) as exc:
        decode(WITH_OPTIONS[:n])
    assert exc.value.reason is DropReason.TOO_SHORT


def test_max_options_length() -> None:
    # 124 + 4 and 120 + 4 bytes: exactly 252
    opts = (GeneveOption(1, 1, bytes(range(124))), GeneveOption(2, 2, bytes(120)))
    hdr = GeneveHeader(vni=5, options=opts)
    raw = encode(hdr)
    assert len(raw) == hdr.header_len == 8 + 252
    assert raw[0] == 63
    assert decode(raw) == hdr
    too_long = GeneveHeader(vni=5, options=(*opts, GeneveOption(3, 3, b"")))
    with pytest.raises(ValueError):
        encode(too_long)


@pytest.mark.parametrize(
    "hdr",
    [
        GeneveHeader(vni=1 << 24),
        GeneveHeader(vni=-1),
        GeneveHeader(vni=1, protocol_type=0x10000),
        GeneveHeader(vni=1, options=(GeneveOption(1, 1, b"abc"),)),  # not a multiple of 4
        GeneveHeader(vni=1, options=(GeneveOption(1, 1, bytes(128)),)),  # > 124
        GeneveHeader(vni=1, options=(GeneveOption(0x10000, 1, b""),)),
        GeneveHeader(vni=1, options=(GeneveOption(1, 0x100, b""),)),
    ],
)
def test_encode_rejects_invalid(hdr: GeneveHeader) -> None:
    with pytest.raises(ValueError):
        encode(hdr)


def test_encode_into_offset_and_small_buffer() -> None:
    buf = bytearray(b"\xee" * 40)
    assert encode_into(buf, 10, WITH_OPTIONS_HDR) == 20
    assert buf[10:30] == WITH_OPTIONS
    assert buf[:10] == b"\xee" * 10 and buf[30:] == b"\xee" * 10
    with pytest.raises(ValueError):
        encode_into(bytearray(25), 10, WITH_OPTIONS_HDR)


def test_mss_option_vector() -> None:
    opt = mss_option(1460)
    assert (opt.opt_class, opt.opt_type) == (MSS_OPTION_CLASS, MSS_OPTION_TYPE) == (0xFFF0, 1)
    assert not opt.critical
    raw = encode(GeneveHeader(vni=9, options=(opt,)))
    assert raw[8:] == MSS_OPTION_1460
    assert raw[0] == 2 and raw[1] == 0  # Opt Len 2 words, C clear
    assert find_mss(decode(raw)) == 1460


def test_find_mss() -> None:
    other = GeneveOption(0x0102, 0x01, bytes(4))
    assert find_mss(GeneveHeader(vni=1)) is None
    assert find_mss(GeneveHeader(vni=1, options=(other,))) is None
    assert find_mss(GeneveHeader(vni=1, options=(other, mss_option(8948)))) == 8948
    # an MSS option with the wrong length or MSS 0 is skipped, the next one is used
    bad_len = GeneveOption(MSS_OPTION_CLASS, MSS_OPTION_TYPE, bytes(8))
    zero = GeneveOption(MSS_OPTION_CLASS, MSS_OPTION_TYPE, bytes(4))
    assert find_mss(GeneveHeader(vni=1, options=(bad_len, zero))) is None
    assert find_mss(GeneveHeader(vni=1, options=(bad_len, zero, mss_option(536)))) == 536
    # same class, other type: not ours
    assert (
        find_mss(GeneveHeader(vni=1, options=(GeneveOption(0xFFF0, 2, b"\x05\xb4\0\0"),))) is None
    )


@pytest.mark.parametrize("mss", [0, -1, 0x10000])
def test_mss_option_range(mss: int) -> None:
    with pytest.raises(ValueError):
        mss_option(mss)


options_st = st.lists(
    st.builds(
        GeneveOption,
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFF),
        st.integers(0, 31).flatmap(lambda w: st.binary(min_size=4 * w, max_size=4 * w)),
    ),
    max_size=6,
).filter(lambda opts: sum(o.length for o in opts) <= GENEVE_OPTIONS_MAX_LEN)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 0xFFFFFF),
    st.integers(0, 0xFFFF),
    options_st,
    st.booleans(),
    st.booleans(),
)
def test_round_trip(
    vni: int, proto: int, options: list[GeneveOption], oam: bool, critical: bool
) -> None:
    critical = critical or any(o.critical for o in options)
    hdr = GeneveHeader(vni, proto, tuple(options), oam, critical)
    raw = encode(hdr)
    assert len(raw) == hdr.header_len
    assert decode(raw + b"inner frame") == hdr


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_decode_or_malformed(data: bytes) -> None:
    try:
        hdr = decode(data)
    except MalformedPacket:
        return
    assert hdr.header_len == GENEVE_BASE_LEN + (data[0] & 0x3F) * 4 <= len(data)
    # what was decoded re-encodes to the same bytes, reserved bits aside
    raw = encode(hdr)
    assert raw[0] == data[0] and raw[2:7] == data[2:7]


# -- the data path's fast paths: the same bytes as the codec --------------------------


def test_fast_paths_on_the_vectors() -> None:
    assert geneve.header(123) == NO_OPTIONS
    assert geneve.header(123, 1460) == bytes([0x02]) + NO_OPTIONS[1:] + MSS_OPTION_1460
    assert geneve.frame_of(NO_OPTIONS + bytes(14)) == (123, 8, 0)
    assert geneve.frame_of(geneve.header(123, 1460) + bytes(14)) == (123, 16, 1460)


@settings(max_examples=300)
@given(st.integers(0, 0xFFFFFF), st.integers(0, 0xFFFF))
def test_header_is_encode(vni: int, mss: int) -> None:
    options = (mss_option(mss),) if mss else ()
    assert geneve.header(vni, mss) == encode(GeneveHeader(vni, options=options))


def test_frame_of_drops_what_it_does_not_understand() -> None:
    unknown_critical = GeneveOption(0x0103, 0x80, bytes(4))
    with pytest.raises(MalformedPacket, match="critical") as exc:
        geneve.frame_of(encode(GeneveHeader(1, options=(unknown_critical,))) + bytes(14))
    assert exc.value.reason is DropReason.BAD_TUNNEL_HEADER
    with pytest.raises(MalformedPacket, match="not Ethernet"):
        geneve.frame_of(encode(GeneveHeader(1, protocol_type=0x0800)) + bytes(20))
    # A non-critical unknown option is skipped; the MSS option's class is ours.
    ours = GeneveOption(MSS_OPTION_CLASS, 0x81, bytes(4))
    hdr = GeneveHeader(9, options=(GeneveOption(0x0103, 0x01, bytes(4)), ours))
    assert geneve.frame_of(encode(hdr)) == (9, 24, 0)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=40), st.booleans())
def test_frame_of_is_decode(data: bytes, shaped: bool) -> None:
    if shaped and len(data) >= 4:  # make the fast path's shape (no options, TEB) likely
        data = bytes([0, data[1], 0x65, 0x58]) + data[4:]
    try:
        hdr = decode(data)
        critical = any(o.critical and o.opt_class != MSS_OPTION_CLASS for o in hdr.options)
        if hdr.protocol_type != 0x6558 or critical:
            expected: object = DropReason.BAD_TUNNEL_HEADER
        else:
            expected = (hdr.vni, hdr.header_len, find_mss(hdr) or 0)
    except MalformedPacket as exc:
        expected = exc.reason
    try:
        got: object = geneve.frame_of(data)
    except MalformedPacket as exc:
        got = exc.reason
    assert got == expected

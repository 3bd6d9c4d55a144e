"""Software TSO: every segment checked field by field against the original frame, with
the slow reference checksum, and cross-checked with Scapy's own encoder."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sclp.engine.tso import (
    TcpFrameLayout,
    complete_checksum,
    gso_segment_count,
    gso_segment_sizes,
    parse_tcp_frame,
    segment_tcp_frame,
    split_gso_frame,
)
from sclp.wire import ipv4, ipv6
from sclp.wire.checksum import checksum_reference, internet_checksum, ones_sum
from sclp.wire.errors import DropReason, MalformedPacket

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = (1 << b for b in range(8))

SRC4, DST4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
SRC6 = bytes.fromhex("fd000000000000000000000000000001")
DST6 = bytes.fromhex("fd000000000000000000000000000002")
ETH = bytes.fromhex("0200000000020200000000010800")
ETH6 = ETH[:12] + b"\x86\xdd"
# TCP timestamps (kind 8, len 10) preceded by two NOPs: the usual 12 option bytes.
TS_OPTIONS = b"\x01\x01\x08\x0a" + struct.pack("!II", 0x01020304, 0x05060708)


def build_frame(
    version: int,
    payload: bytes,
    *,
    flags: int = ACK,
    options: bytes = b"",
    seq: int = 1000,
    ack: int = 77,
    ident: int = 0x1234,
    tcp_csum: int = 0xDEAD,
    l2: bytes | None = None,
    trailer: bytes = b"",
) -> bytes:
    """An Ethernet + IP + TCP frame written with plain struct (independent of sclp's
    codecs).  The TCP checksum field holds ``tcp_csum`` as given (TSO ignores it)."""
    tcp_hlen = 20 + len(options)
    tcp_hdr = (
        struct.pack(
            "!HHIIBBHHH", 40000, 5001, seq, ack, (tcp_hlen // 4) << 4, flags, 501, tcp_csum, 0
        )
        + options
    )
    l4 = tcp_hdr + payload
    if version == 4:
        ip = bytearray(
            struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ident, 0x4000, 64, 6, 0, SRC4, DST4)
        )
        struct.pack_into("!H", ip, 10, checksum_reference(ip))
        l2 = ETH if l2 is None else l2
    else:
        ip = bytearray(struct.pack("!IHBB16s16s", 0x60000000, len(l4), 6, 64, SRC6, DST6))
        l2 = ETH6 if l2 is None else l2
    return l2 + bytes(ip) + l4 + trailer


def pseudo_header(version: int, src: bytes, dst: bytes, l4_len: int) -> bytes:
    if version == 4:
        return src + dst + struct.pack("!BBH", 0, 6, l4_len)
    return src + dst + struct.pack("!I3xB", l4_len, 6)


def check_segments(
    frame: bytes, segs: list[bytearray], mss: int, l3: int = 14
) -> list[tuple[int, int]]:
    """Verify every invariant of a segmentation; returns (flags, ip id) per segment."""
    version = frame[l3] >> 4
    if version == 4:
        ip_hlen = (frame[l3] & 0xF) * 4
        ip_end = l3 + struct.unpack_from("!H", frame, l3 + 2)[0]
        src, dst = frame[l3 + 12 : l3 + 16], frame[l3 + 16 : l3 + 20]
        ident0 = struct.unpack_from("!H", frame, l3 + 4)[0]
    else:
        ip_hlen = 40
        ip_end = l3 + 40 + struct.unpack_from("!H", frame, l3 + 4)[0]
        src, dst = frame[l3 + 8 : l3 + 24], frame[l3 + 24 : l3 + 40]
        ident0 = 0
    l4 = l3 + ip_hlen
    tcp_hlen = (frame[l4 + 12] >> 4) * 4
    hlen = l4 + tcp_hlen
    payload = frame[hlen:ip_end]
    seq0 = struct.unpack_from("!I", frame, l4 + 4)[0]
    flags0 = frame[l4 + 13]

    assert len(segs) == max(1, -(-len(payload) // mss))
    data = b""
    seen: list[tuple[int, int]] = []
    for i, seg in enumerate(segs):
        seg = bytes(seg)
        seg_payload = seg[hlen:]
        last = i == len(segs) - 1
        assert len(seg_payload) == (mss if not last else len(payload) - mss * i)
        assert seg[:l3] == frame[:l3]  # L2 header copied
        if version == 4:
            total, ident = struct.unpack_from("!HH", seg, l3 + 2)
            assert total == len(seg) - l3
            assert ident == (ident0 + i) & 0xFFFF
            assert checksum_reference(seg[l3:l4]) == 0  # header checksum valid
            # everything else in the IPv4 header unchanged
            assert seg[l3 : l3 + 2] == frame[l3 : l3 + 2]
            assert seg[l3 + 6 : l3 + 10] == frame[l3 + 6 : l3 + 10]
            assert seg[l3 + 12 : l4] == frame[l3 + 12 : l4]
        else:
            ident = 0
            assert struct.unpack_from("!H", seg, l3 + 4)[0] == len(seg) - l4
            assert seg[l3 : l3 + 4] == frame[l3 : l3 + 4]
            assert seg[l3 + 6 : l4] == frame[l3 + 6 : l4]
        seq = struct.unpack_from("!I", seg, l4 + 4)[0]
        assert seq == (seq0 + len(data)) & 0xFFFFFFFF
        flags = seg[l4 + 13]
        expected = flags0 & ~(FIN | PSH | CWR)
        if i == 0:
            expected |= flags0 & CWR
        if last:
            expected |= flags0 & (FIN | PSH)
        assert flags == expected
        # ports, ack, data offset, window, urgent pointer, options: unchanged
        assert seg[l4 : l4 + 4] == frame[l4 : l4 + 4]
        assert seg[l4 + 8 : l4 + 13] == frame[l4 + 8 : l4 + 13]
        assert seg[l4 + 14 : l4 + 16] == frame[l4 + 14 : l4 + 16]
        assert seg[l4 + 18 : hlen] == frame[l4 + 18 : hlen]
        tcp_seg = seg[l4:]
        assert checksum_reference(pseudo_header(version, src, dst, len(tcp_seg)) + tcp_seg) == 0
        data += seg_payload
        seen.append((flags, ident))
    assert data == payload
    return seen


def rand_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("options", [b"", TS_OPTIONS])
def test_64k_frame_all_fields(version: int, options: bytes) -> None:
    payload = rand_bytes(64000, version)
    frame = build_frame(version, payload, flags=ACK | PSH | FIN | CWR | ECE, options=options)
    segs = segment_tcp_frame(frame, 1448)
    assert len(segs) == 45
    seen = check_segments(frame, segs, 1448)
    assert seen[0][0] == ACK | CWR | ECE
    assert all(f == ACK | ECE for f, _ in seen[1:-1])
    assert seen[-1][0] == ACK | ECE | PSH | FIN


def test_ipv4_id_and_seq_wrap_around() -> None:
    payload = rand_bytes(10 * 1000 + 1, 3)
    frame = build_frame(4, payload, seq=0xFFFFFFFF - 2500, ident=0xFFFE)
    segs = segment_tcp_frame(frame, 1000)
    seen = check_segments(frame, segs, 1000)
    assert [ident for _, ident in seen[:4]] == [0xFFFE, 0xFFFF, 0, 1]
    assert struct.unpack_from("!I", segs[3], 34 + 4)[0] == 499


@pytest.mark.parametrize("mss", [537, 1447, 1449])
def test_odd_mss(mss: int) -> None:
    payload = rand_bytes(20001, mss)
    for version in (4, 6):
        frame = build_frame(version, payload, options=TS_OPTIONS)
        check_segments(frame, segment_tcp_frame(frame, mss), mss)


@pytest.mark.parametrize("plen", [0, 1, 1448])
def test_frame_that_fits_is_one_segment_with_complete_checksum(plen: int) -> None:
    frame = build_frame(4, rand_bytes(plen), flags=ACK | PSH | FIN | CWR, tcp_csum=0)
    segs = segment_tcp_frame(frame, 1448)
    assert len(segs) == 1
    seen = check_segments(frame, segs, 1448)
    assert seen[0][0] == ACK | PSH | FIN | CWR
    # only the TCP checksum differs from the input (the IPv4 header was already valid)
    assert segs[0][:50] == frame[:50] and segs[0][52:] == frame[52:]


def test_partial_checksum_input_is_fine() -> None:
    """A virtio NEEDS_CSUM frame carries the pseudo-header sum in the TCP field."""
    payload = rand_bytes(30000, 5)
    frame = build_frame(6, payload, tcp_csum=0x1234)
    check_segments(frame, segment_tcp_frame(frame, 1440), 1440)


def test_vlan_tagged_frame_and_ethernet_padding() -> None:
    l2 = ETH[:12] + b"\x81\x00\x00\x64\x08\x00"
    payload = rand_bytes(5000, 9)
    frame = build_frame(4, payload, l2=l2, trailer=b"\xee" * 6)
    segs = segment_tcp_frame(frame, 1400, l3_offset=18)
    check_segments(frame, segs, 1400, l3=18)
    assert all(not bytes(s).endswith(b"\xee") for s in segs)


def test_input_not_modified_and_outputs_independent() -> None:
    frame = bytearray(build_frame(4, rand_bytes(4000, 11), options=TS_OPTIONS))
    before = bytes(frame)
    segs = segment_tcp_frame(memoryview(frame), 1000)
    assert frame == before
    segs[0][0] ^= 0xFF
    assert segs[1][0] == frame[0]


def test_layout() -> None:
    frame = build_frame(4, bytes(100), options=TS_OPTIONS)
    assert parse_tcp_frame(frame) == TcpFrameLayout(
        ip_version=4, l3_offset=14, l4_offset=34, header_len=66, end=len(frame)
    )
    layout6 = parse_tcp_frame(build_frame(6, bytes(100)) + b"\0\0")
    assert (layout6.l4_offset, layout6.header_len, layout6.payload_len) == (54, 74, 100)
    assert layout6.tcp_header_len == 20


def test_segment_sizes() -> None:
    assert gso_segment_sizes(64000, 1448) == [1448] * 44 + [64000 - 44 * 1448]
    assert gso_segment_sizes(2896, 1448) == [1448, 1448]
    assert gso_segment_sizes(0, 1448) == [0]
    assert gso_segment_count(1, 1448) == 1
    with pytest.raises(ValueError):
        gso_segment_count(10, 0)


def _reason(frame: bytes, l3: int = 14) -> DropReason:
    with pytest.raises(MalformedPacket) as exc:
        segment_tcp_frame(frame, 1448, l3)
    return exc.value.reason


def test_refused_frames() -> None:
    good4 = build_frame(4, bytes(3000))
    udp = bytearray(good4)
    udp[14 + 9] = 17
    assert _reason(bytes(udp)) is DropReason.MALFORMED
    frag = bytearray(good4)
    frag[14 + 6] = 0x20  # MF
    assert _reason(bytes(frag)) is DropReason.MALFORMED
    ext6 = bytearray(build_frame(6, bytes(3000)))
    ext6[14 + 6] = 0  # hop-by-hop options header before TCP
    assert _reason(bytes(ext6)) is DropReason.MALFORMED
    v5 = bytearray(good4)
    v5[14] = 0x55
    assert _reason(bytes(v5)) is DropReason.BAD_VERSION
    assert _reason(good4[:14]) is DropReason.TOO_SHORT
    assert _reason(good4[:30]) is DropReason.TOO_SHORT
    assert _reason(good4[:50]) is DropReason.MALFORMED  # total length > buffer
    bad_doff = bytearray(good4)
    bad_doff[34 + 12] = 0x40
    assert _reason(bytes(bad_doff)) is DropReason.MALFORMED
    with pytest.raises(ValueError):
        segment_tcp_frame(good4, 0)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.integers(0, 2))
def test_fuzz_segments_or_raises_malformed(data: bytes, cut: int) -> None:
    frame = build_frame(4 if cut else 6, b"xy" * 30)[: 14 + cut * 20] + data
    try:
        segs = segment_tcp_frame(frame, 536)
    except MalformedPacket:
        return
    assert segs


@settings(max_examples=40, deadline=None)
@given(
    plen=st.integers(0, 65000),
    mss=st.integers(536, 8960),
    version=st.sampled_from([4, 6]),
    options=st.sampled_from([b"", TS_OPTIONS, b"\x02\x04\x05\xb4"]),
    flags=st.integers(0, 255),
    seq=st.integers(0, 0xFFFFFFFF),
    ident=st.integers(0, 0xFFFF),
)
def test_property_any_size(
    plen: int, mss: int, version: int, options: bytes, flags: int, seq: int, ident: int
) -> None:
    frame = build_frame(
        version, rand_bytes(plen, plen), options=options, flags=flags, seq=seq, ident=ident
    )
    check_segments(frame, segment_tcp_frame(frame, mss), mss)


# --- complete_checksum --------------------------------------------------------------


def _partial(version: int, l4: bytes, csum_offset: int, proto: int) -> bytearray:
    """Put the pseudo-header sum (uncomplemented) into the L4 checksum field, as a TAP
    with NEEDS_CSUM does."""
    src, dst = (SRC4, DST4) if version == 4 else (SRC6, DST6)
    if version == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, proto, len(l4))
    else:
        pseudo = src + dst + struct.pack("!I3xB", len(l4), proto)
    buf = bytearray(l4)
    struct.pack_into("!H", buf, csum_offset, ones_sum(pseudo))
    return buf


@pytest.mark.parametrize("version", [4, 6])
def test_complete_checksum_tcp(version: int) -> None:
    frame = bytearray(build_frame(version, rand_bytes(3001, 1), options=TS_OPTIONS))
    l4 = 34 if version == 4 else 54
    frame[l4:] = _partial(version, bytes(frame[l4:]), 16, 6)
    csum = complete_checksum(frame, l4, 16)
    assert struct.unpack_from("!H", frame, l4 + 16)[0] == csum
    src, dst = (SRC4, DST4) if version == 4 else (SRC6, DST6)
    assert checksum_reference(pseudo_header(version, src, dst, len(frame) - l4) + frame[l4:]) == 0


def test_complete_checksum_udp_zero_becomes_ffff_and_end() -> None:
    body = bytearray(struct.pack("!HHHH", 1, 2, 8 + 10, 0) + bytes(10))
    # choose the last word so that the complete sum is 0xFFFF (checksum would be 0)
    partial = _partial(4, bytes(body), 6, 17)
    s = ones_sum(partial)
    struct.pack_into("!H", partial, 16, ~s & 0xFFFF)
    frame = bytearray(b"\x00" * 34) + partial + b"\xff\xff\xff"  # 3 bytes past the end
    assert complete_checksum(frame, 34, 6, end=34 + len(partial)) == 0xFFFF
    assert frame[40:42] == b"\xff\xff"
    assert frame[-3:] == b"\xff\xff\xff"


def test_complete_checksum_bounds() -> None:
    with pytest.raises(ValueError):
        complete_checksum(bytearray(20), 10, 9)
    with pytest.raises(ValueError):
        complete_checksum(bytearray(20), 0, 0, end=30)
    with pytest.raises(ValueError):
        complete_checksum(bytearray(20), -1, 0)


# --- Scapy cross-check ----------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 6])
def test_scapy_recomputes_the_same_checksums(version: int) -> None:
    layers = pytest.importorskip("scapy.layers.l2")
    inet = pytest.importorskip("scapy.layers.inet")
    inet6 = pytest.importorskip("scapy.layers.inet6")
    payload = rand_bytes(20000, 21)
    frame = build_frame(version, payload, options=TS_OPTIONS, flags=ACK | PSH | FIN)
    segs = segment_tcp_frame(frame, 1460)
    out = b""
    for seg in segs:
        pkt = layers.Ether(bytes(seg))
        tcp_layer = pkt[inet.TCP]
        del tcp_layer.chksum
        if version == 4:
            ip_layer = pkt[inet.IP]
            del ip_layer.chksum
            del ip_layer.len
        else:
            del pkt[inet6.IPv6].plen
        rebuilt = bytes(layers.Ether(bytes(pkt)))
        assert rebuilt == bytes(seg)
        out += bytes(tcp_layer.payload)
    assert out == payload
    assert str(layers.Ether(bytes(segs[-1]))[inet.TCP].flags) == "FPA"
    assert str(layers.Ether(bytes(segs[0]))[inet.TCP].flags) == "A"


# -- splitting a GSO frame too big for the tunnel (engine/tso.split_gso_frame) -----------


def partial_frame(payload: bytes, *, v6: bool, flags: int) -> bytes:
    """A TCP GSO frame as a VM hands it over (NEEDS_CSUM: the TCP field holds the
    pseudo-header sum), its sequence number and IPv4 ident about to wrap."""
    l4_len = 20 + len(payload)
    if v6:
        pseudo = ipv6.pseudo_header_sum(SRC6, DST6, 6, l4_len)
    else:
        pseudo = ipv4.pseudo_header_sum(SRC4, DST4, 6, l4_len)
    version = 6 if v6 else 4
    return build_frame(
        version, payload, flags=flags, seq=0xFFFFF000, ack=7, ident=0xFFF0, tcp_csum=pseudo & 0xFFFF
    )


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 65_400),
    mss=st.integers(500, 9000),
    limit=st.integers(20_000, 65_000),
    v6=st.booleans(),
    flags=st.sampled_from([0x18, 0x19, 0x98, 0x10]),
)
def test_split_parts_segment_exactly_like_the_whole_frame(
    size: int, mss: int, limit: int, v6: bool, flags: int
) -> None:
    """The wire sees the same TCP segments whether the frame is split first or not."""
    whole = partial_frame(bytes(i % 251 for i in range(size)), v6=v6, flags=flags)
    parts = split_gso_frame(whole, mss, limit, headroom=3)
    assert all(p[:3] == b"\0\0\0" and len(p) - 3 <= limit for p in parts)
    cut = [bytes(s) for p in parts for s in segment_tcp_frame(p[3:], mss)]
    assert cut == [bytes(s) for s in segment_tcp_frame(whole, mss)]
    for part in parts:  # each part: a NEEDS_CSUM frame of its own (field = pseudo sum)
        p = bytearray(part[3:])
        l4 = 14 + (40 if v6 else 20)
        l4_len = len(p) - l4
        if v6:
            assert struct.unpack_from("!H", p, 18)[0] == l4_len  # payload length
            pseudo = ipv6.pseudo_header_sum(bytes(p[22:38]), bytes(p[38:54]), 6, l4_len)
        else:
            assert struct.unpack_from("!H", p, 16)[0] == len(p) - 14  # total length
            assert internet_checksum(p[14:34]) == 0  # IPv4 header checksum valid
            pseudo = ipv4.pseudo_header_sum(bytes(p[26:30]), bytes(p[30:34]), 6, l4_len)
        (field,) = struct.unpack_from("!H", p, l4 + 16)
        assert field == pseudo & 0xFFFF
        # Completed as a NIC would (sum from csum_start, field included), it verifies.
        struct.pack_into("!H", p, l4 + 16, internet_checksum(p[l4:]))
        assert internet_checksum(p[l4:], pseudo) == 0

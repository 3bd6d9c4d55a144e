"""The Wireshark Lua dissector (contrib/wireshark/sclp.lua) run by tshark on a pcap the
project writes: SCLP segments cut by :class:`sclp.engine.segmenter.Segmenter`, outer
Ethernet/IPv4|IPv6[/UDP] from :mod:`sclp.wire`, written with
:class:`sclp.wire.pcap.PcapWriter`.

tshark must show the header fields we wrote, the checksum status (good, bad, not
computed), put segmented payloads back together whatever their order, and hand the
reassembled payload to its own VXLAN/Geneve dissectors, which must find the VNI and,
past the tunnel header, the inner IPv4 addresses: that proves the whole chain.

tshark notes (4.0): Lua runs as root too (tshark only warns); the script is loaded with
``-X lua_script:``.  ``-2`` (two passes) is used so that the segments dissected before
the completing frame also say where they were reassembled.  Each run gets a private
``WIRESHARK_CONFIG_DIR`` and ``HOME`` so no user preference or installed plugin
interferes.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sclp.engine.segmenter import Segmenter
from sclp.wire import geneve, ipv6, sclp, vxlan
from sclp.wire.ethernet import ETHERTYPE_IPV6
from sclp.wire.geneve import GeneveHeader
from sclp.wire.ipproto import IPPROTO_SCLP, IPPROTO_UDP
from sclp.wire.ipv6 import IPv6Header
from sclp.wire.pcap import PcapWriter
from sclp.wire.sclp import SclpHeader
from sclp.wire.vxlan import VxlanHeader

from .packets import (
    OUTER_DST_IP,
    OUTER_DST_MAC,
    OUTER_SRC_IP,
    OUTER_SRC_MAC,
    ether_frame,
    inner_tcp_frame,
    ip_packet,
    udp_datagram,
)

pytestmark = pytest.mark.tshark

TSHARK = shutil.which("tshark")
if TSHARK is None:
    pytest.skip("tshark is not installed (apt-get install tshark)", allow_module_level=True)

DISSECTOR = Path(__file__).resolve().parents[2] / "contrib" / "wireshark" / "sclp.lua"
SPORT = 49321
SEG = 1468  # M at MTU 1500 over IPv4 native (sclp-spec §3)
SEG_UDP = 1460  # M in the UDP carrier mode
OUTER6_SRC = bytes.fromhex("20010db8000000000000000000000001")
OUTER6_DST = bytes.fromhex("20010db8000000000000000000000002")

Row = dict[str, list[str]]


def _ip(addr: bytes) -> str:
    return ".".join(str(b) for b in addr)


def _native(segment: bytes, ident: int = 1) -> bytes:
    l3 = ip_packet(OUTER_SRC_IP, OUTER_DST_IP, IPPROTO_SCLP, segment, ident)
    return ether_frame(OUTER_DST_MAC, OUTER_SRC_MAC, l3)


def _native6(segment: bytes) -> bytes:
    hdr = ipv6.encode(IPv6Header(OUTER6_SRC, OUTER6_DST, IPPROTO_SCLP, len(segment)))
    eth = OUTER_DST_MAC + OUTER_SRC_MAC + struct.pack("!H", ETHERTYPE_IPV6)
    return eth + hdr + segment


def _udp(segment: bytes, dport: int = sclp.SCLP_UDP_PORT) -> bytes:
    dgram = udp_datagram(OUTER_SRC_IP, OUTER_DST_IP, SPORT, dport, segment)
    l3 = ip_packet(OUTER_SRC_IP, OUTER_DST_IP, IPPROTO_UDP, dgram)
    return ether_frame(OUTER_DST_MAC, OUTER_SRC_MAC, l3)


def _inner(n: int, size: int) -> bytes:
    """Inner Ethernet/IPv4/TCP frame 10.0.n.1 -> 10.0.n.2 of about ``size`` bytes."""
    body = bytes((n * 7 + i) % 251 for i in range(max(size - 54, 1)))
    return inner_tcp_frame(bytes([10, 0, n, 1]), bytes([10, 0, n, 2]), body)


def _vxlan(vni: int, n: int, size: int) -> bytes:
    return vxlan.encode(VxlanHeader(vni)) + _inner(n, size)


def _geneve(vni: int, n: int, size: int) -> bytes:
    return geneve.encode(GeneveHeader(vni)) + _inner(n, size)


def _segments(
    payload: bytes,
    ident: int,
    dport: int = sclp.SCLP_PORT_VXLAN,
    seg_size: int = SEG,
    checksum: bool = True,
) -> list[bytes]:
    batch = Segmenter(ident).segment_payload(payload, SPORT, dport, seg_size, checksum)
    return [bytes(s) for s in batch.segments()]


def _corrupt_checksum(segment: bytes) -> bytes:
    seg = bytearray(segment)
    seg[sclp.SCLP_CSUM_OFFSET] ^= 0x5A
    return bytes(seg)


def _with_header(hdr: SclpHeader, payload: bytes, checksum: bool = True) -> bytes:
    if checksum:
        hdr = SclpHeader(
            hdr.sport,
            hdr.dport,
            hdr.ident,
            hdr.first,
            hdr.remaining,
            sclp.compute_checksum(hdr, payload),
        )
    return sclp.encode(hdr) + payload


@dataclass
class Capture:
    """The packets of the test pcap, and which frame (1-based) shows what."""

    packets: list[bytes] = field(default_factory=list)
    frames: dict[str, list[int]] = field(default_factory=dict)

    def add(self, name: str, *packets: bytes) -> None:
        start = len(self.packets) + 1
        self.packets.extend(packets)
        self.frames[name] = list(range(start, start + len(packets)))


# identification, VNI and inner-frame number of each scenario
ID_SINGLE, VNI_SINGLE = 0x1A2B, 0x000101
ID_INORDER, VNI_INORDER = 0x1A2C, 0x000202
ID_OOO, VNI_OOO = 0x7FFFFFFF, 0x303030  # the largest ID: all 31 bits survive
ID_BADCSUM, VNI_BADCSUM = 0x44, 0x000404
ID_UDP, VNI_UDP = 0x55, 0x000505
ID_ZERO_NATIVE = 0x66
ID_OVERLAP = 0x77
ID_TOTAL = 0x88
ID_V6, VNI_V6 = 0x99, 0x000909
ID_UDP_CSUM, VNI_UDP_CSUM = 0xAA, 0x000A0A

INORDER = _vxlan(VNI_INORDER, 2, 4000)  # 3 segments
OOO = _geneve(VNI_OOO, 3, 5000)  # 4 segments, delivered 2, 0, 3, 1
BADCSUM = _vxlan(VNI_BADCSUM, 4, 2500)  # 2 segments
UDP_PAYLOAD = _vxlan(VNI_UDP, 5, 3000)  # 3 segments of 1460, checksum not computed


def _build() -> Capture:
    cap = Capture()
    cap.add("single", *map(_native, _segments(_vxlan(VNI_SINGLE, 1, 300), ID_SINGLE)))
    cap.add("inorder", *map(_native, _segments(INORDER, ID_INORDER)))
    ooo = _segments(OOO, ID_OOO, dport=sclp.SCLP_PORT_GENEVE)
    cap.add("ooo", *(_native(ooo[i]) for i in (2, 0, 3, 1)))
    # segment 1 arrives damaged, then the duplicate of segment 0, then a good copy of 1
    bad = _segments(BADCSUM, ID_BADCSUM)
    cap.add("badcsum", _native(bad[0]), _native(_corrupt_checksum(bad[1])))
    cap.add("duplicate", _native(bad[0]))
    cap.add("badcsum_fixed", _native(bad[1]))
    udp = _segments(UDP_PAYLOAD, ID_UDP, seg_size=SEG_UDP, checksum=False)
    cap.add("udp", *map(_udp, udp))
    cap.add(
        "udp_csum",
        *map(_udp, _segments(_vxlan(VNI_UDP_CSUM, 10, 200), ID_UDP_CSUM, seg_size=SEG_UDP)),
    )
    # checksum 0 is "not computed": legal in UDP only, an error in native IP
    zero = _segments(_vxlan(1, 6, 200), ID_ZERO_NATIVE, checksum=False)
    cap.add("zero_native", *map(_native, zero))
    # two segments claiming the same bytes [0, 100) of a 200-byte payload, different data
    cap.add(
        "overlap",
        _native(_with_header(SclpHeader(SPORT, 4789, ID_OVERLAP, False, 100), b"A" * 100)),
        _native(_with_header(SclpHeader(SPORT, 4789, ID_OVERLAP, False, 100), b"B" * 100)),
    )
    # a first segment saying total = 150 after a segment that ends at 300
    cap.add(
        "total",
        _native(_with_header(SclpHeader(SPORT, 4789, ID_TOTAL, False, 200), b"C" * 100)),
        _native(_with_header(SclpHeader(SPORT, 4789, ID_TOTAL, True, 50), b"D" * 100)),
    )
    cap.add("ipv6", *map(_native6, _segments(_vxlan(VNI_V6, 9, 2000), ID_V6)))
    return cap


CAPTURE = _build()

FIELDS = [
    "frame.number",
    "sclp.srcport",
    "sclp.dstport",
    "sclp.id",
    "sclp.first",
    "sclp.remaining",
    "sclp.checksum",
    "sclp.checksum.status",
    "sclp.carrier",
    "sclp.length",
    "sclp.total",
    "sclp.offset",
    "sclp.reassembled_in",
    "sclp.segment",
    "sclp.reassembled.length",
    "sclp.duplicate_of",
    "sclp.discarded_in",
    "vxlan.vni",
    "geneve.vni",
    "ip.src",
    "ip.dst",
    "ipv6.src",
    "tcp.dstport",
    "tcp.checksum.status",
    "_ws.col.Protocol",
    "_ws.col.Info",
    "_ws.expert.message",
    "_ws.expert.severity",
]


def run_tshark(pcap: Path, config_dir: Path, *extra: str, two_pass: bool = True) -> dict[int, Row]:
    """Dissect ``pcap`` with the SCLP dissector; one row of FIELDS per frame."""
    assert TSHARK is not None
    cmd = [TSHARK, "-n", *(["-2"] if two_pass else []), "-X", f"lua_script:{DISSECTOR}"]
    cmd += ["-r", str(pcap)]
    cmd += ["-T", "fields", "-E", "separator=\t", "-E", "occurrence=a", "-E", "aggregator=;"]
    cmd += ["-o", "tcp.check_checksum:TRUE", *extra]
    for f in FIELDS:
        cmd += ["-e", f]
    # a private config dir and home: no user preferences, and no personal plugin (an
    # installed copy of this very dissector would clash with the one loaded here)
    env = {**os.environ, "WIRESHARK_CONFIG_DIR": str(config_dir), "HOME": str(config_dir)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Lua" not in proc.stderr, proc.stderr
    assert "Lua Error" not in proc.stdout, proc.stdout
    rows: dict[int, Row] = {}
    for line in proc.stdout.splitlines():
        values = line.split("\t")
        assert len(values) == len(FIELDS), line
        row = {f: (v.split(";") if v else []) for f, v in zip(FIELDS, values, strict=True)}
        rows[int(row["frame.number"][0])] = row
    return rows


def write_pcap(path: Path, packets: list[bytes], snaplen: int = 262144) -> None:
    with path.open("wb") as f:
        writer = PcapWriter(f, snaplen=snaplen)
        for i, packet in enumerate(packets):
            writer.write(packet, ts=1_700_000_000.0 + i * 0.001)


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Row]:
    base = tmp_path_factory.mktemp("sclp_lua")
    pcap = base / "sclp.pcap"
    write_pcap(pcap, CAPTURE.packets)
    result = run_tshark(pcap, base)
    assert sorted(result) == list(range(1, len(CAPTURE.packets) + 1))
    return result


def _frames(rows: dict[int, Row], name: str) -> list[Row]:
    return [rows[n] for n in CAPTURE.frames[name]]


def _ints(values: list[str]) -> list[int]:
    return [int(v, 0) for v in values]


def _assert_inner(row: Row, n: int) -> None:
    """The inner frame's addresses as tshark decoded them past the tunnel header."""
    assert row["ip.src"][-1] == f"10.0.{n}.1"
    assert row["ip.dst"][-1] == f"10.0.{n}.2"
    assert row["tcp.dstport"] == ["5201"]
    assert row["tcp.checksum.status"] == ["1"]  # the whole inner TCP segment is there


def test_unsegmented_payload_fields_and_vxlan(rows: dict[int, Row]) -> None:
    [row] = _frames(rows, "single")
    assert row["sclp.srcport"] == [str(SPORT)]
    assert row["sclp.dstport"] == ["4789"]
    assert _ints(row["sclp.id"]) == [ID_SINGLE]
    assert row["sclp.first"] == ["1"]
    assert row["sclp.remaining"] == ["0"]
    assert row["sclp.checksum.status"] == ["1"]  # good
    assert row["sclp.carrier"] == ["IP"]
    payload_len = vxlan.VXLAN_LEN + len(_inner(1, 300))
    assert row["sclp.length"] == row["sclp.total"] == [str(payload_len)]
    assert row["sclp.offset"] == ["0"]
    assert row["sclp.reassembled_in"] == [] and row["sclp.segment"] == []
    assert _ints(row["vxlan.vni"]) == [VNI_SINGLE]
    assert row["ip.src"] == [_ip(OUTER_SRC_IP), "10.0.1.1"]
    _assert_inner(row, 1)
    assert row["_ws.expert.message"] == []


def test_checksum_field_is_what_the_segmenter_wrote(rows: dict[int, Row]) -> None:
    segs = _segments(INORDER, ID_INORDER)
    got = [_ints(r["sclp.checksum"]) for r in _frames(rows, "inorder")]
    assert got == [[int.from_bytes(s[10:12], "big")] for s in segs]


def test_info_column(rows: dict[int, Row]) -> None:
    first, second, _ = _frames(rows, "inorder")
    rem = len(INORDER) - SEG
    assert first["_ws.col.Info"] == [
        f"SCLP {SPORT} → 4789 id=0x1a2c first rem={rem} [reassembled in #4]"
    ]
    assert second["_ws.col.Info"][0].startswith(f"SCLP {SPORT} → 4789 id=0x1a2c rem={rem - SEG}")
    assert all(r["_ws.col.Protocol"] == ["SCLP"] for r in (first, second))


def test_in_order_segments_reassembled(rows: dict[int, Row]) -> None:
    segs = _frames(rows, "inorder")
    nums = CAPTURE.frames["inorder"]
    total = len(INORDER)
    assert [r["sclp.first"] for r in segs] == [["1"], ["0"], ["0"]]
    assert [r["sclp.remaining"] for r in segs] == [
        [str(total - SEG)],
        [str(total - 2 * SEG)],
        ["0"],
    ]
    assert [r["sclp.offset"] for r in segs] == [["0"], [str(SEG)], [str(2 * SEG)]]
    assert [r["sclp.length"] for r in segs] == [[str(SEG)], [str(SEG)], [str(total - 2 * SEG)]]
    assert all(_ints(r["sclp.id"]) == [ID_INORDER] for r in segs)
    assert all(r["sclp.checksum.status"] == ["1"] for r in segs)
    # the first two point at the frame that completed the payload ...
    assert [r["sclp.reassembled_in"] for r in segs[:2]] == [[str(nums[2])]] * 2
    assert segs[0]["vxlan.vni"] == segs[1]["vxlan.vni"] == []
    # ... which lists the segments and decodes the whole inner frame
    last = segs[2]
    assert last["sclp.segment"] == [str(n) for n in nums]
    assert last["sclp.reassembled.length"] == [str(total)]
    assert _ints(last["vxlan.vni"]) == [VNI_INORDER]
    _assert_inner(last, 2)
    assert all(r["_ws.expert.message"] == [] for r in segs)


def test_out_of_order_segments_reassembled(rows: dict[int, Row]) -> None:
    segs = _frames(rows, "ooo")  # segments 2, 0, 3, 1
    nums = CAPTURE.frames["ooo"]
    total = len(OOO)
    assert [r["sclp.first"] for r in segs] == [["0"], ["1"], ["0"], ["0"]]
    assert [r["sclp.offset"] for r in segs] == [[str(i * SEG)] for i in (2, 0, 3, 1)]
    assert all(_ints(r["sclp.id"]) == [ID_OOO] for r in segs)
    assert [r["sclp.reassembled_in"] for r in segs[:3]] == [[str(nums[3])]] * 3
    last = segs[3]
    assert last["sclp.segment"] == [str(n) for n in nums]
    assert last["sclp.reassembled.length"] == [str(total)]
    assert _ints(last["geneve.vni"]) == [VNI_OOO]
    assert last["vxlan.vni"] == []
    _assert_inner(last, 3)


def test_bad_checksum_segment_is_reported_and_left_out(rows: dict[int, Row]) -> None:
    first, bad = _frames(rows, "badcsum")
    [dup] = _frames(rows, "duplicate")
    [fixed] = _frames(rows, "badcsum_fixed")
    assert bad["sclp.checksum.status"] == ["0"]  # bad
    assert "Bad SCLP checksum" in bad["_ws.expert.message"]
    assert "bad checksum" in bad["_ws.col.Info"][0]
    assert bad["sclp.reassembled_in"] == []  # a receiver drops it: not part of the payload
    # the duplicate of segment 0 is noticed and ignored
    assert dup["sclp.duplicate_of"] == [str(CAPTURE.frames["badcsum"][0])]
    assert "Duplicate segment (ignored)" in dup["_ws.expert.message"]
    # the good retransmission completes the payload
    assert fixed["sclp.checksum.status"] == ["1"]
    [fixed_n] = CAPTURE.frames["badcsum_fixed"]
    assert fixed["sclp.segment"] == [str(CAPTURE.frames["badcsum"][0]), str(fixed_n)]
    assert first["sclp.reassembled_in"] == [str(fixed_n)]
    assert _ints(fixed["vxlan.vni"]) == [VNI_BADCSUM]
    _assert_inner(fixed, 4)


def test_udp_carrier_checksum_not_computed(rows: dict[int, Row]) -> None:
    segs = _frames(rows, "udp")
    assert all(r["sclp.carrier"] == ["UDP"] for r in segs)
    assert all(r["sclp.checksum"] == ["0x0000"] for r in segs)
    assert all(r["sclp.checksum.status"] == ["3"] for r in segs)  # not computed
    assert all(r["_ws.expert.message"] == [] for r in segs)
    assert [r["sclp.offset"] for r in segs] == [["0"], [str(SEG_UDP)], [str(2 * SEG_UDP)]]
    last = segs[-1]
    assert last["sclp.segment"] == [str(n) for n in CAPTURE.frames["udp"]]
    assert _ints(last["vxlan.vni"]) == [VNI_UDP]
    _assert_inner(last, 5)


def test_udp_carrier_with_checksum(rows: dict[int, Row]) -> None:
    [row] = _frames(rows, "udp_csum")
    assert row["sclp.carrier"] == ["UDP"]
    assert row["sclp.checksum.status"] == ["1"]
    assert _ints(row["vxlan.vni"]) == [VNI_UDP_CSUM]
    _assert_inner(row, 10)


def test_zero_checksum_is_an_error_in_native_mode(rows: dict[int, Row]) -> None:
    [row] = _frames(rows, "zero_native")
    assert row["sclp.checksum.status"] == ["0"]
    assert row["_ws.expert.message"] == [
        "Checksum 0 (not computed) is legal only in the UDP carrier mode"
    ]


def test_conflicting_overlap_discards_the_payload(rows: dict[int, Row]) -> None:
    a, b = _frames(rows, "overlap")
    assert a["_ws.expert.message"] == ["Segment of a discarded payload"]
    assert (
        "Overlapping segments with conflicting bytes: payload discarded"
        in (b["_ws.expert.message"])
    )
    assert b["sclp.reassembled_in"] == b["sclp.segment"] == []


def test_inconsistent_total_discards_the_payload(rows: dict[int, Row]) -> None:
    later, first = _frames(rows, "total")
    assert first["sclp.total"] == ["150"]
    assert later["_ws.expert.message"] == ["Segment of a discarded payload"]
    assert first["_ws.expert.message"] == [
        "Segments disagree on the payload's total length: payload discarded"
    ]


def test_ipv6_outer(rows: dict[int, Row]) -> None:
    segs = _frames(rows, "ipv6")
    assert len(segs) == 2
    assert all(r["sclp.checksum.status"] == ["1"] for r in segs)
    last = segs[-1]
    assert last["ipv6.src"] == ["2001:db8::1"]
    assert _ints(last["vxlan.vni"]) == [VNI_V6]
    _assert_inner(last, 9)


def test_udp_port_preference(tmp_path: Path) -> None:
    """The carrier port is a preference: segments to UDP 7300 are SCLP only with it set."""
    packets = [_udp(s, dport=7300) for s in _segments(UDP_PAYLOAD, ID_UDP, seg_size=SEG_UDP)]
    pcap = tmp_path / "port.pcap"
    write_pcap(pcap, packets)
    default = run_tshark(pcap, tmp_path)
    assert all(r["sclp.id"] == [] for r in default.values())
    moved = run_tshark(pcap, tmp_path, "-o", "sclp.udp_port:7300")
    assert all(_ints(r["sclp.id"]) == [ID_UDP] for r in moved.values())
    assert _ints(moved[3]["vxlan.vni"]) == [VNI_UDP]
    _assert_inner(moved[3], 5)


def test_reassembly_off_hands_the_first_segment_to_vxlan(tmp_path: Path) -> None:
    pcap = tmp_path / "noreasm.pcap"
    write_pcap(pcap, [_native(s) for s in _segments(INORDER, ID_INORDER)])
    result = run_tshark(pcap, tmp_path, "-o", "sclp.reassemble:FALSE")
    assert _ints(result[1]["vxlan.vni"]) == [VNI_INORDER]
    assert result[1]["ip.src"][-1] == "10.0.2.1"  # the inner headers are in segment 0
    assert all(r["sclp.reassembled_in"] == [] for r in result.values())
    assert result[3]["vxlan.vni"] == []


def test_single_pass_still_decodes_the_completing_frame(tmp_path: Path) -> None:
    """Without -2, segments before the completing frame cannot know where they end up
    (as for Wireshark's own reassembly); the completing frame decodes the whole."""
    pcap = tmp_path / "one.pcap"
    write_pcap(pcap, [_native(s) for s in _segments(INORDER, ID_INORDER)])
    result = run_tshark(pcap, tmp_path, two_pass=False)
    assert [r["sclp.reassembled_in"] for r in result.values()] == [[], [], []]
    assert result[3]["sclp.segment"] == ["1", "2", "3"]
    assert _ints(result[3]["vxlan.vni"]) == [VNI_INORDER]
    _assert_inner(result[3], 2)


def test_edge_cases(tmp_path: Path) -> None:
    def seg(ident: int, first: bool, rem: int, payload: bytes, dport: int = 4789) -> bytes:
        return _native(_with_header(SclpHeader(SPORT, dport, ident, first, rem), payload))

    packets = [
        seg(1, True, 0, b""),  # an empty payload: nothing to hand to VXLAN
        seg(2, True, 100, b""),  # an empty first segment ...
        seg(2, False, 0, bytes(range(100))),  # ... and the 100 bytes after it
        _native(b"\x01\x02\x03\x04\x05"),  # shorter than a header
        seg(3, False, 50, b""),  # an empty non-first segment
        seg(4, True, 65535, b"0123456789"),  # total past 65,535
        seg(5, True, 0, b"0123456789", dport=1234),  # no tunnel on this port: data
        seg(6, True, 0, b"\x08\x00"),  # 2 bytes cannot be a VXLAN header
    ]
    pcap = tmp_path / "edge.pcap"
    write_pcap(pcap, packets)
    r = run_tshark(pcap, tmp_path)
    assert r[1]["sclp.total"] == ["0"] and r[1]["_ws.expert.message"] == []
    assert r[2]["sclp.reassembled_in"] == ["3"]
    assert r[3]["sclp.segment"] == ["2", "3"] and r[3]["sclp.reassembled.length"] == ["100"]
    assert r[4]["_ws.expert.message"] == ["Shorter than the 12-byte SCLP header"]
    assert r[4]["sclp.id"] == []
    assert r[5]["_ws.expert.message"] == ["Segment other than the first carries no bytes"]
    assert r[6]["_ws.expert.message"] == [
        "Segment ends past 65,535 payload bytes (Remaining + length)"
    ]
    assert r[7]["_ws.expert.message"] == [] and r[7]["vxlan.vni"] == []
    assert r[8]["_ws.expert.message"][0].startswith("Tunnel payload malformed")


def test_truncated_capture(tmp_path: Path) -> None:
    """A capture cut at 200 bytes: the checksum cannot be checked and nothing is
    reassembled, but the header still decodes and the length is the real one."""
    pcap = tmp_path / "snap.pcap"
    write_pcap(pcap, [_native(s) for s in _segments(INORDER, ID_INORDER)], snaplen=200)
    r = run_tshark(pcap, tmp_path)
    assert [row["sclp.checksum.status"] for row in r.values()] == [["2"]] * 3  # unverified
    assert r[1]["sclp.length"] == [str(SEG)]
    assert all(row["sclp.segment"] == [] for row in r.values())
    assert "Segment truncated by the capture" in r[1]["_ws.expert.message"][0]


def test_random_segments_never_break_the_dissector(tmp_path: Path) -> None:
    """Segments with random fields, lengths and order (a few IDs shared so that
    reassembly, overlaps and conflicts happen): every frame dissects without a Lua error."""
    rng = random.Random(1234)
    packets = []
    for _ in range(300):
        ident = rng.randrange(8)
        payload = rng.randbytes(rng.choice([0, 1, 7, 8, 50, 700, 1468]))
        hdr = SclpHeader(
            rng.choice([SPORT, 1]),
            rng.choice([4789, 6081, 9]),
            ident,
            rng.random() < 0.3,
            rng.choice([0, 50, 700, 1468, 3000, rng.randrange(65536)]),
        )
        segment = _with_header(hdr, payload, checksum=rng.random() < 0.8)
        if rng.random() < 0.05:
            segment = segment[: rng.randrange(len(segment))]
        packets.append(_udp(segment) if rng.random() < 0.3 else _native(segment))
    pcap = tmp_path / "fuzz.pcap"
    write_pcap(pcap, packets)
    r = run_tshark(pcap, tmp_path)
    assert sorted(r) == list(range(1, 301))
    assert all(row["_ws.col.Protocol"] for row in r.values())


def test_coalesced_udp_packets_are_split(tmp_path: Path) -> None:
    """A UDP carrier packet as captured before GSO segmentation or after GRO: several
    segments back to back in one datagram (the segmenter's buffer is exactly one
    UDP_SEGMENT send).  The dissector finds the segments and reassembles them."""
    one = Segmenter(0x10).segment_payload(INORDER, SPORT, 4789, SEG_UDP, checksum=False)
    # GRO-like, checksums computed: equal-size segments of two payloads (A is an exact
    # multiple of M, so its last segment is full) cut across packets: A0 A1 | A2 B0 B1 | B2
    a = _segments(_vxlan(0x0B0B0B, 11, 3 * SEG_UDP - vxlan.VXLAN_LEN), 0x20, seg_size=SEG_UDP)
    b = _segments(_vxlan(0x0C0C0C, 12, 3000), 0x21, seg_size=SEG_UDP)
    assert len(a) == len(b) == 3 and len(a[2]) == len(a[0])
    pcap = tmp_path / "gso.pcap"
    packets = [one.buffer, a[0] + a[1], a[2] + b[0] + b[1], b[2]]
    write_pcap(pcap, [_udp(bytes(p)) for p in packets])
    r = run_tshark(pcap, tmp_path)
    assert _ints(r[1]["sclp.id"]) == [0x10] * 3
    assert r[1]["sclp.first"] == ["1", "0", "0"]
    assert r[1]["sclp.checksum.status"] == ["3"] * 3
    assert r[1]["sclp.segment"] == ["1"]
    assert r[1]["sclp.reassembled.length"] == [str(len(INORDER))]
    assert _ints(r[1]["vxlan.vni"]) == [VNI_INORDER]
    _assert_inner(r[1], 2)
    assert _ints(r[2]["sclp.id"]) == [0x20, 0x20]
    # a packet starting with the last segment of A: the stride comes from the ports alone
    assert _ints(r[3]["sclp.id"]) == [0x20, 0x21, 0x21]
    assert r[3]["sclp.checksum.status"] == ["1"] * 3
    assert r[3]["sclp.segment"] == ["2", "3"]
    assert _ints(r[3]["vxlan.vni"]) == [0x0B0B0B]
    _assert_inner(r[3], 11)
    assert r[2]["sclp.reassembled_in"] == ["3", "3"]
    assert r[3]["sclp.reassembled_in"] == ["4", "4"]  # B0 and B1
    assert r[4]["sclp.segment"] == ["3", "4"]
    assert _ints(r[4]["vxlan.vni"]) == [0x0C0C0C]
    _assert_inner(r[4], 12)
    assert all(row["_ws.expert.message"] == [] for row in r.values())


def test_coalesced_splitting_can_be_turned_off(tmp_path: Path) -> None:
    one = Segmenter(0x10).segment_payload(INORDER, SPORT, 4789, SEG_UDP, checksum=False)
    pcap = tmp_path / "gso_off.pcap"
    write_pcap(pcap, [_udp(bytes(one.buffer))])
    r = run_tshark(pcap, tmp_path, "-o", "sclp.split_coalesced:FALSE")
    assert _ints(r[1]["sclp.id"]) == [0x10]  # one (too long) segment
    assert r[1]["sclp.length"] == [str(len(one.buffer) - sclp.SCLP_HLEN)]


SAMPLES = DISSECTOR.parent / "samples"
PI_WARN = 0x00600000  # Wireshark's expert severity: chat < note < warn < error


@pytest.mark.parametrize(("name", "status"), [("sclp-ip.pcap", "1"), ("sclp-udp.pcap", "3")])
def test_demo_captures(tmp_path: Path, name: str, status: str) -> None:
    """Real traffic: the captures shipped in contrib/wireshark/samples were taken on the
    testbed's underlay during pings and a TCP flow (docs/wireshark.md).  Every segment
    verifies (native) or says "not computed" (UDP carrier, where GSO/GRO packets hold
    several segments); every segment ends up in a payload; every payload is VXLAN VNI
    42 between the two VMs; nothing is worth a warning.  (The inner TCP checksum of a
    large GSO frame is left for the receiving VM's virtual NIC to fill in, checksum
    offload carried through the tunnel, so Wireshark's TCP check is left off.)"""
    rows = run_tshark(SAMPLES / name, tmp_path, "-o", "tcp.check_checksum:FALSE")
    sclp_rows = [r for r in rows.values() if r["sclp.id"]]
    assert len(sclp_rows) == len(rows) > 50
    reassembled = [r for r in sclp_rows if r["sclp.segment"]]
    assert len(reassembled) >= 3
    for r in sclp_rows:
        assert set(r["sclp.checksum.status"]) == {status}, r["frame.number"]
        severities = [int(v, 0) for v in r["_ws.expert.severity"]]
        assert max(severities, default=0) < PI_WARN, (r["frame.number"], r["_ws.expert.message"])
        n = r["frame.number"][0]
        # each segment is delivered: whole, in a payload completed here, or later
        whole = r["sclp.first"][0] == "1" and r["sclp.remaining"][0] == "0"
        assert whole or r["sclp.segment"] or r["sclp.reassembled_in"], n
        if r["vxlan.vni"]:
            assert _ints(r["vxlan.vni"]) == [42] * len(r["vxlan.vni"])
    inner = {a for r in sclp_rows for a in r["ip.src"] if a.startswith("192.168.77.")}
    assert inner == {"192.168.77.1", "192.168.77.2"}


def test_payload_cut_into_too_many_segments_is_dropped(tmp_path: Path) -> None:
    """More than 2,048 segments for one payload (1-byte segments here): the dissector
    stops collecting instead of letting a crafted capture make every segment slower."""
    batch = Segmenter(5).segment_payload(bytes(2100), SPORT, 4789, 1)
    pcap = tmp_path / "slivers.pcap"
    write_pcap(pcap, [_native(bytes(s)) for s in batch.segments()])
    r = run_tshark(pcap, tmp_path, "-o", "sclp.timeout:100000")  # 1 ms apart: 2.1 s
    assert r[2049]["_ws.expert.message"] == [
        "More segments than a 65,535-byte payload can have: payload discarded"
    ]
    assert r[2048]["sclp.discarded_in"] == ["2049"]
    assert r[2100]["_ws.expert.message"] == ["Segment of a discarded payload"]
    assert all(row["sclp.segment"] == [] for row in r.values())

"""Cross-check the tunnel encodings against Wireshark's dissectors (tshark).

One pcap, written with :class:`sclp.wire.pcap.PcapWriter`, holds whole packets
(outer Ethernet/IPv4/UDP|GRE|TCP, tunnel header, inner Ethernet/IPv4/TCP) built only
with the project's codecs.  tshark must find the VNI/VSID/context ID we wrote and, past
the tunnel header, the inner IPv4 addresses: that proves header length, port/protocol
binding and every field position at once.

tshark notes (4.0): NVGRE has no fields of its own, it is GRE with K set and protocol
0x6558, so the VSID and FlowID are read from ``gre.key``.  The STT dissector is a
heuristic on IP that only runs before the TCP dissector with
``ip.try_heuristic_first:TRUE``; it reassembles multi-segment STT frames by itself
(``stt.reassemble`` defaults to TRUE).  Its own checksum check (``stt.check_checksum``)
reports our valid TCP checksums as bad, so the outer TCP checksum is verified by the TCP
dissector in a second run without the heuristic instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from sclp.wire import geneve, nvgre, stt, vxlan
from sclp.wire.geneve import GeneveHeader, GeneveOption
from sclp.wire.nvgre import NvgreHeader
from sclp.wire.pcap import PcapWriter
from sclp.wire.stt import SttFlags, SttHeader
from sclp.wire.vxlan import VxlanHeader

from .packets import OUTER_DST_IP, OUTER_SRC_IP, inner_tcp_frame, outer_gre, outer_tcp, outer_udp

pytestmark = pytest.mark.tshark

TSHARK = shutil.which("tshark")
if TSHARK is None:
    pytest.skip("tshark is not installed (apt-get install tshark)", allow_module_level=True)

Row = dict[str, list[str]]

VXLAN_VNI = 0x123456
GENEVE_HDR = GeneveHeader(
    0x654321,
    options=(geneve.mss_option(1448), GeneveOption(0x0102, 0x85, bytes(range(8)))),
)
NVGRE_HDR = NvgreHeader(vsid=0xABCDEF, flow_id=0x12)
STT_HDR = SttHeader(
    context_id=0x0102030405060708,
    flags=SttFlags.CSUM_PARTIAL | SttFlags.IPV4 | SttFlags.TCP,
    l4_offset=34,  # inner Ethernet 14 + IPv4 20
    mss=1448,
    vlan_tci=(5 << 13) | 100,
)
STT_SEG_HDR = SttHeader(context_id=0xFEDCBA9876543210)
STT_PACKET_ID = 0xDEADBEEF
STT_SEG_PACKET_ID = 0x1111
STT_CUT = 100  # where the two-segment STT frame is split

# frame number -> (inner source, inner destination)
INNER_ADDRS = {n: (bytes([10, 0, n, 1]), bytes([10, 0, n, 2])) for n in range(1, 7)}


def _inner(n: int) -> bytes:
    return inner_tcp_frame(*INNER_ADDRS[n])


def _stt_frame(hdr: SttHeader, n: int) -> bytes:
    return stt.encode(hdr) + _inner(n)


def _packets() -> list[bytes]:
    seg_frame = _stt_frame(STT_SEG_HDR, 5)
    frame = _stt_frame(STT_HDR, 4)
    return [
        outer_udp(vxlan.VXLAN_PORT, vxlan.encode(VxlanHeader(VXLAN_VNI)) + _inner(1)),
        outer_udp(geneve.GENEVE_PORT, geneve.encode(GENEVE_HDR) + _inner(2)),
        outer_gre(nvgre.encode(NVGRE_HDR) + _inner(3)),
        outer_tcp(stt.STT_PORT, stt.stt_seq(len(frame), 0), STT_PACKET_ID, frame),
        # one STT frame in two segments: frame length and offsets in the sequence number
        outer_tcp(
            stt.STT_PORT,
            stt.stt_seq(len(seg_frame), 0),
            STT_SEG_PACKET_ID,
            seg_frame[:STT_CUT],
            ident=5,
        ),
        outer_tcp(
            stt.STT_PORT,
            stt.stt_seq(len(seg_frame), STT_CUT),
            STT_SEG_PACKET_ID,
            seg_frame[STT_CUT:],
            ident=6,
        ),
    ]


FIELDS = [
    "frame.number",
    "vxlan.vni",
    "vxlan.flag_i",
    "geneve.vni",
    "geneve.version",
    "geneve.proto_type",
    "geneve.flags.critical",
    "geneve.option.class",
    "geneve.option.type",
    "geneve.option.type.critical",
    "geneve.option.length",
    "geneve.option.unknown.data",
    "gre.key",
    "gre.proto",
    "gre.flags.key",
    "gre.flags.checksum",
    "gre.flags.sequence_number",
    "stt.version",
    "stt.flags",
    "stt.l4offset",
    "stt.mss",
    "stt.vlan.pcp",
    "stt.vlan.v",
    "stt.vlan.id",
    "stt.context_id",
    "stt.pkt_len",
    "stt.seg_off",
    "stt.pkt_id",
    "stt.reassembled.length",
    "ip.src",
    "ip.dst",
    "tcp.dstport",
    "ip.checksum.status",
    "udp.checksum.status",
    "tcp.checksum.status",
    "_ws.expert.message",
]


def _run_tshark(pcap: Path, config_dir: Path, *prefs: str) -> dict[int, Row]:
    assert TSHARK is not None
    cmd = [TSHARK, "-n", "-r", str(pcap), "-T", "fields", "-E", "separator=\t"]
    cmd += ["-E", "occurrence=a", "-E", "aggregator=,"]
    for pref in prefs:
        cmd += ["-o", pref]
    for field in FIELDS:
        cmd += ["-e", field]
    # a private config dir: no user preferences can change the dissection
    env = {**os.environ, "WIRESHARK_CONFIG_DIR": str(config_dir)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    rows: dict[int, Row] = {}
    for line in proc.stdout.splitlines():
        values = line.split("\t")
        assert len(values) == len(FIELDS), line
        row = {f: (v.split(",") if v else []) for f, v in zip(FIELDS, values, strict=True)}
        rows[int(row["frame.number"][0])] = row
    return rows


@pytest.fixture(scope="module")
def dissected(tmp_path_factory: pytest.TempPathFactory) -> Callable[[bool], dict[int, Row]]:
    base = tmp_path_factory.mktemp("tshark")
    pcap = base / "tunnels.pcap"
    with pcap.open("wb") as f:
        writer = PcapWriter(f)
        for i, packet in enumerate(_packets()):
            writer.write(packet, ts=1_700_000_000.0 + i * 0.001)
    checks = ("ip.check_checksum:TRUE", "udp.check_checksum:TRUE", "tcp.check_checksum:TRUE")
    results = {
        True: _run_tshark(pcap, base, "ip.try_heuristic_first:TRUE", *checks),
        False: _run_tshark(pcap, base, *checks),
    }
    return lambda stt_heuristic: results[stt_heuristic]


def _ip(addr: bytes) -> str:
    return ".".join(str(b) for b in addr)


def _assert_inner_addresses(row: Row, n: int) -> None:
    """Outer then inner IPv4 addresses, and the inner TCP port, as tshark saw them."""
    src, dst = INNER_ADDRS[n]
    assert row["ip.src"] == [_ip(OUTER_SRC_IP), _ip(src)]
    assert row["ip.dst"] == [_ip(OUTER_DST_IP), _ip(dst)]
    assert row["tcp.dstport"] == ["5201"]


def _true(values: list[str]) -> list[bool]:
    return [v in ("1", "True") for v in values]


def test_vxlan(dissected: Callable[[bool], dict[int, Row]]) -> None:
    row = dissected(True)[1]
    assert [int(v, 0) for v in row["vxlan.vni"]] == [VXLAN_VNI]
    assert _true(row["vxlan.flag_i"]) == [True]
    _assert_inner_addresses(row, 1)


def test_geneve_with_options(dissected: Callable[[bool], dict[int, Row]]) -> None:
    row = dissected(True)[2]
    assert [int(v, 0) for v in row["geneve.vni"]] == [GENEVE_HDR.vni]
    assert row["geneve.version"] == ["0"]
    assert [int(v, 0) for v in row["geneve.proto_type"]] == [0x6558]
    # the second option is critical (type 0x85), so C must have been set on encode
    assert _true(row["geneve.flags.critical"]) == [True]
    assert [int(v, 0) for v in row["geneve.option.class"]] == [0xFFF0, 0x0102]
    assert [int(v, 0) for v in row["geneve.option.type"]] == [0x01, 0x85]
    assert _true(row["geneve.option.type.critical"]) == [False, True]
    # per-option lengths (header included) are the last values of this field
    assert [int(v) for v in row["geneve.option.length"][-2:]] == [8, 12]
    assert row["geneve.option.unknown.data"] == [
        (1448).to_bytes(2, "big").hex() + "0000",
        bytes(range(8)).hex(),
    ]
    _assert_inner_addresses(row, 2)


def test_nvgre(dissected: Callable[[bool], dict[int, Row]]) -> None:
    row = dissected(True)[3]
    assert [int(v, 0) for v in row["gre.key"]] == [(NVGRE_HDR.vsid << 8) | NVGRE_HDR.flow_id]
    assert [int(v, 0) for v in row["gre.proto"]] == [0x6558]
    assert _true(row["gre.flags.key"]) == [True]
    assert _true(row["gre.flags.checksum"] + row["gre.flags.sequence_number"]) == [False] * 2
    _assert_inner_addresses(row, 3)


def test_stt_single_segment(dissected: Callable[[bool], dict[int, Row]]) -> None:
    row = dissected(True)[4]
    assert [int(v, 0) for v in row["stt.context_id"]] == [STT_HDR.context_id]
    assert row["stt.version"] == ["0"]
    assert [int(v, 0) for v in row["stt.flags"]] == [int(STT_HDR.flags)]
    assert row["stt.l4offset"] == ["34"]
    assert row["stt.mss"] == ["1448"]
    assert (row["stt.vlan.pcp"], row["stt.vlan.id"]) == (["5"], ["100"])
    assert _true(row["stt.vlan.v"]) == [True]
    # the pseudo-TCP fields: frame length / offset from the sequence number, packet ID
    assert row["stt.pkt_len"] == [str(stt.STT_HLEN + len(_inner(4)))]
    assert row["stt.seg_off"] == ["0"]
    assert [int(v, 0) for v in row["stt.pkt_id"]] == [STT_PACKET_ID]
    # no complaint about our header (bad L4 offset, MSS without offload, version ...)
    assert row["_ws.expert.message"] == []
    _assert_inner_addresses(row, 4)


def test_stt_two_segments_reassembled(dissected: Callable[[bool], dict[int, Row]]) -> None:
    rows = dissected(True)
    first, second = rows[5], rows[6]
    frame_len = stt.STT_HLEN + len(_inner(5))
    assert first["stt.pkt_len"] == second["stt.pkt_len"] == [str(frame_len)]
    assert (first["stt.seg_off"], second["stt.seg_off"]) == (["0"], [str(STT_CUT)])
    assert first["stt.context_id"] == []  # the header is read only once reassembled
    # Wireshark keeps the first segment's TCP header in the reassembled data
    assert second["stt.reassembled.length"] == [str(20 + frame_len)]
    assert [int(v, 0) for v in second["stt.context_id"]] == [STT_SEG_HDR.context_id]
    assert (second["stt.vlan.v"], second["stt.mss"]) == (["0"], ["0"])
    _assert_inner_addresses(second, 5)


def test_all_checksums_valid(dissected: Callable[[bool], dict[int, Row]]) -> None:
    # Without the STT heuristic every outer TCP header (STT) goes to the TCP dissector
    # too, so this run verifies outer and inner IPv4, UDP and TCP checksums everywhere.
    rows = dissected(False)
    assert sorted(rows) == [1, 2, 3, 4, 5, 6]
    for n, row in rows.items():
        statuses = (
            row["ip.checksum.status"] + row["udp.checksum.status"] + row["tcp.checksum.status"]
        )
        assert statuses and set(statuses) == {"1"}, (n, row)  # 1 = good
    assert len(rows[1]["ip.checksum.status"]) == 2  # outer and inner
    assert rows[1]["udp.checksum.status"] == ["1"]
    assert rows[4]["tcp.checksum.status"] == ["1"]  # the STT pseudo-TCP header

"""Cross-check the tunnel codecs against Scapy, an independent implementation: Scapy
decodes what the project encodes to the same field values, and the project decodes
what Scapy builds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sclp.wire import geneve, nvgre, vxlan
from sclp.wire.errors import DropReason, MalformedPacket
from sclp.wire.geneve import GeneveHeader, GeneveOption
from sclp.wire.nvgre import NvgreHeader
from sclp.wire.vxlan import VxlanHeader

from .packets import inner_tcp_frame, outer_gre, outer_udp

pytest.importorskip("scapy")
from scapy.contrib.geneve import GENEVE, GeneveOptions
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import GRE, Ether
from scapy.layers.vxlan import VXLAN

INNER = inner_tcp_frame(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
SCAPY_INNER = (
    Ether(dst="0a:00:00:00:00:22", src="0a:00:00:00:00:11")
    / IP(src="10.1.1.1", dst="10.1.1.2")
    / TCP(sport=1234, dport=80)
    / (b"x" * 64)
)

vni_st = st.integers(0, 0xFFFFFF)
options_st = st.lists(
    st.builds(
        GeneveOption,
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFF),
        st.integers(0, 8).flatmap(lambda w: st.binary(min_size=4 * w, max_size=4 * w)),
    ),
    max_size=5,
)


def _assert_inner_is_ours(inner: object) -> None:
    assert isinstance(inner, Ether)
    assert inner.src == "0a:00:00:00:00:11"
    assert inner[IP].src == "10.0.0.1" and inner[IP].dst == "10.0.0.2"
    assert inner[TCP].dport == 5201


# --- VXLAN -----------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(vni_st)
def test_vxlan_project_to_scapy(vni: int) -> None:
    s = VXLAN(vxlan.encode(VxlanHeader(vni)) + INNER)
    assert s.vni == vni
    assert int(s.flags) == 0x08  # only I set
    assert s.reserved2 == 0
    _assert_inner_is_ours(s.payload)


@settings(max_examples=40, deadline=None)
@given(vni_st)
def test_vxlan_scapy_to_project(vni: int) -> None:
    raw = bytes(VXLAN(vni=vni, flags=0x08) / SCAPY_INNER)
    assert vxlan.decode(raw) == VxlanHeader(vni=vni, flags=0x08)
    assert vxlan.vni_of(raw) == vni
    assert raw[vxlan.VXLAN_LEN :] == bytes(SCAPY_INNER)


def test_vxlan_scapy_without_i_flag_rejected() -> None:
    raw = bytes(VXLAN(vni=5, flags=0) / SCAPY_INNER)
    with pytest.raises(MalformedPacket) as exc:
        vxlan.decode(raw)
    assert exc.value.reason is DropReason.BAD_TUNNEL_HEADER


def test_vxlan_full_packet_scapy_dissects() -> None:
    pkt = Ether(outer_udp(vxlan.VXLAN_PORT, vxlan.encode(VxlanHeader(0xABCDE)) + INNER))
    assert pkt[VXLAN].vni == 0xABCDE
    _assert_inner_is_ours(pkt[VXLAN].payload)


# --- Geneve ----------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(vni_st, options_st, st.booleans())
def test_geneve_project_to_scapy(vni: int, options: list[GeneveOption], oam: bool) -> None:
    hdr = GeneveHeader(vni, options=tuple(options), oam=oam)
    s = GENEVE(geneve.encode(hdr) + INNER)
    assert s.version == 0
    assert s.vni == vni
    assert s.proto == 0x6558
    assert s.oam == int(oam)
    assert s.critical == int(any(o.critical for o in options))
    assert s.optionlen * 4 == hdr.header_len - geneve.GENEVE_BASE_LEN
    got = [(o.classid, o.type, o.length * 4, bytes(o.data)) for o in s.options]
    assert got == [(o.opt_class, o.opt_type, len(o.data), o.data) for o in options]
    _assert_inner_is_ours(s.payload)


@settings(max_examples=40, deadline=None)
@given(vni_st, options_st, st.booleans(), st.booleans())
def test_geneve_scapy_to_project(
    vni: int, options: list[GeneveOption], oam: bool, critical: bool
) -> None:
    s_opts = [GeneveOptions(classid=o.opt_class, type=o.opt_type, data=o.data) for o in options]
    raw = bytes(
        GENEVE(vni=vni, proto=0x6558, oam=int(oam), critical=int(critical), options=s_opts)
        / SCAPY_INNER
    )
    hdr = geneve.decode(raw)
    assert hdr == GeneveHeader(vni, 0x6558, tuple(options), oam, critical)
    assert raw[hdr.header_len :] == bytes(SCAPY_INNER)


def test_geneve_mss_option_seen_by_scapy() -> None:
    hdr = GeneveHeader(77, options=(geneve.mss_option(1448),))
    s = GENEVE(geneve.encode(hdr))
    (opt,) = s.options
    assert (opt.classid, opt.type, opt.length) == (0xFFF0, 0x01, 1)
    assert bytes(opt.data) == (1448).to_bytes(2, "big") + b"\0\0"
    raw = bytes(GENEVE(vni=77, options=[GeneveOptions(classid=0xFFF0, type=1, data=opt.data)]))
    assert geneve.find_mss(geneve.decode(raw)) == 1448


def test_geneve_full_packet_scapy_dissects() -> None:
    hdr = GeneveHeader(0x1234, options=(geneve.mss_option(1460),))
    pkt = Ether(outer_udp(geneve.GENEVE_PORT, geneve.encode(hdr) + INNER))
    assert pkt[GENEVE].vni == 0x1234
    _assert_inner_is_ours(pkt[GENEVE].payload)


# --- NVGRE / GRE -------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(vni_st, st.integers(0, 0xFF))
def test_nvgre_project_to_scapy(vsid: int, flow_id: int) -> None:
    s = GRE(nvgre.encode(NvgreHeader(vsid, flow_id)) + INNER)
    assert (s.chksum_present, s.routing_present, s.key_present, s.seqnum_present) == (0, 0, 1, 0)
    assert s.version == 0
    assert s.proto == 0x6558
    assert s.key == (vsid << 8) | flow_id
    _assert_inner_is_ours(s.payload)


@settings(max_examples=40, deadline=None)
@given(vni_st, st.integers(0, 0xFF))
def test_nvgre_scapy_to_project(vsid: int, flow_id: int) -> None:
    raw = bytes(GRE(key_present=1, key=(vsid << 8) | flow_id, proto=0x6558) / SCAPY_INNER)
    assert nvgre.decode(raw) == NvgreHeader(vsid, flow_id)
    assert raw[nvgre.NVGRE_LEN :] == bytes(SCAPY_INNER)


@pytest.mark.parametrize(
    "gre",
    [
        GRE(key_present=0, proto=0x6558),  # no key: not NVGRE
        GRE(key_present=1, key=0x100, chksum_present=1, proto=0x6558),
        GRE(key_present=1, key=0x100, seqnum_present=1, sequence_number=7, proto=0x6558),
        GRE(key_present=1, key=0x100, proto=0x0800),  # plain IP-in-GRE
        GRE(key_present=1, key=0x100, version=1, proto=0x6558),
    ],
    ids=["no-key", "checksum", "sequence", "ipv4-payload", "version-1"],
)
def test_non_nvgre_gre_rejected(gre: GRE) -> None:
    with pytest.raises(MalformedPacket) as exc:
        nvgre.decode(bytes(gre / SCAPY_INNER))
    assert exc.value.reason is DropReason.BAD_TUNNEL_HEADER


def test_nvgre_full_packet_scapy_dissects() -> None:
    pkt = Ether(outer_gre(nvgre.encode(NvgreHeader(0x654321, 0x9A)) + INNER))
    assert pkt[IP].proto == 47
    assert pkt[GRE].key == 0x6543219A
    _assert_inner_is_ours(pkt[GRE].payload)

"""The Scapy layer (:mod:`sclp.scapy_layer`) against the project's own SCLP code: what
Scapy builds, the project's reassembler accepts and puts back together; what the
project's segmenter emits, Scapy parses to the same fields and checksums.  Scapy's
checksum (``scapy.utils.checksum``) is an implementation independent of
:mod:`sclp.wire.checksum`, so agreement checks both."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sclp.engine.reassembler import Reassembler
from sclp.engine.segmenter import Segmenter
from sclp.wire import ipv4, sclp
from sclp.wire.errors import DropReason
from sclp.wire.sclp import Carrier, SclpHeader
from tests.wire.sclp_vectors import case_payload, load_cases

from .packets import inner_tcp_frame

pytest.importorskip("scapy")
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from sclp.scapy_layer import SCLP, segment

SRC, DST = "192.0.2.1", "192.0.2.2"
INNER = inner_tcp_frame(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), b"z" * 3000)
VXLAN_PAYLOAD = bytes(VXLAN(vni=0x123456, flags=0x08)) + INNER
NOW = 100.0


def _feed(reasm: Reassembler, segments: list[bytes]) -> list[bytes]:
    out = []
    for seg in segments:
        done = reasm.add_segment(SRC, DST, seg, NOW)
        if done is not None:
            out.append(bytes(done.payload))
    return out


# --- Scapy builds, the project receives --------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    payload=st.binary(min_size=0, max_size=6000),
    seg_size=st.integers(1, 1500),
    ident=st.integers(0, 0x7FFFFFFF),
    seed=st.integers(0, 2**32 - 1),
)
def test_scapy_segments_reassembled_by_the_project(
    payload: bytes, seg_size: int, ident: int, seed: int
) -> None:
    segs = [bytes(s) for s in segment(payload, 49321, 4789, seg_size, ident)]
    if len(segs) > 64:  # keep the example cheap; sizes are what matter
        return
    assert len(segs) == max(1, -(-len(payload) // seg_size))
    for seg in segs:
        sclp.verify_checksum(seg, Carrier.IP)  # raises if Scapy's checksum is wrong
    random.Random(seed).shuffle(segs)
    reasm = Reassembler()
    assert _feed(reasm, segs) == [payload]
    assert not reasm.drops


def test_scapy_ip_packets_carry_decodable_segments() -> None:
    """Whole IPv4 packets from Scapy: protocol 234 set by the binding, the project's
    IPv4 and SCLP decoders read them, the reassembler rebuilds the VXLAN payload."""
    packets = [bytes(IP(src=SRC, dst=DST) / s) for s in segment(VXLAN_PAYLOAD, 5, 4789, 1468, 9)]
    assert len(packets) == 3
    reasm = Reassembler()
    out = []
    for pkt in packets:
        ip = ipv4.decode(pkt)
        assert ip.protocol == sclp.IPPROTO_SCLP
        seg = pkt[ip.header_len : ip.total_length]
        hdr = sclp.decode(seg)
        assert (hdr.sport, hdr.dport, hdr.ident) == (5, 4789, 9)
        done = reasm.add_segment(ip.src, ip.dst, seg, NOW)
        if done is not None:
            out.append(bytes(done.payload))
    assert out == [VXLAN_PAYLOAD]


def test_zero_checksum_only_accepted_by_a_udp_carrier_receiver() -> None:
    zeroed = []
    for s in segment(VXLAN_PAYLOAD, 5, 4789, 1460, 11):
        s.chksum = 0  # "not computed": kept as given, not filled in on build
        zeroed.append(bytes(s))
    assert all(z[10:12] == b"\0\0" for z in zeroed)
    assert _feed(Reassembler(Carrier.UDP), zeroed) == [VXLAN_PAYLOAD]
    native = Reassembler(Carrier.IP)
    assert _feed(native, zeroed) == []
    assert native.drops[DropReason.BAD_CHECKSUM] == len(zeroed)


def test_wrong_checksum_is_rejected_by_the_project() -> None:
    seg = bytes(SCLP(sport=1, dport=4789, id=3, chksum=0x1234) / b"payload")
    reasm = Reassembler()
    assert _feed(reasm, [seg]) == []
    assert reasm.drops[DropReason.BAD_CHECKSUM] == 1
    assert not SCLP(seg).checksum_ok()


# --- the project builds, Scapy reads -----------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(0, 20000),
    seg_size=st.integers(200, 9000),
    ident=st.integers(0, 0x7FFFFFFF),
    sport=st.integers(0, 0xFFFF),
    dport=st.sampled_from([4789, 6081, 1234]),
)
def test_project_segments_parsed_by_scapy(
    size: int, seg_size: int, ident: int, sport: int, dport: int
) -> None:
    payload = bytes((i * 13) % 256 for i in range(size))
    batch = Segmenter(ident).segment_payload(payload, sport, dport, seg_size)
    offset = 0
    for i, view in enumerate(batch.segments()):
        raw = bytes(view)
        pkt = SCLP(raw)
        assert (pkt.sport, pkt.dport, pkt.id) == (sport, dport, ident)
        assert bool(pkt.flags.F) == (i == 0)
        plen = len(raw) - sclp.SCLP_HLEN
        assert pkt.remaining == size - offset - plen
        offset += plen
        assert pkt.checksum_ok()
        # Scapy recomputes the same checksum the project wrote
        # (the payload as Raw: random bytes parsed as VXLAN would not rebuild verbatim)
        rebuilt = pkt.copy()
        rebuilt.remove_payload()
        rebuilt.chksum = None
        assert bytes(rebuilt / Raw(raw[sclp.SCLP_HLEN :])) == raw
    assert offset == size


@pytest.mark.parametrize("case", load_cases(), ids=lambda c: c["name"])
def test_golden_vectors_reproduced_by_scapy(case: dict[str, Any]) -> None:
    """The independent encoder's golden segments, byte for byte, from Scapy's side."""
    payload = case_payload(case)
    segs = segment(
        payload,
        case["sport"],
        case["dport"],
        case["segment_payload_size"],
        case["identification"],
    )
    assert [bytes(s)[: sclp.SCLP_HLEN].hex() for s in segs] == [
        seg["header_hex"] for seg in case["segments"]
    ]
    assert [s.chksum for s in (SCLP(bytes(s)) for s in segs)] == [
        seg["checksum"] for seg in case["segments"]
    ]


def test_computed_zero_checksum_is_sent_as_ffff() -> None:
    # choose two payload bytes that make the header + payload sum 0xFFFF, so the
    # ones' complement is 0
    hdr = SclpHeader(1, 2, 3, True, 0)
    s = sclp.header_sum(hdr.sport, hdr.dport, hdr.word, hdr.remaining)
    payload = (0xFFFF - s).to_bytes(2, "big")
    assert sclp.compute_checksum(hdr, payload) == 0xFFFF
    pkt = SCLP(bytes(SCLP(sport=1, dport=2, id=3) / payload))
    assert pkt.chksum == 0xFFFF
    assert pkt.checksum_ok()


# --- bindings ------------------------------------------------------------------------


def test_ip_binding_and_vxlan_payload() -> None:
    first = segment(VXLAN_PAYLOAD, 49321, 4789, 1468, 0x1A2B)[0]
    pkt = IP(bytes(IP(src=SRC, dst=DST) / first))
    assert pkt.proto == 234
    assert pkt[SCLP].id == 0x1A2B and pkt[SCLP].flags.F
    assert pkt[VXLAN].vni == 0x123456
    inner = pkt[VXLAN].payload
    assert isinstance(inner, Ether)
    assert inner[IP].src == "10.0.0.1" and inner[IP].dst == "10.0.0.2"
    assert inner[TCP].dport == 5201


def test_later_segments_are_raw_bytes() -> None:
    later = segment(VXLAN_PAYLOAD, 49321, 4789, 1468, 1)[1]
    pkt = IP(bytes(IP(src=SRC, dst=DST) / later))
    assert not pkt[SCLP].flags.F
    assert isinstance(pkt[SCLP].payload, Raw)
    assert VXLAN not in pkt


def test_ipv6_binding_and_geneve_payload() -> None:
    built = IPv6(src="2001:db8::1", dst="2001:db8::2") / SCLP(dport=6081) / GENEVE(vni=77)
    built = built / Ether() / IP(src="10.9.0.1", dst="10.9.0.2")
    pkt = IPv6(bytes(built))
    assert pkt.nh == 234
    assert pkt[SCLP].dport == 6081
    assert pkt[GENEVE].vni == 77
    assert pkt[GENEVE].payload[IP].dst == "10.9.0.2"
    assert pkt[SCLP].checksum_ok()


def test_udp_carrier_binding() -> None:
    built = IP(src=SRC, dst=DST) / UDP(sport=50000) / SCLP(chksum=0) / VXLAN(vni=5) / Ether()
    pkt = IP(bytes(built))
    assert pkt[UDP].dport == sclp.SCLP_UDP_PORT
    assert pkt[SCLP].chksum == 0
    assert pkt[SCLP].checksum_ok(udp_carrier=True)
    assert not pkt[SCLP].checksum_ok(udp_carrier=False)
    assert pkt[VXLAN].vni == 5
    # and the project decodes the carrier's SCLP segment the same way
    seg = bytes(pkt[SCLP])
    assert sclp.decode(seg) == SclpHeader(49152, 4789, 0, True, 0, 0)
    sclp.verify_checksum(seg, Carrier.UDP)


def test_summary() -> None:
    pkt = SCLP(sport=49321, dport=4789, id=0x1A2B, remaining=58720)
    assert pkt.summary() == "SCLP 49321 > 4789 id=6699 first rem=58720"


@pytest.mark.parametrize(
    ("payload", "seg_size", "ident"),
    [(b"x" * 65536, 1468, 1), (b"x", 0, 1), (b"x", 10, -1), (b"x", 10, 0x80000000)],
)
def test_segment_rejects_bad_arguments(payload: bytes, seg_size: int, ident: int) -> None:
    with pytest.raises(ValueError):
        segment(payload, 1, 2, seg_size, ident)


def test_empty_payload_is_one_first_segment() -> None:
    [only] = segment(b"", 1, 2, 100, 3)
    assert only.flags.F and only.remaining == 0
    assert bytes(only)[: sclp.SCLP_HLEN] == bytes(
        Segmenter(3).segment_payload(b"", 1, 2, 100).buffer
    )

"""Broken and hostile packets on every socket the endpoint opens.

One host namespace runs two endpoints that between them open every receive socket
there is: endpoint A serves VXLAN (UDP 4789), Geneve (UDP 6081), NVGRE (raw GRE),
STT (raw TCP, port 7471) and VXLAN over native SCLP (raw IP protocol 234);
endpoint B serves Geneve over SCLP in the UDP carrier (UDP 7234).  Their TAPs stay
in the host namespace, each with an address, so a listener there sees what would
reach a VM.  The other namespace sends, with the peers' own address so that the
packets get past the peer check to the parsers and tables: truncated headers,
checksums that do not match, Remaining/total contradictions, zero-length and
1-byte segments, slivers, maximum-size headers and Remaining, unknown ports and
VNIs, and seeded random bytes on every socket.

Every case checks the exact drop counters it must move (and that nothing was
delivered unless the case is a valid edge case that must be delivered), then that
both endpoints are alive, answer on their control sockets and stay within a
bounded RSS.  At the end the reassembly tables drain and both endpoints exit 0 on
SIGTERM.
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from sclp.engine.stt import pseudo_sum_for
from sclp.io import netns as nsio
from sclp.wire import geneve, stt, vxlan

from ..e2e.helpers import Endpoint, Topology, counters, delta, link_mac, wait_for_counters
from .hostile import (
    RAW_GRE,
    RAW_SCLP,
    RAW_TCP,
    UDP_GENEVE,
    UDP_SCLP,
    UDP_VXLAN,
    Listener,
    assert_alive,
    drained,
    inner_udp_frame,
    raw_sclp,
    rss_kib,
    sclp_segments,
    send_from,
    wait_for,
)

pytestmark = [pytest.mark.netns]

LOCAL, PEER = "10.77.0.1", "10.77.0.2"
CAP = 4 * 1024 * 1024
RSS_SLACK_KIB = 24 * 1024
A_NETWORKS = {1: "vxlan", 2: "geneve", 3: "nvgre", 4: "stt", 5: "vxlan-sclp"}
B_NETWORKS = {6: "geneve-sclp"}


@dataclass
class Bed:
    h1: str
    h2: str
    endpoints: dict[str, Endpoint]
    rss: dict[str, int] = field(default_factory=dict)

    def mac(self, vni: int) -> str:
        return link_mac(self.h1, f"bv{vni}")


def _config(name: str, h1: str, networks: dict[int, str], carrier: str) -> str:
    text = (
        f'name = "{name}"\n[underlay]\nlocal = "{LOCAL}"\nnamespace = "{h1}"\n'
        f'sclp_carrier = "{carrier}"\n[limits]\nreasm_max_bytes = {CAP}\n'
    )
    for vni, protocol in networks.items():
        text += (
            f'[[network]]\nvni = {vni}\nprotocol = "{protocol}"\ntap = "bv{vni}"\n'
            f'address = "192.168.{vni}.1/24"\npeers = ["{PEER}"]\n'
        )
    return text


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    with Topology() as topo:
        h1, h2 = topo.netns("h1"), topo.netns("h2")
        nsio.create_veth("ul0", h1, "ul0", h2)
        for ns, address in ((h1, LOCAL), (h2, PEER)):
            with nsio.NetNS(ns) as handle:
                handle.add_address("ul0", f"{address}/24")
        endpoints = {
            "a": topo.start_endpoint(
                topo.endpoint_name("a"), _config(topo.endpoint_name("a"), h1, A_NETWORKS, "ip")
            ),
            "b": topo.start_endpoint(
                topo.endpoint_name("b"), _config(topo.endpoint_name("b"), h1, B_NETWORKS, "udp")
            ),
        }
        bed = Bed(h1, h2, endpoints)
        bed.rss = {key: rss_kib(ep.proc.pid) for key, ep in endpoints.items()}
        yield bed
        # Everything thrown at them, the tables drain and both stop cleanly.
        for ep in endpoints.values():
            c = wait_for(ep.stats, drained, timeout=3.0)["counters"]
            assert (c["reasm_bytes_held"], c["reasm_entries"]) == (0, 0), c
        assert topo.stop_endpoints() == [0, 0], [ep.log_text()[-300:] for ep in endpoints.values()]


# -- packets --------------------------------------------------------------------------------


def frame_to(bed: Bed, vni: int, tag: str) -> bytes:
    """A frame that reaches the listener on TAP ``bv<vni>`` (padded to 200 bytes)."""
    payload = tag.encode() + bytes(200)
    return inner_udp_frame(bed.mac(vni), payload, f"192.168.{vni}.1", src=f"192.168.{vni}.99")


def stt_summed(segment: bytes) -> bytes:
    """``segment`` with a TCP checksum that verifies, whatever its length: in the
    checksum field, or for a segment too short to hold one in the source port."""
    pseudo = pseudo_sum_for(socket.inet_aton(PEER), socket.inet_aton(LOCAL), len(segment))
    at = 16 if len(segment) >= 18 else 0
    rest = bytearray(segment)
    rest[at : at + 2] = b"\0\0"
    padded = bytes(rest) + b"\0" * (len(rest) % 2)
    total = pseudo + sum(struct.unpack(f"!{len(padded) // 2}H", padded))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    rest[at : at + 2] = struct.pack("!H", ~total & 0xFFFF)
    return bytes(rest)


def stt_raw(seq: int, ident: int, data: bytes, doff: int = 5, length: int | None = None) -> bytes:
    """A pseudo-TCP segment to port 7471 with any fields, cut to ``length`` bytes."""
    hdr = struct.pack("!HHIIBBHHH", 5000, stt.STT_PORT, seq, ident, doff << 4, 0x10, 65535, 0, 0)
    segment = (hdr + bytes(max(0, doff * 4 - 20)) + data)[:length]
    return stt_summed(segment)


def geneve_raw(
    optlen_words: int, protocol: int, options: bytes, vni: int = 2, ver: int = 0
) -> bytes:
    first = (ver << 6) | optlen_words
    return struct.pack("!BBHI", first, 0, protocol, vni << 8) + options


A100 = b"a" * 100


@dataclass(frozen=True)
class Case:
    endpoint: str
    where: tuple[str, int]
    expect: dict[str, int]
    deliver: tuple[int, str] | None = None  # (vni, tag) that must reach the listener
    wait: float = 0.3  # extra seconds the verdict may take (added to the deadline)


def cases(bed: Bed, name: str) -> tuple[Case, list[bytes]]:
    """The packets of case ``name`` and what they must do."""
    vx5 = vxlan.header(5)
    if name == "sclp-truncated-headers":
        return Case("a", RAW_SCLP, {"drop_too_short": 12}), [bytes(k) for k in range(12)]
    if name == "sclp-bad-and-zero-checksum":
        good = bytearray(raw_sclp(2001, True, 0, vx5 + frame_to(bed, 5, "bad")))
        good[-1] ^= 0x40
        zero = raw_sclp(2002, True, 0, vx5 + frame_to(bed, 5, "zero"), checksum=False)
        return Case("a", RAW_SCLP, {"drop_bad_checksum": 2}), [bytes(good), zero]
    if name == "sclp-inconsistent-total":
        return Case("a", RAW_SCLP, {"drop_inconsistent_total": 1}), [
            raw_sclp(2003, True, 500, A100),
            raw_sclp(2003, True, 700, A100),
        ]
    if name == "sclp-past-end":
        return Case("a", RAW_SCLP, {"drop_past_end": 1}), [
            raw_sclp(2004, True, 500, A100),
            raw_sclp(2004, False, 550, A100),
        ]
    if name == "sclp-oversize-remaining":
        return Case("a", RAW_SCLP, {"drop_oversize": 2}), [
            raw_sclp(2005, True, 65500, A100),
            raw_sclp(2006, False, 65500, A100),
        ]
    if name == "sclp-zero-length-later-segment":
        return Case("a", RAW_SCLP, {"drop_malformed": 1}), [raw_sclp(2007, False, 10, b"")]
    if name == "sclp-zero-length-payload":
        return Case("a", RAW_SCLP, {"drop_too_short": 1}), [raw_sclp(2008, True, 0, b"")]
    if name == "sclp-maximum-remaining-then-timeout":
        case = Case("a", RAW_SCLP, {"drop_timeout": 1}, wait=1.8)
        return case, [raw_sclp(2009, True, 0xFFFF, b"")]
    if name == "sclp-one-byte-segments-delivered":
        segments = sclp_segments(vx5 + frame_to(bed, 5, "onebyte"), "ip", seg_size=1)
        return Case("a", RAW_SCLP, {"rx_frames": 1}, deliver=(5, "onebyte")), segments
    if name == "sclp-slivers":
        # 130 disjoint 1-byte ranges of one payload: the 129th is one too many.
        slivers = [raw_sclp(2010, False, 2 * k, b"s") for k in range(130)]
        return Case("a", RAW_SCLP, {"drop_malformed": 1}), slivers
    if name == "sclp-unknown-port-and-vni":
        wrong_port = raw_sclp(2011, True, 0, vx5 + frame_to(bed, 5, "port"), dport=9)
        wrong_vni = raw_sclp(2012, True, 0, vxlan.header(1) + frame_to(bed, 1, "vni"))
        case = Case("a", RAW_SCLP, {"drop_unknown_port": 1, "drop_unknown_vni": 1})
        return case, [wrong_port, wrong_vni]
    if name == "udp-sclp-empty-and-truncated":
        return Case("b", UDP_SCLP, {"drop_too_short": 12}), [bytes(k) for k in range(12)]
    if name == "udp-sclp-checksums":
        g6 = geneve.header(6)
        bad = bytearray(raw_sclp(3001, True, 0, g6 + frame_to(bed, 6, "bad"), dport=6081))
        bad[-1] ^= 0x01
        zero = raw_sclp(3002, True, 0, g6 + frame_to(bed, 6, "udpzero"), dport=6081, checksum=False)
        case = Case("b", UDP_SCLP, {"drop_bad_checksum": 1, "rx_frames": 1}, deliver=(6, "udpzero"))
        return case, [bytes(bad), zero]
    if name == "udp-sclp-inconsistent-total":
        return Case("b", UDP_SCLP, {"drop_inconsistent_total": 1}), [
            raw_sclp(3003, True, 500, A100, dport=6081),
            raw_sclp(3003, True, 700, A100, dport=6081),
        ]
    if name == "vxlan-truncated-and-wrong":
        packets = [
            b"",
            bytes(7),
            bytes(8),  # I flag clear
            vxlan.header(999) + frame_to(bed, 1, "x"),
            vxlan.header(5) + frame_to(bed, 5, "x"),  # VNI 5 is not VXLAN here
            vxlan.header(1) + bytes(10),  # inner frame shorter than Ethernet
        ]
        expect = {"drop_too_short": 3, "drop_bad_tunnel_header": 1, "drop_unknown_vni": 2}
        return Case("a", UDP_VXLAN, expect), packets
    if name == "geneve-broken-headers":
        teb = 0x6558
        packets = [
            geneve_raw(63, teb, bytes(20)),  # options run past the datagram
            geneve_raw(0, 0x0800, b""),  # not Ethernet
            geneve_raw(2, teb, struct.pack("!HBB", 0x0102, 0x80, 1) + bytes(4)),  # critical
            geneve_raw(1, teb, struct.pack("!HBB", 0x0102, 0x01, 3)),  # option overruns
            geneve_raw(0, teb, b"", ver=1),
        ]
        packets = [p + frame_to(bed, 2, "x") if i else p for i, p in enumerate(packets)]
        expect = {"drop_too_short": 1, "drop_bad_tunnel_header": 3, "drop_bad_version": 1}
        return Case("a", UDP_GENEVE, expect), packets
    if name == "geneve-maximum-header-delivered":
        options = b"".join(struct.pack("!HBB", 0x0102, 0x01, 20) + bytes(80) for _ in range(3))
        assert len(options) == 252
        packet = geneve_raw(63, 0x6558, options) + frame_to(bed, 2, "genevemax")
        return Case("a", UDP_GENEVE, {"rx_frames": 1}, deliver=(2, "genevemax")), [packet]
    if name == "nvgre-broken-headers":
        packets = [
            bytes(3),
            struct.pack("!HHI", 0x0000, 0x6558, 3 << 8),  # key bit clear
            struct.pack("!HHI", 0x2000, 0x0800, 3 << 8),  # not Ethernet
            struct.pack("!HHI", 0x2001, 0x6558, 3 << 8),  # version 1
        ]
        packets = [p + frame_to(bed, 3, "x") if i else p for i, p in enumerate(packets)]
        return Case("a", RAW_GRE, {"drop_too_short": 1, "drop_bad_tunnel_header": 3}), packets
    if name == "stt-broken-segments":
        packets = [
            stt_raw(0, 1, b"", length=4),  # ports only
            stt_raw(100 << 16, 2, b"x" * 50, doff=4),  # data offset < 5
            stt_raw(100 << 16, 3, b"x" * 10, doff=15, length=30),  # header past the end
            stt_raw(10 << 16, 4, b"x" * 10),  # frame shorter than the STT header
            stt_raw((120 << 16) | 100, 5, b"x" * 50),  # runs past the frame
            stt_raw(1000 << 16, 6, b"x" * 100),
            stt_raw((2000 << 16) | 100, 6, b"x" * 100),  # same frame, other length
            stt_raw(1000 << 16, 7, b"x" * 100)[:-1] + b"!",  # checksum wrong
        ]
        expect = {
            "drop_too_short": 2,
            "drop_malformed": 2,
            "drop_past_end": 1,
            "drop_inconsistent_total": 1,
            "drop_bad_checksum": 1,
        }
        return Case("a", RAW_TCP, expect), packets
    if name == "stt-maximum-tcp-header-delivered":
        stt_frame = stt.encode(stt.SttHeader(context_id=4)) + frame_to(bed, 4, "sttmax")
        segment = stt_raw(len(stt_frame) << 16, 8, stt_frame, doff=15)
        return Case("a", RAW_TCP, {"rx_frames": 1}, deliver=(4, "sttmax")), [segment]
    raise AssertionError(name)


CASE_NAMES = [
    "sclp-truncated-headers",
    "sclp-bad-and-zero-checksum",
    "sclp-inconsistent-total",
    "sclp-past-end",
    "sclp-oversize-remaining",
    "sclp-zero-length-later-segment",
    "sclp-zero-length-payload",
    "sclp-maximum-remaining-then-timeout",
    "sclp-one-byte-segments-delivered",
    "sclp-slivers",
    "sclp-unknown-port-and-vni",
    "udp-sclp-empty-and-truncated",
    "udp-sclp-checksums",
    "udp-sclp-inconsistent-total",
    "vxlan-truncated-and-wrong",
    "geneve-broken-headers",
    "geneve-maximum-header-delivered",
    "nvgre-broken-headers",
    "stt-broken-segments",
    "stt-maximum-tcp-header-delivered",
]


def _check_alive_and_bounded(bed: Bed) -> None:
    for key, ep in bed.endpoints.items():
        assert_alive(ep.proc, ep.stats)
        grown = rss_kib(ep.proc.pid) - bed.rss[key]
        assert grown <= CAP // 1024 + RSS_SLACK_KIB, (key, grown)


def _moved(change: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in change.items() if v and (k.startswith("drop_") or k == "rx_frames")}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_is_dropped_and_counted(bed: Bed, name: str) -> None:
    case, packets = cases(bed, name)
    ep = bed.endpoints[case.endpoint]
    before = counters(ep.stats())
    listener = None
    if case.deliver:
        listener = Listener(bed.h1, f"192.168.{case.deliver[0]}.1", idle=0.5)
    try:
        send_from(bed.h2, PEER, LOCAL, case.where, packets, gap=0.002)
        # Every packet counted and every expected verdict given (a reassembly timeout
        # comes case.wait seconds later), then the exact checks below.
        wait_for_counters(
            ep.stats,
            before,
            lambda c: c["rx_packets"] >= len(packets) and _moved(c) == case.expect,
            timeout=case.wait + 10.0,
            what=f"{name}: counters {case.expect}",
        )
        received = listener.received() if listener else []
    finally:
        if listener:
            listener.close()
    change = delta(before, counters(ep.stats()))
    moved = _moved(change)
    assert moved == case.expect, (moved, change)
    assert change["rx_packets"] == len(packets), change
    assert received == ([case.deliver[1]] if case.deliver else []), received
    _check_alive_and_bounded(bed)


def _drops(change: dict[str, int]) -> int:
    return sum(v for k, v in change.items() if k.startswith("drop_"))


def _random_packets(where: tuple[str, int], count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    packets = []
    for _ in range(count):
        data = bytearray(rng.randbytes(rng.choice([0, 1, 7, 12, 20, 60, 300, 1400])))
        if where == RAW_TCP:  # otherwise not STT, and left to the kernel uncounted
            data = bytearray(rng.randbytes(4)) + data
            data[2:4] = stt.STT_PORT.to_bytes(2, "big")
        packets.append(bytes(data))
    return packets


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("endpoint", "where"),
    [
        ("a", UDP_VXLAN),
        ("a", UDP_GENEVE),
        ("a", RAW_SCLP),
        ("a", RAW_GRE),
        ("a", RAW_TCP),
        ("b", UDP_SCLP),
    ],
    ids=["udp4789", "udp6081", "ip234", "gre", "tcp7471", "udp7234"],
)
def test_random_bytes_on_every_socket_are_all_counted(
    bed: Bed, endpoint: str, where: tuple[str, int]
) -> None:
    ep = bed.endpoints[endpoint]
    packets = _random_packets(where, 300, seed=where[1])
    before = counters(ep.stats())
    send_from(bed.h2, PEER, LOCAL, where, packets, gap=0.0005)
    change = wait_for_counters(
        ep.stats,
        before,
        lambda c: c["rx_packets"] >= len(packets) and _drops(c) >= len(packets),
        timeout=10.0,
        what=f"{len(packets)} random packets received and dropped",
    )
    drops = _drops(change)
    assert change["rx_packets"] == len(packets), change
    assert (drops, change["rx_frames"]) == (len(packets), 0), change
    _check_alive_and_bounded(bed)

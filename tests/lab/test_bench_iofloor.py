"""The I/O floors' arithmetic and reporting without namespaces (the measurement itself
runs in the quick bench, tests/e2e/test_bench.py)."""

from __future__ import annotations

import struct

import pytest

from sclp.lab.bench.configs import BenchConfig
from sclp.lab.bench.iofloor import (
    HEADERS,
    NATIVE_SEGMENTS,
    TCP_PAYLOAD,
    UDP_SEGMENT_BYTES,
    IoFloors,
    LoopFigures,
    native_stride,
    s_per_gb,
    tso_frame,
)
from sclp.lab.bench.measure import summarise
from sclp.lab.bench.tables import io_floor_text
from sclp.wire.checksum import internet_checksum, ones_sum
from sclp.wire.virtio_net import VNET_HDR_LEN, GsoType, decode


def test_the_circulating_frame_is_a_tso_frame_a_tap_accepts() -> None:
    frame = tso_frame()
    assert len(frame) == HEADERS + TCP_PAYLOAD == 64_000
    hdr = decode(frame)
    assert hdr.needs_csum and hdr.gso_kind == GsoType.TCPV4
    assert (hdr.csum_start, hdr.csum_offset, hdr.hdr_len) == (34, 16, 54)
    eth_ip = frame[VNET_HDR_LEN:]
    assert eth_ip[12:14] == b"\x08\x00"
    assert internet_checksum(eth_ip[14:34]) == 0  # IPv4 header checksum holds
    assert struct.unpack_from("!H", eth_ip, 16)[0] == 20 + 20 + TCP_PAYLOAD
    # NEEDS_CSUM: the TCP checksum field holds the pseudo-header sum only.
    pseudo = ones_sum(eth_ip[26:34] + struct.pack("!BBH", 0, 6, 20 + TCP_PAYLOAD))
    assert struct.unpack_from("!H", eth_ip, 34 + 16)[0] == pseudo
    # The last UDP segment is short, so GRO never merges two frames.
    assert len(frame) % UDP_SEGMENT_BYTES != 0


def test_floor_arithmetic() -> None:
    assert s_per_gb(0.5, 2_000_000_000) == pytest.approx(0.25)
    assert s_per_gb(0.5, 0) is None
    stride = native_stride(64_000)
    assert -(-64_000 // stride) == NATIVE_SEGMENTS and stride + 20 <= 1500
    figures = LoopFigures(cpu_s=0.8, frames=1000, payload_bytes=4_000_000_000, wall_s=2.0)
    assert figures.s_per_gb == pytest.approx(0.2) and figures.gbps == pytest.approx(16.0)
    floors = IoFloors(figures, None, {"native": "NftError: no nft"})
    doc = floors.as_json()
    assert doc["io_floor_s_per_gb"] == pytest.approx(0.2)
    assert doc["native_floor_s_per_gb"] is None and doc["native"] is None
    assert doc["udp"]["frames"] == 1000 and doc["errors"] == {"native": "NftError: no nft"}


def test_results_are_divided_by_their_carriers_floor() -> None:
    run = {
        "gbps": 2.0,
        "bytes_received": 1e9,
        "vm_rx_packets": 1000,
        "endpoint_cpu_s": 3.0,
        "retransmits": 0,
    }
    floors = {"io_floor_s_per_gb": 0.5, "native_floor_s_per_gb": 2.0}
    udp = summarise(BenchConfig("vxlan-sclp", "udp"), "tcp", [run], 1500, 50.0, None, **floors)
    assert udp["cpu_per_gb_vs_io_floor"] == pytest.approx(6.0)
    assert udp["cpu_per_gb_vs_native_floor"] is None  # not a native-mode result
    for cfg in (BenchConfig("vxlan-sclp", "ip"), BenchConfig("stt")):
        native = summarise(cfg, "tcp", [run], 1500, 50.0, None, **floors)
        assert native["cpu_per_gb_vs_native_floor"] == pytest.approx(1.5), cfg.label
        assert native["cpu_per_gb_vs_io_floor"] == pytest.approx(6.0), cfg.label


def test_the_page_says_when_a_run_has_no_io_floors() -> None:
    assert io_floor_text({"copy_floor_s_per_gb": 0.1}) == "I/O floors: not measured in this run"
    text = io_floor_text(
        {"copy_floor_s_per_gb": 0.1, "io_floor_s_per_gb": 0.35, "native_floor_s_per_gb": None}
    )
    assert "UDP carrier 0.350 CPU s/GB (3.5 × the copy floor)" in text
    assert "native mode not measured" in text

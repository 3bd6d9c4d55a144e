"""Regressions: packets that stopped the endpoint, now dropped and counted.  They
run without root, at the data path's seam (and through the runner's receive handler
for what a socket read returns).

An inner frame whose headers are longer than the VM's MTU: a frame larger than the
VM MTU goes to the VM as a GSO frame whose MSS, when the tunnel carries none, is
the VM MTU minus the IP and TCP headers.  An IPv6 frame with a 2 KB Hop-by-Hop
header made that negative and ``struct.pack`` raised out of the event loop: one
packet from a (spoofable) peer address stopped the endpoint.

An empty UDP datagram to any of the endpoint's UDP ports (see its test).
"""

from __future__ import annotations

import struct
from collections import Counter
from typing import Any

import pytest

from sclp.endpoint.config import parse_config
from sclp.endpoint.datapath import FRAME_BUF, HEADROOM, DataPath, Deliver
from sclp.endpoint.runner import Runner, UnderlaySender
from sclp.endpoint.tunnels import Channel
from sclp.wire import vxlan
from sclp.wire.virtio_net import VNET_HDR_LEN

PEER = "10.77.0.2"
VM_MTU = 1450  # VXLAN's default over a 1500-byte underlay


def data_path(protocol: str = "vxlan", carrier: str = "ip") -> DataPath:
    return DataPath(
        parse_config(
            f'name = "reg"\n[underlay]\nlocal = "10.77.0.1"\nsclp_carrier = "{carrier}"\n'
            f'[[network]]\nvni = 42\nprotocol = "{protocol}"\ntap = "tap0"\n'
            f'peers = ["{PEER}"]\n'
        ),
        1500,
    )


def ipv6_tcp_frame(ext_len: int, payload: int) -> bytes:
    """Ethernet + IPv6 + one Hop-by-Hop header of ``ext_len`` bytes + TCP + data."""
    eth = bytes.fromhex("020000000001020000000002") + b"\x86\xdd"
    ext = bytes([6, ext_len // 8 - 1]) + bytes(ext_len - 2)
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1, 0, 5 << 4, 0x10, 1000, 0, 0)
    body = ext + tcp + bytes(payload)
    ip6 = struct.pack("!IHBB16s16s", 0x60000000, len(body), 0, 64, bytes(16), bytes(16))
    return eth + ip6 + body


def receive_vxlan(dp: DataPath, frame: bytes) -> list[Deliver]:
    datagram = memoryview(vxlan.header(42) + frame)
    return dp.from_udp(Channel.VXLAN, PEER, datagram, len(datagram), 0.0)


def test_headers_longer_than_the_vm_mtu_are_dropped_not_fatal() -> None:
    dp = data_path()
    frame = ipv6_tcp_frame(ext_len=2048, payload=100)
    assert len(frame) > VM_MTU + 18  # takes the GSO path
    assert receive_vxlan(dp, frame) == []
    assert dp.networks[42].counters["drop_malformed"] == 1


def test_a_large_frame_with_room_for_data_still_goes_out_as_gso() -> None:
    dp = data_path()
    assert dp.networks[42].vm_mtu == VM_MTU
    frame = ipv6_tcp_frame(ext_len=64, payload=4000)
    (out,) = receive_vxlan(dp, frame)
    flags, gso_type, hdr_len, gso_size, csum_start, csum_off = struct.unpack("<BBHHHH", out.vnet)
    assert flags == 1 and csum_off == 16  # NEEDS_CSUM at the TCP checksum field
    l4 = 14 + 40 + 64
    assert (gso_type, hdr_len, csum_start) == (4, l4 + 20, l4)  # GSO_TCPV6
    assert gso_size == VM_MTU - 40 - 64 - 20
    assert bytes(out.frame) == frame


class OneEmptyDatagram:
    """A UdpSocket stand-in whose one read returns an empty datagram from ``src``."""

    def __init__(self, src: str) -> None:
        self.src = src

    def recv_batch(self) -> tuple[list[Any], list[int], list[tuple[str, int]], list[int]]:
        return [memoryview(b"")], [0], [(self.src, 40000)], [0]


@pytest.mark.parametrize("channel", [Channel.SCLP, Channel.VXLAN, Channel.GENEVE])
@pytest.mark.parametrize("src", [PEER, "10.77.0.9"])
def test_an_empty_udp_datagram_is_counted_not_fatal(channel: Channel, src: str) -> None:
    """Regression: an empty datagram to port 7234, 4789 or 6081, from anyone, divided
    by zero (``range(0, 0, 0)`` / ``-(-0 // 0)``) and stopped the endpoint."""
    dp = data_path(carrier="udp")
    runner = Runner(dp, UnderlaySender({}, {}, Counter()), lambda: 0.0)
    try:
        runner._on_udp(channel, OneEmptyDatagram(src), 64, 0.0)  # type: ignore[arg-type]
    finally:
        runner.close()
    counters = dp.stats()["counters"]
    assert (counters["rx_packets"], counters["drop_too_short"]) == (1, 1)
    # and straight at the data path, as a zero-length view
    assert dp.from_udp(channel, src, memoryview(b""), 0, 0.0) == []
    assert dp.stats()["counters"]["drop_too_short"] == 2


def test_stt_gso_frame_with_l4_beyond_255_bytes_is_dropped_not_fatal() -> None:
    """Regression: a VM's TCP GSO frame whose TCP header starts past byte 255 (IPv6
    with 202+ bytes of extension headers, e.g. sticky Hop-by-Hop options) made
    ``stt.encode`` raise: STT's L4 Offset field has 8 bits.  Read from the TAP it
    stopped the endpoint; now it is dropped as malformed."""
    dp = data_path("stt")
    net = dp.networks[42]
    frame = bytearray(ipv6_tcp_frame(ext_len=256, payload=3000))
    frame[0:6] = b"\xff" * 6  # broadcast: flooded to the peer, no FDB entry needed
    l4 = 14 + 40 + 256
    buf = bytearray(FRAME_BUF)
    # NEEDS_CSUM, GSO_TCPV6; segments of 1,316 bytes: within the VM MTU of 1,500
    struct.pack_into("<BBHHHH", buf, HEADROOM - VNET_HDR_LEN, 1, 4, l4 + 20, 1000, l4, 16)
    buf[HEADROOM : HEADROOM + len(frame)] = frame
    assert dp.from_vm(net.ports[0], buf, VNET_HDR_LEN + len(frame), 0.0) == []
    assert net.counters["tx_frames"] == 1
    assert net.counters["drop_malformed"] == 1

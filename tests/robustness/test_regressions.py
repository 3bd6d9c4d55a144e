"""Regressions: packets that stopped the endpoint, now dropped and counted.  They
run without root: the endpoint's receive steps are called directly, a socket pair
stands in for a TAP and a fake for a UDP socket.

An inner frame whose headers are longer than the VM's MTU: a frame larger than the
VM MTU goes to the TAP as a GSO frame whose MSS, when the tunnel carries none, is
the VM MTU minus the IP and TCP headers.  An IPv6 frame with a 2 KB Hop-by-Hop
header made that negative and ``struct.pack`` raised out of the event loop: one
packet from a (spoofable) peer address stopped the endpoint.

An empty UDP datagram to any of the endpoint's UDP ports (see its test).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from sclp.endpoint.config import parse_config
from sclp.endpoint.nve import VNET_LEN, Endpoint, Port
from sclp.switch.fdb import Fdb

PEER = "10.77.0.2"
VM_MTU = 1450


class PairTap:
    """A TAP stand-in: what the endpoint writes arrives on ``peer``."""

    name = "tap0"

    def __init__(self) -> None:
        self.mine, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)

    def fileno(self) -> int:
        return self.mine.fileno()

    def close(self) -> None:
        self.mine.close()
        self.peer.close()


@pytest.fixture
def endpoint() -> Iterator[tuple[Endpoint, PairTap]]:
    cfg = parse_config(
        'name = "deliver"\n[underlay]\nlocal = "10.77.0.1"\n'
        f'[[network]]\nvni = 42\nprotocol = "vxlan"\ntap = "tap0"\npeers = ["{PEER}"]\n'
    )
    ep = Endpoint(cfg)
    tap = PairTap()
    net = cfg.networks[0]
    ep.ports[42] = Port(net, tap, VM_MTU, Fdb(net.peers, 300.0, 4096))  # type: ignore[arg-type]
    yield ep, tap
    tap.close()


def ipv6_tcp_frame(ext_len: int, payload: int) -> bytes:
    """Ethernet + IPv6 + one Hop-by-Hop header of ``ext_len`` bytes + TCP + data."""
    eth = bytes.fromhex("020000000001020000000002") + b"\x86\xdd"
    ext = bytes([6, ext_len // 8 - 1]) + bytes(ext_len - 2)
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1, 0, 5 << 4, 0x10, 1000, 0, 0)
    body = ext + tcp + bytes(payload)
    ip6 = struct.pack("!IHBB16s16s", 0x60000000, len(body), 0, 64, bytes(16), bytes(16))
    return eth + ip6 + body


def test_headers_longer_than_the_vm_mtu_are_dropped_not_fatal(
    endpoint: tuple[Endpoint, PairTap],
) -> None:
    ep, _ = endpoint
    frame = ipv6_tcp_frame(ext_len=2048, payload=100)
    assert len(frame) > VM_MTU + 18  # takes the GSO path
    ep._deliver("vxlan", PEER, 42, memoryview(frame), 0, 0.0)
    assert ep.ports[42].counters["drop_malformed"] == 1
    assert ep.ports[42].counters["rx_frames"] == 0


def test_a_large_frame_with_room_for_data_still_goes_out_as_gso(
    endpoint: tuple[Endpoint, PairTap],
) -> None:
    ep, tap = endpoint
    frame = ipv6_tcp_frame(ext_len=64, payload=4000)
    ep._deliver("vxlan", PEER, 42, memoryview(frame), 0, 0.0)
    assert ep.ports[42].counters["rx_frames"] == 1
    written = tap.peer.recv(70000)
    flags, gso_type, hdr_len, gso_size, csum_start, csum_off = struct.unpack_from(
        "<BBHHHH", written
    )
    assert flags == 1 and csum_off == 16  # NEEDS_CSUM at the TCP checksum field
    l4 = 14 + 40 + 64
    assert (gso_type, hdr_len, csum_start) == (4, l4 + 20, l4)  # GSO_TCPV6
    assert gso_size == VM_MTU - 40 - 64 - 20
    assert written[VNET_LEN:] == frame


class OneDatagramSocket:
    """A UDP socket stand-in that returns one datagram, then would block."""

    def __init__(self, data: bytes, src: str = PEER) -> None:
        self.queue = [(data, src)]

    def recvmsg_into(
        self, buffers: list[memoryview], ancbufsize: int
    ) -> tuple[int, list[tuple[int, int, bytes]], int, tuple[str, int]]:
        if not self.queue:
            raise BlockingIOError
        data, src = self.queue.pop()
        buffers[0][: len(data)] = data
        return len(data), [], 0, (src, 40000)


@pytest.mark.parametrize("handler", ["sclp-udp", "vxlan", "geneve"])
@pytest.mark.parametrize("src", [PEER, "10.77.0.9"])
def test_an_empty_udp_datagram_is_counted_not_fatal(handler: str, src: str) -> None:
    """Regression: an empty datagram to port 7234, 4789 or 6081, from anyone, divided
    by zero (``range(0, 0, 0)`` / ``-(-0 // 0)``) and stopped the endpoint."""
    cfg = parse_config(
        'name = "empty"\n[underlay]\nlocal = "10.77.0.1"\nsclp_carrier = "udp"\n'
        f'[[network]]\nvni = 42\nprotocol = "vxlan"\ntap = "tap0"\npeers = ["{PEER}"]\n'
    )
    ep = Endpoint(cfg)
    sock = OneDatagramSocket(b"", src)
    if handler == "sclp-udp":
        ep._on_sclp_udp(sock, 0.0)  # type: ignore[arg-type]
    else:
        ep._on_udp_classic(sock, handler, 0.0)  # type: ignore[arg-type]
    assert (ep.counters["rx_packets"], ep.counters["drop_too_short"]) == (1, 1)


def test_stt_gso_frame_with_l4_beyond_255_bytes_is_dropped_not_fatal() -> None:
    """Regression: a VM's TCP GSO frame whose TCP header starts past byte 255 (IPv6
    with 202+ bytes of extension headers, e.g. sticky Hop-by-Hop options) made
    ``stt.encode`` raise: STT's L4 Offset field has 8 bits.  Read from the TAP it
    stopped the endpoint; now it is dropped as malformed."""
    cfg = parse_config(
        'name = "sttl4"\n[underlay]\nlocal = "10.77.0.1"\n'
        f'[[network]]\nvni = 42\nprotocol = "stt"\ntap = "tap0"\npeers = ["{PEER}"]\n'
    )
    ep = Endpoint(cfg)
    tap = PairTap()
    net = cfg.networks[0]
    port = Port(net, tap, VM_MTU, Fdb(net.peers, 300.0, 4096))  # type: ignore[arg-type]
    frame = bytearray(ipv6_tcp_frame(ext_len=256, payload=3000))
    frame[0:6] = b"\xff" * 6  # broadcast: flooded to the peer, no FDB entry needed
    l4 = 14 + 40 + 256
    vnet = struct.pack("<BBHHHH", 1, 4, l4 + 20, 1400, l4, 16)  # NEEDS_CSUM, GSO_TCPV6
    tap.mine.setblocking(False)  # as the endpoint's TAP is
    try:
        tap.peer.send(vnet + bytes(frame))
        ep._on_tap(port, 0.0)
    finally:
        tap.close()
    assert port.counters["tx_frames"] == 1
    assert port.counters["drop_malformed"] == 1

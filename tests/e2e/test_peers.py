"""Only configured peers may inject frames: a well-formed tunnel packet from an
underlay address that is not a peer is dropped and counted as ``drop_not_peer``,
while the very same packet sent from the peer's address reaches the VM (so the drop
is the peer check, not a malformed packet).

The "hostile" sender is host 2's namespace with a second underlay address,
10.77.0.9, which no endpoint lists in ``peers``.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import struct
import sys
from collections.abc import Iterator

import pytest

from sclp.endpoint import tunnels
from sclp.engine.segmenter import Segmenter
from sclp.engine.stt import SttSegmenter
from sclp.io import netns as nsio
from sclp.lab import testbed as sclp_testbed
from sclp.lab.testbed import OVERLAY, UNDERLAY, VNI
from sclp.wire import geneve, nvgre, stt, vxlan
from sclp.wire.checksum import internet_checksum
from sclp.wire.sclp import Carrier, segment_payload_size

from .helpers import (
    counters,
    delta,
    link_mac,
    popen_in,
    shut_down,
    stop,
    wait_for_counters,
    wait_line,
)

pytestmark = [pytest.mark.netns]

HOSTILE = "10.77.0.9"
LISTEN_PORT = 9999
HOSTILE_PACKETS = 5
CASES = [
    ("vxlan", "ip"),
    ("geneve", "ip"),
    ("nvgre", "ip"),
    ("stt", "ip"),
    ("vxlan-sclp", "ip"),
    ("geneve-sclp", "udp"),
]

# Prints the payload of every datagram to 192.168.77.1:9999 until 1 s of silence.
_LISTENER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(10.0)
print("ready", flush=True)
try:
    while True:
        data = s.recv(2048)
        print(data.decode(errors="replace"), flush=True)
        s.settimeout(1.0)
except socket.timeout:
    pass
"""


def inner_frame(dst_mac: str, payload: bytes) -> bytes:
    """Ethernet + IPv4 + UDP from 192.168.77.99 to VM1's listener."""
    udp = struct.pack("!HHHH", 40000, LISTEN_PORT, 8 + len(payload), 0) + payload
    src_ip = ipaddress.IPv4Address("192.168.77.99").packed
    dst_ip = ipaddress.IPv4Address(OVERLAY[0]).packed
    ip = bytearray(
        struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src_ip, dst_ip)
    )
    struct.pack_into("!H", ip, 10, internet_checksum(ip))
    ethernet = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex("020000000099") + b"\x08\x00"
    return ethernet + bytes(ip) + udp


def tunnel_packets(
    protocol: str, carrier: str, frame: bytes, src: str, dst: str
) -> tuple[int, int, list[bytes]]:
    """(socket type, protocol or UDP port, packets) that carry ``frame`` from
    ``src`` to ``dst`` as an endpoint of ``protocol`` would."""
    sport = 50000
    if protocol == "vxlan":
        return socket.SOCK_DGRAM, vxlan.VXLAN_PORT, [vxlan.header(VNI) + frame]
    if protocol == "geneve":
        return socket.SOCK_DGRAM, geneve.GENEVE_PORT, [geneve.header(VNI) + frame]
    if protocol == "nvgre":
        return socket.SOCK_RAW, socket.IPPROTO_GRE, [nvgre.header(VNI, 0) + frame]
    if protocol == "stt":
        stt_frame = stt.encode(stt.SttHeader(context_id=VNI)) + frame
        src_b, dst_b = (ipaddress.IPv4Address(a).packed for a in (src, dst))
        stt_batch = SttSegmenter().segment_frame(stt_frame, sport, 1460, src_b, dst_b)
        return socket.SOCK_RAW, socket.IPPROTO_TCP, [bytes(s) for s in stt_batch.segments()]
    mode = Carrier.UDP if carrier == "udp" else Carrier.IP
    header = vxlan.header(VNI) if protocol == "vxlan-sclp" else geneve.header(VNI)
    batch = Segmenter().segment_payload(
        header + frame,
        sport,
        tunnels.SCLP_PORT_OF[protocol],
        segment_payload_size(1500, 4, mode),
        checksum=mode is Carrier.IP,
    )
    segments = [bytes(s) for s in batch.segments()]
    if mode is Carrier.UDP:
        return socket.SOCK_DGRAM, 7234, segments
    return socket.SOCK_RAW, 234, segments


def send_from(
    netns: str, src: str, dst: str, kind: int, proto_or_port: int, packets: list[bytes]
) -> None:
    with nsio.NetNS(netns) as ns:
        if kind == socket.SOCK_DGRAM:
            sock = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
            addr = (dst, proto_or_port)
        else:
            sock = ns.socket(socket.AF_INET, socket.SOCK_RAW, proto_or_port)
            addr = (dst, 0)
    with sock:
        sock.bind((src, 0))
        for packet in packets:
            sock.sendto(packet, addr)


def _case_id(case: tuple[str, str]) -> str:
    protocol, carrier = case
    return f"{protocol}-{carrier}" if protocol.endswith("sclp") else protocol


@pytest.fixture(scope="module", params=CASES, ids=_case_id)
def testbed(request: pytest.FixtureRequest) -> Iterator[sclp_testbed.Testbed]:
    protocol, carrier = request.param
    with sclp_testbed.Testbed(protocol, carrier=carrier) as tb:
        with nsio.NetNS(tb.hosts[1]) as ns:
            ns.add_address("ul0", f"{HOSTILE}/24")
        yield tb
        shut_down(tb)


@pytest.mark.timeout(60)
def test_non_peer_packets_are_dropped_and_counted(testbed: sclp_testbed.Testbed) -> None:
    h2, vm1 = testbed.hosts[1], testbed.vms[0]
    mac = link_mac(vm1, "tap0")
    tag = secrets.token_hex(4)
    hostile = tunnel_packets(
        testbed.protocol,
        testbed.carrier,
        inner_frame(mac, f"hostile-{tag}".encode()),
        HOSTILE,
        UNDERLAY[0],
    )
    genuine = tunnel_packets(
        testbed.protocol,
        testbed.carrier,
        inner_frame(mac, f"peer-{tag}".encode()),
        UNDERLAY[1],
        UNDERLAY[0],
    )
    assert len(hostile[2]) == 1  # a small frame: one underlay packet each
    listener = popen_in(vm1, [sys.executable, "-c", _LISTENER, OVERLAY[0], str(LISTEN_PORT)])
    try:
        wait_line(listener, "ready", what="UDP listener in VM1")
        before = counters(testbed.stats(0))

        for _ in range(HOSTILE_PACKETS):
            send_from(h2, HOSTILE, UNDERLAY[0], *hostile)
        # Every hostile packet counted before the genuine one goes out.
        wait_for_counters(
            lambda: testbed.stats(0),
            before,
            lambda c: c["drop_not_peer"] >= HOSTILE_PACKETS,
            timeout=10.0,
            what="hostile packets counted as drop_not_peer",
        )
        # The control: the same packet from the configured peer's address is accepted.
        send_from(h2, UNDERLAY[1], UNDERLAY[0], *genuine)

        out, err = listener.communicate(timeout=20)
    finally:
        stop(listener)
    after = counters(testbed.stats(0))
    received = out.split()
    assert received == [f"peer-{tag}"], (received, err, testbed.log_text(0)[-500:])
    change = delta(before, after)
    assert change["drop_not_peer"] == HOSTILE_PACKETS, change
    # The strangers' packets were dropped by the kernel's peer filter (counted in
    # drop_not_peer, never received); the peer's one was received.
    assert change["rx_packets"] >= 1, change

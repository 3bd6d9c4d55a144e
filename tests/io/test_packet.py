"""sclp.io.packet and the STT ingress drop of sclp.io.nft against the real kernel: a
packet socket with the STT filter between two namespaces over a veth pair, and the
netdev ingress rule that keeps the segments away from the kernel's TCP."""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sclp.io._mmsg import BatchReceiver
from sclp.io.netns import NetNS, create_veth, run_in_netns
from sclp.io.nft import (
    install_stt_ingress_drop,
    remove_stt_ingress_drop,
    stt_ingress_drops,
)
from sclp.io.packet import (
    PacketTap,
    attach_filter,
    drop_all_filter,
    ipv4_payload_bounds,
    open_ipv4_tap,
    stt_filter,
)
from sclp.io.rawip import IPPROTO_TCP, RawIpSocket, source_key
from sclp.wire.checksum import internet_checksum, ones_sum
from sclp.wire.errors import DropReason, MalformedPacket
from sclp.wire.stt import STT_PORT

from ..e2e.helpers import wait_for

NsFactory = Callable[[], NetNS]
SOL_PACKET, PACKET_STATISTICS = 263, 6  # <linux/if_packet.h>
IP_A, IP_B, IP_B2 = "10.72.0.1", "10.72.0.2", "10.72.0.3"
DEV_A, DEV_B = "sclppa", "sclppb"


@pytest.fixture
def veth_pair(netns_factory: NsFactory) -> tuple[NetNS, NetNS]:
    a, b = netns_factory(), netns_factory()
    create_veth(DEV_A, a, DEV_B, b, mtu=1500)
    a.add_address(DEV_A, f"{IP_A}/24")
    b.add_address(DEV_B, f"{IP_B}/24")
    b.add_address(DEV_B, f"{IP_B2}/24")
    return a, b


def _wait_tapped(tap: PacketTap, count: int, timeout: float = 5.0) -> None:
    """Wait until ``count`` packets have passed ``tap``'s filter (``PACKET_STATISTICS``
    ``tp_packets``, which reading resets: summed here), so one batch reads them all."""
    seen = 0

    def all_in() -> bool:
        nonlocal seen
        raw = tap.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        packets, drops = struct.unpack("II", raw)
        assert drops == 0, f"the tap dropped {drops} packets"
        seen += packets
        return seen >= count

    wait_for(all_in, timeout, what=f"{count} packets through the tap")


def _tcp(src: str, dst: str, dport: int, payload: bytes, flags: int = 0x18) -> bytes:
    """A TCP segment with a valid checksum (the kernel adds the IPv4 header)."""
    header = bytearray(struct.pack("!HHIIBBHHH", 50000, dport, 1, 1, 5 << 4, flags, 65535, 0, 0))
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst)
    pseudo += struct.pack("!BBH", 0, 6, len(header) + len(payload))
    struct.pack_into("!H", header, 16, internet_checksum(pseudo + header + payload))
    return bytes(header) + payload


def _ipv4(src: str, dst: str, proto: int, payload: bytes, frag: int = 0, ihl: int = 5) -> bytes:
    """An IPv4 packet with a valid header checksum (``frag``: flags + offset word)."""
    options = bytes(4 * (ihl - 5))
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | ihl,
            0,
            4 * ihl + len(payload),
            0x1234,
            frag,
            64,
            proto,
            0,
            socket.inet_aton(src),
            socket.inet_aton(dst),
        )
        + options
    )
    struct.pack_into("!H", header, 10, internet_checksum(header))
    return bytes(header) + payload


def _drain(sock: socket.socket, count: int, timeout: float) -> list[bytes]:
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
            break
        try:
            out.append(sock.recv(70_000))
        except BlockingIOError:
            continue
    return out


def _rsts_from(rx: RawIpSocket, source: str, sport: int, timeout: float) -> int:
    count = 0
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        if not select.select([rx], [], [], remaining)[0]:
            break
        batch = rx.recv_batch()
        for i in range(batch.count):
            view, offset = batch.views[i], batch.offsets[i]
            (port,) = struct.unpack_from("!H", view, offset)
            if batch.sources[i] == source_key(source) and port == sport and view[offset + 13] & 4:
                count += 1
    return count


def _tap(ns: NetNS, dev: str, local: str) -> socket.socket:
    with run_in_netns(ns.name):
        return open_ipv4_tap(dev, stt_filter(local, STT_PORT))


def _hdrincl(ns: NetNS) -> socket.socket:
    return ns.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)


# -- the filter ---------------------------------------------------------------------------


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_filter_passes_only_stt_segments(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    stt1 = _tcp(IP_A, IP_B, STT_PORT, b"first")
    stt2 = _tcp(IP_A, IP_B, STT_PORT, b"second")
    with _tap(b, DEV_B, IP_B) as tap, _hdrincl(a) as tx:
        sends = [
            _ipv4(IP_A, IP_B, 6, stt1),
            _ipv4(IP_A, IP_B, 6, _tcp(IP_A, IP_B, STT_PORT + 1, b"other port")),
            _ipv4(IP_A, IP_B, 17, struct.pack("!HHHH", 50000, STT_PORT, 12, 0) + b"udp!"),
            _ipv4(IP_A, IP_B2, 6, _tcp(IP_A, IP_B2, STT_PORT, b"other address")),
            _ipv4(IP_A, IP_B, 6, _tcp(IP_A, IP_B, STT_PORT, b"first fragment"), frag=0x2000),
            _ipv4(IP_A, IP_B, 6, _tcp(IP_A, IP_B, STT_PORT, b"later fragment"), frag=0x0010),
            _ipv4(IP_A, IP_B, 6, stt2),
        ]
        for pkt in sends:
            tx.sendto(pkt, (socket.inet_ntoa(pkt[16:20]), 0))
        got = _drain(tap, 10, timeout=1.0)
    # Whole IPv4 packets (SOCK_DGRAM: no Ethernet header), and only the two STT ones.
    assert [p[20:] for p in got] == [stt1, stt2]
    assert all(p[:1] == b"\x45" and p[12:16] == socket.inet_aton(IP_A) for p in got)


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_tap_ignores_our_own_outgoing_packets(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    segment = _tcp(IP_A, IP_B, STT_PORT, b"outgoing")
    # A's tap filters for B's address: without PACKET_IGNORE_OUTGOING it would match.
    with _tap(a, DEV_A, IP_B) as a_tap, _tap(b, DEV_B, IP_B) as b_tap:
        with RawIpSocket.open(IPPROTO_TCP, IP_A, netns=a.name) as tx:
            tx.send_to([segment], IP_B)
        assert [p[20:] for p in _drain(b_tap, 1, timeout=2.0)] == [segment]
        assert _drain(a_tap, 1, timeout=0.3) == []


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_drop_all_filter_empties_a_raw_socket(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    segment = _tcp(IP_A, IP_B, STT_PORT, b"x")
    with (
        RawIpSocket.open(IPPROTO_TCP, IP_B, netns=b.name) as quiet,
        RawIpSocket.open(IPPROTO_TCP, IP_B, netns=b.name) as control,
        RawIpSocket.open(IPPROTO_TCP, IP_A, netns=a.name) as tx,
    ):
        with socket.socket(fileno=quiet.fileno()) as view:
            attach_filter(view, drop_all_filter())
            view.detach()
        tx.send_to([segment], IP_B)
        assert select.select([control], [], [], 2.0)[0]  # the packet did arrive ...
        assert not select.select([quiet], [], [], 0.2)[0]  # ... but not into this one


# -- the ingress drop ----------------------------------------------------------------------


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_ingress_drop_hides_segments_from_tcp(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    segment = _tcp(IP_A, IP_B, STT_PORT, b"stt payload")
    other = _tcp(IP_A, IP_B, STT_PORT + 1, b"not stt")
    with (
        RawIpSocket.open(IPPROTO_TCP, IP_A, netns=a.name) as a_tcp,
        RawIpSocket.open(IPPROTO_TCP, IP_B, netns=b.name) as b_tcp,
        _tap(b, DEV_B, IP_B) as tap,
    ):
        # Without the rule, B's TCP answers every segment with a RST.
        a_tcp.send_to([segment], IP_B)
        assert _rsts_from(a_tcp, IP_B, STT_PORT, timeout=2.0) == 1
        assert len(_drain(tap, 1, timeout=1.0)) == 1
        while select.select([b_tcp], [], [], 0.2)[0]:
            b_tcp.recv_batch()
        try:
            table = install_stt_ingress_drop([DEV_B], IP_B, STT_PORT, "ep1", netns=b.name)
            assert table == "sclp_ep1"
            install_stt_ingress_drop([DEV_B], IP_B, STT_PORT, "ep1", netns=b.name)  # idempotent
            for _ in range(3):
                a_tcp.send_to([segment], IP_B)
            a_tcp.send_to([other], IP_B)
            # The tap still gets the segments; IP (a raw socket) and TCP (no RST) do not.
            assert [p[20:] for p in _drain(tap, 3, timeout=2.0)] == [segment] * 3
            assert _rsts_from(a_tcp, IP_B, STT_PORT + 1, timeout=2.0) == 1  # control
            assert _rsts_from(a_tcp, IP_B, STT_PORT, timeout=0.3) == 0
            seen = b_tcp.recv_batch()
            dports = [
                struct.unpack_from("!H", seen.views[i], seen.offsets[i] + 2)[0]
                for i in range(seen.count)
            ]
            assert STT_PORT not in dports and STT_PORT + 1 in dports
            assert stt_ingress_drops("ep1", netns=b.name) == 3
            assert stt_ingress_drops("ep1", netns=a.name) == 0  # B's rule, not A's
        finally:
            remove_stt_ingress_drop("ep1", netns=b.name)
        remove_stt_ingress_drop("ep1", netns=b.name)  # idempotent
        assert stt_ingress_drops("ep1", netns=b.name) == 0
        a_tcp.send_to([segment], IP_B)
        assert _rsts_from(a_tcp, IP_B, STT_PORT, timeout=2.0) == 1  # back to TCP


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_missing_device(netns: NetNS) -> None:
    # Linux 6.18 accepts a netdev chain for a device that does not exist (yet), so the
    # packet socket is what catches a wrong name: the endpoint opens it first.
    with run_in_netns(netns.name), pytest.raises(OSError):
        open_ipv4_tap("nosuchdev0", stt_filter(IP_B, STT_PORT))
    try:
        install_stt_ingress_drop(["nosuchdev0"], IP_B, STT_PORT, "ep1", netns=netns.name)
        assert stt_ingress_drops("ep1", netns=netns.name) == 0
    finally:
        remove_stt_ingress_drop("ep1", netns=netns.name)


def test_ingress_drop_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        install_stt_ingress_drop([], IP_B, STT_PORT)
    with pytest.raises(ValueError):
        install_stt_ingress_drop(['eth0" ; flush ruleset'], IP_B, STT_PORT)
    with pytest.raises(ValueError):
        install_stt_ingress_drop(["eth0"], IP_B, 0)
    with pytest.raises(ValueError):
        install_stt_ingress_drop(["eth0"], "2001:db8::1", STT_PORT)


# -- batches --------------------------------------------------------------------------------


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_packet_tap_batch(veth_pair: tuple[NetNS, NetNS]) -> None:
    a, b = veth_pair
    segments = [_tcp(IP_A, IP_B, STT_PORT, bytes([i]) * (100 + 37 * i)) for i in range(5)]
    program = stt_filter(IP_B, STT_PORT)
    with (
        PacketTap.open(DEV_B, program, netns=b.name, batch=8, slot_size=1600) as tap,
        RawIpSocket.open(IPPROTO_TCP, IP_A, netns=a.name) as tx,
    ):
        assert tap.recv_batch().count == 0
        for seg in segments:
            tx.send_to(seg, IP_B)
        _wait_tapped(tap, len(segments))
        assert select.select([tap], [], [], 2.0)[0]
        batch = tap.recv_batch()
    assert batch.count == 5
    assert batch.offsets == [20] * 5
    assert [bytes(batch.views[i][20 : batch.sizes[i]]) for i in range(5)] == segments
    assert batch.sources == [source_key(IP_A)] * 5
    assert batch.l4_sums == [ones_sum(seg) for seg in segments]
    pseudo = socket.inet_aton(IP_A) + socket.inet_aton(IP_B)
    for seg, l4_sum in zip(segments, batch.l4_sums, strict=True):  # valid TCP checksums
        assert ones_sum(pseudo + struct.pack("!BBH", 0, 6, len(seg)), l4_sum) == 0xFFFF


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_packet_tap_flags_headers_ip_input_would_reject(veth_pair: tuple[NetNS, NetNS]) -> None:
    """The kernel checks nothing before a tap: frames sent raw onto the veth with a bad
    header checksum, options, link-layer padding come out with offset -1 unless the
    header is a valid option-less one and the total length is the size (a header with
    options takes the caller's slow path, which accepts it)."""
    a, b = veth_pair
    seg = _tcp(IP_A, IP_B, STT_PORT, b"payload")
    good = _ipv4(IP_A, IP_B, 6, seg)
    bad_sum = bytearray(good)
    bad_sum[10] ^= 0x01
    options = _ipv4(IP_A, IP_B, 6, seg, ihl=6)
    packets = [good, bytes(bad_sum), options, good + bytes(6)]
    with (
        PacketTap.open(DEV_B, stt_filter(IP_B, STT_PORT), netns=b.name) as tap,
        a.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0) as raw,
    ):
        for pkt in packets:  # Ethernet broadcast: no need to know B's MAC
            raw.sendto(pkt, (DEV_A, 0x0800, 0, 0, b"\xff" * 6))
        _wait_tapped(tap, len(packets))
        assert select.select([tap], [], [], 2.0)[0]
        batch = tap.recv_batch()
        assert batch.count == 4
        assert batch.offsets == [20, -1, -1, -1]
        assert batch.sources == [source_key(IP_A)] * 4
        assert batch.l4_sums[0] == ones_sum(seg)
        assert [bytes(batch.views[i][: batch.sizes[i]]) for i in range(4)] == packets
        # The caller's slow path for the -1 ones: dropped, or read past the padding.
        with pytest.raises(MalformedPacket) as err:
            ipv4_payload_bounds(batch.views[1], batch.sizes[1])
        assert err.value.reason is DropReason.BAD_CHECKSUM
        assert ipv4_payload_bounds(batch.views[2], batch.sizes[2]) == (24, 24 + len(seg))
        assert ipv4_payload_bounds(batch.views[3], batch.sizes[3]) == (20, 20 + len(seg))


def _checked_columns(packets: list[bytes]) -> tuple[list[int], list[int], list[object]]:
    """(offsets, l4_sums, sources) of the fast IP input check for ``packets`` put in the
    slots of a receiver by hand."""
    rx = BatchReceiver(len(packets), 256)
    for view, pkt in zip(rx.views, packets, strict=False):
        view[: len(pkt)] = pkt
    sizes = np.asarray([len(p) for p in packets], np.uint32)
    offsets, sums = rx.ipv4_columns(len(packets), sizes, check_header=True)
    sources = rx.ipv4_header_sources(len(packets)).tolist()
    return offsets.tolist(), sums.tolist(), sources


def test_fast_check_takes_only_valid_headers_at_the_right_size() -> None:
    seg = _tcp(IP_A, IP_B, STT_PORT, b"payload")
    good = _ipv4(IP_A, IP_B, 6, seg)
    bad_sum = bytearray(good)
    bad_sum[10] ^= 0x01
    options = _ipv4(IP_A, IP_B, 6, seg, ihl=6)
    v6 = b"\x65" + good[1:]
    packets = [good, bytes(bad_sum), options, good + bytes(6), v6, good[:19]]
    offsets, sums, sources = _checked_columns(packets)
    assert offsets == [20, -1, -1, -1, -1, -1]  # options: the caller's slow path
    assert sums == [ones_sum(seg), 0, 0, 0, 0, 0]
    assert sources[:5] == [source_key(IP_A)] * 5


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=20, max_size=200), st.integers(0, 19), st.integers(0, 255))
def test_fast_check_agrees_with_payload_bounds(payload: bytes, at: int, value: int) -> None:
    """Differential: whatever the fast check accepts, the per-packet reference accepts
    with the same bounds, and the L4 sum is the reference sum of those bytes."""
    packet = bytearray(_ipv4(IP_A, IP_B, 6, payload, ihl=5 + len(payload) % 3))
    packet[at] = value  # one header byte changed, usually breaking something
    data = bytes(packet)
    (offset,), (l4_sum,), _ = _checked_columns([data])
    if offset < 0:
        return
    assert ipv4_payload_bounds(data, len(data)) == (offset, len(data))
    assert l4_sum == ones_sum(data[offset:])


# -- ipv4_payload_bounds -------------------------------------------------------------------


def test_payload_bounds_of_valid_packets() -> None:
    seg = _tcp(IP_A, IP_B, STT_PORT, b"abc")
    assert ipv4_payload_bounds(_ipv4(IP_A, IP_B, 6, seg), 20 + len(seg)) == (20, 20 + len(seg))
    padded = _ipv4(IP_A, IP_B, 6, b"") + bytes(26)  # a minimum Ethernet frame's padding
    assert ipv4_payload_bounds(padded, len(padded)) == (20, 20)


@pytest.mark.parametrize(
    ("packet", "size", "reason"),
    [
        (b"\x45" + bytes(10), 11, DropReason.TOO_SHORT),
        (b"\x65" + _ipv4(IP_A, IP_B, 6, b"xx")[1:], 22, DropReason.BAD_VERSION),
        (b"\x44" + _ipv4(IP_A, IP_B, 6, b"xx")[1:], 22, DropReason.MALFORMED),
        (_ipv4(IP_A, IP_B, 6, b"xxxx"), 22, DropReason.TOO_SHORT),  # truncated
        (
            _ipv4(IP_A, IP_B, 6, b"xx")[:10] + b"\0\0" + _ipv4(IP_A, IP_B, 6, b"xx")[12:],
            22,
            DropReason.BAD_CHECKSUM,
        ),
    ],
)
def test_payload_bounds_rejects(packet: bytes, size: int, reason: DropReason) -> None:
    with pytest.raises(MalformedPacket) as err:
        ipv4_payload_bounds(packet, size)
    assert err.value.reason is reason


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.integers(min_value=0, max_value=90))
def test_payload_bounds_raises_only_malformed(data: bytes, size: int) -> None:
    try:
        start, end = ipv4_payload_bounds(data, size)
    except MalformedPacket:
        return
    assert 20 <= start <= end <= size <= len(data)
    assert ones_sum(data[:start]) == 0xFFFF

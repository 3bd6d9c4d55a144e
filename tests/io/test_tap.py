"""sclp.io.tap against the real tun driver: open/errors, TSO frames in both directions,
gso_max_size, batch read and vectored writes."""

from __future__ import annotations

import fcntl
import hashlib
import os
import select
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from sclp.io.netns import NetNS, create_veth, move_link, run_in_netns
from sclp.io.tap import (
    READ_BUFFER_LEN,
    TAP_OFFLOADS,
    VNET_HDR_LEN,
    TapDevice,
    TapError,
    set_gso_max_size,
)
from sclp.wire import virtio_net
from sclp.wire.checksum import internet_checksum, ones_sum
from sclp.wire.virtio_net import GSO_TCPV4, NEEDS_CSUM, VirtioNetHeader

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

NsFactory = Callable[[], NetNS]

MAC_A = "02:00:00:00:0a:01"
MAC_B = "02:00:00:00:0a:02"
ETH_HDR = 14


def _quiet(ns: NetNS) -> NetNS:
    """No IPv6 in ``ns``: keeps router/neighbour solicitations out of the frames read."""
    ns.write_sysctl("net.ipv6.conf.all.disable_ipv6", 1)
    ns.write_sysctl("net.ipv6.conf.default.disable_ipv6", 1)
    return ns


def _open_tap_in(ns: NetNS, name: str, **kwargs: bool) -> TapDevice:
    with run_in_netns(ns.name):
        return TapDevice.open(name, **kwargs)


def test_open_defaults(netns: NetNS) -> None:
    with _open_tap_in(netns, "sclptap0") as tap:
        assert tap.name == "sclptap0"
        assert tap.vnet_hdr_len == VNET_HDR_LEN == 10
        assert tap.offloads == TAP_OFFLOADS
        assert fcntl.fcntl(tap.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
        assert netns.link_exists("sclptap0")
        # TSO is advertised to the stack because we accepted it with TUNSETOFFLOAD.
        assert netns.get_offloads("sclptap0")["tx-tcp-segmentation"]
        buf = bytearray(READ_BUFFER_LEN)
        assert tap.read_into(buf) == 0  # nothing waiting: 0, not an exception
        assert tap.read_batch([buf, buf]) == []
    assert tap.closed
    tap.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        tap.fileno()
    assert not netns.link_exists("sclptap0")  # non-persistent TAP vanishes with its fd


def test_open_without_offloads(netns: NetNS) -> None:
    with _open_tap_in(netns, "sclptap0", offloads=False) as tap:
        assert tap.vnet_hdr_len == 10
        assert not tap.offloads
        assert not netns.get_offloads("sclptap0")["tx-tcp-segmentation"]
    with _open_tap_in(netns, "sclptap1", vnet_hdr=False) as tap:
        assert tap.vnet_hdr_len == 0
        assert not tap.offloads


def test_name_in_use_is_a_clear_error(netns: NetNS) -> None:
    with _open_tap_in(netns, "sclptap0"):
        with pytest.raises(TapError, match=r"TAP name 'sclptap0' is in use by another") as info:
            _open_tap_in(netns, "sclptap0")
        assert info.value.errno == 16  # EBUSY


def test_name_of_other_device_is_a_clear_error(netns: NetNS) -> None:
    create_veth("sclpva", netns, "sclpvb", netns)
    with pytest.raises(TapError, match=r"'sclpva' already exists and is not a TAP"):
        _open_tap_in(netns, "sclpva")


def test_multi_queue(netns: NetNS) -> None:
    with (
        _open_tap_in(netns, "sclptapq", multi_queue=True) as q0,
        _open_tap_in(netns, "sclptapq", multi_queue=True) as q1,
    ):
        assert q0.multi_queue and q1.multi_queue
        assert q0.fileno() != q1.fileno()
        assert netns.link_exists("sclptapq")
        with pytest.raises(TapError, match="different multi-queue"):
            _open_tap_in(netns, "sclptapq")  # a single-queue open of a multi-queue TAP


def test_short_buffer_truncates_silently(netns_factory: NsFactory) -> None:
    """The documented reason for READ_BUFFER_LEN: the kernel cuts a frame to fit."""
    host, vm = netns_factory(), _quiet(netns_factory())
    with _open_tap_in(host, "sclptapa") as tap:
        move_link("sclptapa", host, vm, address="10.90.0.1/24", mtu=9000)
        vm.add_neighbor("sclptapa", "10.90.0.2", MAC_B)
        sender = vm.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sender:
            sender.sendto(bytes(5000), ("10.90.0.2", 9))
            sender.sendto(bytes(100), ("10.90.0.2", 9))
        select.select([tap], [], [], 5)
        assert tap.read_into(bytearray(1000)) == 1000
        big = bytearray(READ_BUFFER_LEN)
        assert tap.read_into(big) == VNET_HDR_LEN + ETH_HDR + 20 + 8 + 100  # the next one


def test_reads_land_where_asked_when_the_buffer_or_offset_changes(
    netns_factory: NsFactory,
) -> None:
    """read_into keeps the I/O vector of its last buffer and offset: another buffer or
    another offset gets a new one."""
    host, vm = netns_factory(), _quiet(netns_factory())
    with _open_tap_in(host, "sclptapo") as tap:
        move_link("sclptapo", host, vm, address="10.90.0.1/24")
        vm.add_neighbor("sclptapo", "10.90.0.2", MAC_B)
        sender = vm.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sender:
            for size in (10, 20, 30, 40):
                sender.sendto(bytes([size]) * size, ("10.90.0.2", 9))
        select.select([tap], [], [], 5)
        a, b = bytearray(READ_BUFFER_LEN + 64), bytearray(READ_BUFFER_LEN + 64)
        reads = [(a, 0), (a, 0), (a, 64), (b, 64)]
        for (buf, offset), size in zip(reads, (10, 20, 30, 40), strict=True):
            n = tap.read_into(buf, offset)
            assert n == VNET_HDR_LEN + ETH_HDR + 20 + 8 + size
            assert buf[offset + n - size : offset + n] == bytes([size]) * size
        assert a[64 + VNET_HDR_LEN + ETH_HDR + 28 :][:30] == bytes([30]) * 30  # not at 0
        assert tap.read_into(b, 64) == 0  # nothing left


def test_invalid_names() -> None:
    for bad in ("", "x" * 16, "a/b", " lead"):
        with pytest.raises(ValueError):
            TapDevice.open(bad)


def test_without_cap_net_admin_is_a_clear_error(netns: NetNS) -> None:
    code = (
        "import sys\n"
        "from sclp.io.netns import run_in_netns\n"
        "from sclp.io.tap import TapDevice, TapError\n"
        f"with run_in_netns({netns.name!r}):\n"
        "    try:\n"
        "        TapDevice.open('sclptap9')\n"
        "    except TapError as exc:\n"
        "        print(exc.errno, exc)\n"
    )
    # Keep CAP_SYS_ADMIN (for setns) and drop CAP_NET_ADMIN from every set.
    result = subprocess.run(
        ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", sys.executable],
        input=code,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "needs root or CAP_NET_ADMIN" in result.stdout
    assert result.stdout.startswith("1 ")  # EPERM


# -- traffic through a user-space "wire" between two TAPs ----------------------------


@dataclass
class WireStats:
    frames: int = 0
    largest: int = 0
    gso_frames: list[VirtioNetHeader] = field(default_factory=list)


def _forward(a: TapDevice, b: TapDevice, stop: threading.Event, stats: WireStats) -> None:
    """Copy every frame (virtio_net_hdr included, untouched) from one TAP to the other,
    the way an NVE does without a tunnel in between."""
    bufs = [bytearray(READ_BUFFER_LEN) for _ in range(8)]
    peer = {a.fileno(): b, b.fileno(): a}
    taps = {a.fileno(): a, b.fileno(): b}
    while not stop.is_set():
        readable, _, _ = select.select(list(taps), [], [], 0.1)
        for fd in readable:
            sizes = taps[fd].read_batch(bufs)
            for buf, size in zip(bufs, sizes, strict=False):
                hdr = virtio_net.decode(buf)
                stats.frames += 1
                stats.largest = max(stats.largest, size - VNET_HDR_LEN)
                if hdr.gso_kind != 0:
                    stats.gso_frames.append(hdr)
                peer[fd].write(memoryview(buf)[:size])


@dataclass
class TapPair:
    host: NetNS
    vm_a: NetNS
    vm_b: NetNS
    tap_a: TapDevice
    tap_b: TapDevice


@pytest.fixture
def tap_pair(netns_factory: NsFactory) -> TapPair:
    """Two TAPs opened in a 'host' namespace (where the NVE runs), then moved into two
    'VM' namespaces 10.90.0.1 and 10.90.0.2: the topology the endpoint builds."""
    host, vm_a, vm_b = netns_factory(), _quiet(netns_factory()), _quiet(netns_factory())
    tap_a = _open_tap_in(host, "sclptapa")
    tap_b = _open_tap_in(host, "sclptapb")
    move_link("sclptapa", host, vm_a, address="10.90.0.1/24", mac=MAC_A, mtu=1500)
    move_link("sclptapb", host, vm_b, address="10.90.0.2/24", mac=MAC_B, mtu=1500)
    return TapPair(host, vm_a, vm_b, tap_a, tap_b)


def _tcp_transfer(pair: TapPair, nbytes: int) -> tuple[WireStats, bytes, bytes]:
    stats = WireStats()
    stop = threading.Event()
    wire = threading.Thread(target=_forward, args=(pair.tap_a, pair.tap_b, stop, stats))
    wire.start()
    try:
        listener = pair.vm_b.socket(socket.AF_INET, socket.SOCK_STREAM)
        client = pair.vm_a.socket(socket.AF_INET, socket.SOCK_STREAM)
        with listener, client:
            listener.bind(("10.90.0.2", 0))
            listener.listen(1)
            listener.settimeout(10)
            client.settimeout(10)
            client.connect(listener.getsockname())
            server, _ = listener.accept()
            server.settimeout(10)
            data = os.urandom(nbytes)
            received = hashlib.sha256()
            count = 0

            def receive() -> None:
                nonlocal count
                while count < nbytes:
                    chunk = server.recv(1 << 20)
                    if not chunk:
                        break
                    received.update(chunk)
                    count += len(chunk)

            reader = threading.Thread(target=receive)
            reader.start()
            client.sendall(data)
            reader.join(20)
            server.close()
    finally:
        stop.set()
        wire.join(10)
    return stats, hashlib.sha256(data).digest(), received.digest()


def test_tso_frames_both_ways(tap_pair: TapPair) -> None:
    stats, sent, received = _tcp_transfer(tap_pair, 4_000_000)
    # The listener got every byte: the kernel accepted the GSO frames we wrote.
    assert received == sent
    # ... and it handed us TCP super-frames far above the 1514-byte MTU frame.
    assert stats.largest > 1514 + 8000
    assert stats.gso_frames
    big = max(stats.gso_frames, key=lambda h: h.gso_size)
    assert big.gso_kind == GSO_TCPV4
    assert big.needs_csum
    assert 500 < big.gso_size <= 1460
    assert big.csum_start == ETH_HDR + 20  # checksum starts at the TCP header


def test_gso_max_size_bounds_tso_frames(tap_pair: TapPair) -> None:
    for ns, name in ((tap_pair.vm_a, "sclptapa"), (tap_pair.vm_b, "sclptapb")):
        set_gso_max_size(name, 16_000, netns=ns.name)
        assert ns.link_info(name).gso_max_size == 16_000
    stats, sent, received = _tcp_transfer(tap_pair, 3_000_000)
    assert received == sent
    assert stats.gso_frames
    assert 1514 < stats.largest < 16_000


def _ipv4_tcp_superframe(payload_len: int, seq: int) -> bytearray:
    """Ethernet + IPv4 + TCP (no ACK flag) to 10.90.0.1:9 (closed), with a partial
    checksum as a TSO sender leaves it: the pseudo-header sum, not complemented."""
    src, dst = socket.inet_aton("10.90.0.2"), socket.inet_aton("10.90.0.1")
    frame = bytearray(ETH_HDR + 20 + 20 + payload_len)
    frame[0:14] = bytes.fromhex(MAC_A.replace(":", "") + MAC_B.replace(":", "")) + b"\x08\x00"
    struct.pack_into("!BBHHHBBH4s4s", frame, 14, 0x45, 0, 40 + payload_len, 1, 0x4000, 64, 6, 0,
                     src, dst)  # fmt: skip
    struct.pack_into("!H", frame, 24, internet_checksum(frame[14:34]))
    struct.pack_into("!HHIIBBHHH", frame, 34, 40000, 9, seq, 0, 5 << 4, 0x08, 65535, 0, 0)
    frame[54:] = os.urandom(payload_len)
    pseudo = src + dst + struct.pack("!BBH", 0, 6, 20 + payload_len)
    struct.pack_into("!H", frame, 34 + 16, ones_sum(pseudo))
    return frame


def test_kernel_accepts_one_20k_tcp_superframe(netns_factory: NsFactory) -> None:
    host, vm = netns_factory(), _quiet(netns_factory())
    tap = _open_tap_in(host, "sclptapa")
    with tap:
        move_link("sclptapa", host, vm, address="10.90.0.1/24", mac=MAC_A)
        vm.add_neighbor("sclptapa", "10.90.0.2", MAC_B)
        before = vm.link_info("sclptapa")
        seq = 0x1000_0000
        frame = _ipv4_tcp_superframe(20_000, seq)
        hdr = virtio_net.encode(VirtioNetHeader(NEEDS_CSUM, GSO_TCPV4, 54, 1448, 34, 16))
        assert tap.writev([hdr, frame]) == VNET_HDR_LEN + len(frame)
        after = vm.link_info("sclptapa")
        assert after.rx_packets == before.rx_packets + 1
        assert after.rx_bytes - before.rx_bytes == len(frame)
        # The closed port answers with a RST acknowledging all 20,000 bytes at once:
        # the stack took the super-frame as one TCP segment.
        buf = bytearray(READ_BUFFER_LEN)
        rst = None
        for _ in range(50):
            select.select([tap], [], [], 0.1)
            for size in tap.read_batch([buf]):
                f = memoryview(buf)[VNET_HDR_LEN:size]
                if f[12:14] == b"\x08\x00" and f[23] == 6 and f[47] & 0x04:
                    rst = bytes(f)
            if rst is not None:
                break
        assert rst is not None, "no RST came back"
        (ack,) = struct.unpack_from("!I", rst, 34 + 8)
        assert ack == seq + 20_000


def test_kernel_rejects_inconsistent_vnet_header(netns: NetNS) -> None:
    with _open_tap_in(netns, "sclptap0") as tap:
        netns.set_link("sclptap0", up=True)
        frame = _ipv4_tcp_superframe(3000, 1)
        # csum_start beyond the frame: virtio_net_hdr_to_skb refuses it.
        hdr = virtio_net.encode(VirtioNetHeader(NEEDS_CSUM, GSO_TCPV4, 54, 1448, 60000, 16))
        with pytest.raises(OSError):
            tap.writev([hdr, frame])


def test_write_batch_and_read_batch(netns_factory: NsFactory) -> None:
    host, vm = netns_factory(), _quiet(netns_factory())
    tap = _open_tap_in(host, "sclptapa")
    with tap:
        move_link("sclptapa", host, vm, address="10.90.0.1/24", mac=MAC_A)
        vm.add_neighbor("sclptapa", "10.90.0.2", MAC_B)
        # Inbound: UDP datagrams written as [vnet_hdr, frame] pieces, one batch.
        sink = vm.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sink:
            sink.bind(("10.90.0.1", 7777))
            sink.settimeout(5)
            frames = []
            for i in range(5):
                body = b"datagram %d" % i
                frame = bytearray(_ipv4_tcp_superframe(0, 0)[:34])
                struct.pack_into("!H", frame, 16, 20 + 8 + len(body))
                frame[23] = 17
                struct.pack_into("!H", frame, 24, 0)
                struct.pack_into("!H", frame, 24, internet_checksum(frame[14:34]))
                udp = struct.pack("!HHHH", 5555, 7777, 8 + len(body), 0) + body
                frames.append([virtio_net.VNET_HDR_NONE, bytes(frame), udp])
            assert tap.write_batch(frames) == 5
            assert sorted(sink.recv(100) for _ in range(5)) == [
                b"datagram %d" % i for i in range(5)
            ]
        # Outbound: datagrams sent in the VM come out as frames, read in one batch at an
        # offset (headroom) without touching the bytes before it.
        sender = vm.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sender:
            for i in range(6):
                sender.sendto(b"out %d" % i, ("10.90.0.2", 7777))
        bufs = [bytearray(b"\xee" * (64 + READ_BUFFER_LEN)) for _ in range(4)]
        select.select([tap], [], [], 5)
        sizes = tap.read_batch(bufs, max_frames=3, offset=64)
        assert len(sizes) == 3  # capped by max_frames although more are waiting
        for buf, size in zip(bufs[:3], sizes, strict=True):
            assert buf[:64] == b"\xee" * 64
            frame = buf[64 + VNET_HDR_LEN : 64 + size]
            assert frame[:6] == bytes.fromhex(MAC_B.replace(":", ""))
            assert frame[-5:].startswith(b"out ")
        assert len(tap.read_batch(bufs)) == 3  # the other three

"""The I/O floors: what the carriers' system calls cost on this machine with no work per
frame, measured in the same run as the endpoints.

Why: the copy floor (:mod:`.floor`) counts four ``memcpy`` copies per frame, which no
endpoint can reach: the kernel's work around the copies (TAP read and write, UDP GSO
send and GRO receive over a veth) costs several times more.  These floors are what an
endpoint doing *nothing* between its system calls would pay, using the project's own
adapters (:mod:`sclp.io.tap`, :mod:`sclp.io.udp`, :mod:`sclp.io.txring`,
:mod:`sclp.io.rxring`), so an endpoint's CPU per GB over them (``cpu_per_gb_vs_io_floor``)
is the cost of its per-frame work, the interpreter's share mostly.

How (:func:`measure_io_floors`, root only: it builds two namespaces and removes them):

- Namespace A holds two TAPs on a bridge: a 64 KB TCP GSO frame written to the "write"
  TAP (the receiving endpoint's TAP write) is forwarded whole by the bridge to the
  "read" TAP, where the loop reads it back (the sending endpoint's TAP read).  A veth
  joins A to namespace B.
- **UDP floor** (``io_floor_s_per_gb``): one thread runs the loop read TAP → UDP send
  with ``UDP_SEGMENT`` (1,400-byte segments) from A → ``recvmmsg`` with ``UDP_GRO`` in
  B → write the coalesced datagram to the TAP, with :data:`IN_FLIGHT` frames circulating
  and nothing else per frame.  Every kernel cost of both endpoints (the veth, the
  receiver's softirq, the bridge standing in for the VM's stack) runs in this thread,
  so its CPU time (user + system) per GB is the floor of *both* endpoints together, as
  ``cpu_s_per_gb`` counts both.
- **Native floor** (``native_floor_s_per_gb``): the same loop with each frame sent as
  :data:`NATIVE_SEGMENTS` IPv4 packets of protocol 234 through an ``AF_PACKET`` TX ring
  (one ``send``, headers written by NumPy) and read in B from a receive ring ahead of
  an nft ingress drop, a batch of columns at a time (no Python per packet); the frame
  written back is the one read (the endpoint's reassembly copy is work, not I/O).
- Bytes are the frames' TCP payload, what iperf3 counts.  Each floor runs about
  :data:`SECONDS` of wall time after a short warm-up.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from sclp.io.netns import NetNS, run_in_netns
from sclp.io.nft import install_ingress_drop
from sclp.io.packet import sclp_filter
from sclp.io.rxring import RxRing
from sclp.io.tap import READ_BUFFER_LEN, TapDevice
from sclp.io.txring import HeaderTemplate, PacketTxRing
from sclp.io.udp import UdpSocket
from sclp.wire.checksum import internet_checksum, ones_sum
from sclp.wire.virtio_net import VNET_HDR_LEN

SECONDS: Final = 1.0
WARMUP_SECONDS: Final = 0.1
IN_FLIGHT: Final = 16  # frames circulating through the loop
UDP_SEGMENT_BYTES: Final = 1400
NATIVE_SEGMENTS: Final = 45  # MTU packets per 64 KB frame
TCP_PAYLOAD: Final = 63_936  # frame + virtio header = 64,000 B: 46 UDP segments, last short
HEADERS: Final = VNET_HDR_LEN + 14 + 20 + 20  # virtio, Ethernet, IPv4, TCP
ADDRESSES: Final = ("10.97.0.1", "10.97.0.2")
PORT: Final = 9000
IPPROTO_SCLP: Final = 234
GB: Final = 1e9
MAC_A: Final = bytes.fromhex("02aa00000001")
MAC_B: Final = bytes.fromhex("02aa00000002")


def tso_frame(payload: int = TCP_PAYLOAD, mss: int = 1448) -> bytes:
    """A virtio_net_hdr (TCPv4 GSO, ``NEEDS_CSUM`` from the TCP header) and an
    Ethernet + IPv4 + TCP frame carrying ``payload`` zero bytes, as a VM with TSO
    hands it to its TAP."""
    tcp_len = 20 + payload
    ip = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + tcp_len,
            0,
            0x4000,
            64,
            socket.IPPROTO_TCP,
            0,
            socket.inet_aton("192.0.2.1"),
            socket.inet_aton("192.0.2.2"),
        )
    )
    struct.pack_into("!H", ip, 10, internet_checksum(ip))
    pseudo = ones_sum(struct.pack("!4s4sBBH", ip[12:16], ip[16:20], 0, socket.IPPROTO_TCP, tcp_len))
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1, 1, 5 << 4, 0x18, 1024, pseudo, 0)
    # flags NEEDS_CSUM, gso_type TCPV4, hdr_len, gso_size, csum_start, csum_offset
    vnet = struct.pack("<BBHHHH", 1, 1, 14 + 20 + 20, mss, 14 + 20, 16)
    return vnet + MAC_B + MAC_A + b"\x08\x00" + bytes(ip) + bytes(tcp) + bytes(payload)


def s_per_gb(cpu_s: float, payload_bytes: int) -> float | None:
    """CPU seconds per 1e9 payload bytes; None when nothing moved."""
    return cpu_s / (payload_bytes / GB) if payload_bytes > 0 else None


def native_stride(frame_len: int, segments: int = NATIVE_SEGMENTS) -> int:
    """The segment size that cuts ``frame_len`` bytes into ``segments`` packets."""
    return -(-frame_len // segments)


@dataclass(frozen=True, slots=True)
class LoopFigures:
    """One floor: ``cpu_s`` (user + system) of the loop, ``frames`` circulated,
    ``payload_bytes`` their TCP payload, ``wall_s``."""

    cpu_s: float
    frames: int
    payload_bytes: int
    wall_s: float

    @property
    def s_per_gb(self) -> float | None:
        return s_per_gb(self.cpu_s, self.payload_bytes)

    @property
    def gbps(self) -> float:
        return self.payload_bytes * 8 / self.wall_s / 1e9 if self.wall_s > 0 else 0.0


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@contextlib.contextmanager
def _namespaces() -> Iterator[tuple[str, str]]:
    """Namespaces A (bridge ``br0`` ready for the TAPs, veth ``v0``) and B (veth
    ``v0``), addressed, neighbours fixed; removed on exit."""
    tag = secrets.token_hex(3)
    names = (f"sclp-iof-{tag}-a", f"sclp-iof-{tag}-b")
    created: list[str] = []
    try:
        for name in names:
            _ip("netns", "add", name)
            created.append(name)
        a, b = names
        _ip("link", "add", "v0", "netns", a, "type", "veth", "peer", "name", "v0", "netns", b)
        for name, address in zip(names, ADDRESSES, strict=True):
            _ip("-n", name, "address", "add", f"{address}/24", "dev", "v0")
            _ip("-n", name, "link", "set", "v0", "up")
        macs = []
        for name in names:
            with NetNS(name) as ns:
                macs.append(ns.link_info("v0").mac)
        _ip("-n", a, "neigh", "replace", ADDRESSES[1], "lladdr", macs[1], "dev", "v0")
        _ip("-n", b, "neigh", "replace", ADDRESSES[0], "lladdr", macs[0], "dev", "v0")
        # No IPv6 and no multicast in A: nothing but the loop's frames reaches the TAPs
        # (no DAD, MLD or IGMP reports from the bridge).
        with NetNS(a) as ns:
            ns.write_sysctl("net.ipv6.conf.all.disable_ipv6", 1)
            ns.write_sysctl("net.ipv6.conf.default.disable_ipv6", 1)
        _ip(
            "-n",
            a,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        )
        _ip("-n", a, "link", "set", "br0", "multicast", "off", "up")
        yield a, b
    finally:
        for name in created:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@contextlib.contextmanager
def _taps(ns: str) -> Iterator[tuple[TapDevice, TapDevice]]:
    """The read TAP and the write TAP, both bridge ports in ``ns``, up."""
    with run_in_netns(ns):
        tap_r = TapDevice.open("iof-r")
        tap_w = TapDevice.open("iof-w")
    try:
        for tap in (tap_r, tap_w):
            _ip("-n", ns, "link", "set", tap.name, "multicast", "off", "master", "br0", "up")
        yield tap_r, tap_w
    finally:
        tap_r.close()
        tap_w.close()


Forward = Callable[[list[memoryview]], list[memoryview]]


def _circulate(tap_r: TapDevice, tap_w: TapDevice, forward: Forward, seconds: float) -> LoopFigures:
    """Run read TAP → ``forward`` (the carrier: frames in, frames delivered out) →
    write TAP for ``seconds`` after a warm-up, topping the loop up to
    :data:`IN_FLIGHT` frames when the carrier lost some."""
    frame = tso_frame()
    payload = len(frame) - HEADERS
    bufs = [bytearray(READ_BUFFER_LEN) for _ in range(2 * IN_FLIGHT)]
    views = [memoryview(b) for b in bufs]
    for _ in range(IN_FLIGHT):
        tap_w.write(frame)

    def rounds(until: float) -> int:
        frames = 0
        while time.monotonic() < until:
            sizes = tap_r.read_batch(bufs)
            delivered = forward([views[i][:n] for i, n in enumerate(sizes)])
            for out in delivered:
                tap_w.write(out)
            frames += len(delivered)
            for _ in range(IN_FLIGHT - len(delivered)):
                tap_w.write(frame)
        return frames

    rounds(time.monotonic() + WARMUP_SECONDS)
    cpu, start = time.process_time(), time.monotonic()
    frames = rounds(start + seconds)
    cpu_s, wall = time.process_time() - cpu, time.monotonic() - start
    return LoopFigures(cpu_s, frames, frames * payload, wall)


def _udp_floor(a: str, b: str, tap_r: TapDevice, tap_w: TapDevice, seconds: float) -> LoopFigures:
    tx = UdpSocket.bind(ADDRESSES[0], PORT, netns=a, gro=False)
    rx = UdpSocket.bind(ADDRESSES[1], PORT, netns=b, gro=True)
    dst = (ADDRESSES[1], PORT)
    try:

        def forward(frames: list[memoryview]) -> list[memoryview]:
            for f in frames:
                tx.send_gso(f, UDP_SEGMENT_BYTES, dst)
            return rx.recv_batch().views

        return _circulate(tap_r, tap_w, forward, seconds)
    finally:
        tx.close()
        rx.close()


def _native_floor(
    a: str, b: str, tap_r: TapDevice, tap_w: TapDevice, seconds: float
) -> LoopFigures:
    install_ingress_drop(["v0"], ADDRESSES[1], IPPROTO_SCLP, name="iofloor", netns=b)
    ring = PacketTxRing.open("v0", netns=a)
    rx = RxRing.open("v0", sclp_filter(ADDRESSES[1]), netns=b)
    with NetNS(b) as ns:
        peer_mac = bytes.fromhex(ns.link_info("v0").mac.replace(":", ""))
    template = HeaderTemplate.build(ring.mac, peer_mac, *ADDRESSES, IPPROTO_SCLP)
    try:

        def forward(frames: list[memoryview]) -> list[memoryview]:
            sent = received = 0
            for f in frames:
                sent += ring.send_strided(f, native_stride(len(f)), template)
            while True:
                count = rx.recv_batch().count
                if not count:
                    break
                received += count
            # Delivered: as many frames as arrived whole (all when the rings lost none).
            return frames if received >= sent else frames[: received // NATIVE_SEGMENTS]

        return _circulate(tap_r, tap_w, forward, seconds)
    finally:
        ring.close()
        rx.close()


@dataclass(frozen=True, slots=True)
class IoFloors:
    """Both floors (None: that one failed, ``errors`` says why)."""

    udp: LoopFigures | None
    native: LoopFigures | None
    errors: dict[str, str]

    @property
    def io_floor_s_per_gb(self) -> float | None:
        return self.udp.s_per_gb if self.udp is not None else None

    @property
    def native_floor_s_per_gb(self) -> float | None:
        return self.native.s_per_gb if self.native is not None else None

    def as_json(self) -> dict[str, Any]:
        def one(f: LoopFigures | None) -> dict[str, Any] | None:
            if f is None:
                return None
            return {
                "s_per_gb": f.s_per_gb,
                "cpu_s": f.cpu_s,
                "wall_s": f.wall_s,
                "frames": f.frames,
                "payload_bytes": f.payload_bytes,
                "gbps": f.gbps,
            }

        return {
            "io_floor_s_per_gb": self.io_floor_s_per_gb,
            "native_floor_s_per_gb": self.native_floor_s_per_gb,
            "udp": one(self.udp),
            "native": one(self.native),
            "errors": self.errors,
            "method": (
                f"one thread, {IN_FLIGHT} TCP GSO frames of {TCP_PAYLOAD} B payload "
                "circulating: TAP read, UDP_SEGMENT send of "
                f"{UDP_SEGMENT_BYTES} B segments over a veth, UDP_GRO recvmmsg, TAP write "
                "(the TAPs joined by a bridge); native: the same with "
                f"{NATIVE_SEGMENTS} IPv4 packets per frame through an AF_PACKET TX ring "
                "and a receive ring ahead of an nft ingress drop; process CPU time per "
                "1e9 payload bytes"
            ),
        }


def measure_io_floors(seconds: float = SECONDS) -> IoFloors:
    """Measure both floors (see the module docstring).  Never raises for a floor that
    cannot be measured here (no root, no nft): that floor is None and ``errors``
    holds a one-line reason."""
    udp: LoopFigures | None = None
    native: LoopFigures | None = None
    errors: dict[str, str] = {}
    try:
        with _namespaces() as (a, b), _taps(a) as (tap_r, tap_w):
            try:
                udp = _udp_floor(a, b, tap_r, tap_w, seconds)
            except Exception as exc:
                errors["udp"] = f"{type(exc).__name__}: {exc}"
            try:
                native = _native_floor(a, b, tap_r, tap_w, seconds)
            except Exception as exc:
                errors["native"] = f"{type(exc).__name__}: {exc}"
    except Exception as exc:
        errors.setdefault("udp", f"{type(exc).__name__}: {exc}")
        errors.setdefault("native", f"{type(exc).__name__}: {exc}")
    return IoFloors(udp, native, errors)

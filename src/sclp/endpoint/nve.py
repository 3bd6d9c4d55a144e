"""The Network Virtualization Edge: TAP ports, underlay transports, switching, stats.

Strategy (design.md, "Performance model"): per-batch, not per-packet.  A TAP with
TSO hands us frames of up to ~64 KB; the SCLP and STT paths carry each one as a
single payload (one UDP GSO send in carrier mode, one batch of raw segments in native
mode) and the receiver hands it back to its TAP as one GSO frame.  The classic
tunnels (VXLAN, Geneve, NVGRE) must cut such a frame into MTU-sized TCP segments in
software, one inner frame per outer packet — which is exactly what they cost in the
paper — but they get the same batching: all segments of a frame leave in one UDP GSO
send when they fit the path MTU.

Threading: one thread, one ``epoll``; every handler drains its descriptor up to a
budget and returns.  Time comes from one ``clock()`` read per wake-up and is passed
down to the engines.

Inner checksums (sclp-spec §6): a frame that fits the VM's MTU crosses the tunnel
with a complete L4 checksum (the sender finishes a partial one); a GSO frame keeps
the partial checksum the sending VM left (pseudo-header sum) and the receiver hands
it to its TAP as NEEDS_CSUM, as a virtio NIC with TSO would.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import logging
import os
import random
import select
import signal
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Final

from sclp.endpoint import tunnels
from sclp.endpoint.config import Config, Network
from sclp.endpoint.control import ControlServer
from sclp.engine.reassembler import Reassembler
from sclp.engine.segmenter import Segmenter
from sclp.engine.stt import SttReassembler, SttSegmenter, pseudo_sum_for
from sclp.engine.tso import complete_checksum, segment_tcp_frame
from sclp.io import netns as nsio
from sclp.io import packet as packet_io
from sclp.io.batch import BatchReceiver, StridedSender, sockaddr_in, v4_key
from sclp.io.tap import TapDevice
from sclp.switch.fdb import Fdb
from sclp.wire import stt
from sclp.wire.checksum import Buffer
from sclp.wire.errors import DropReason, MalformedPacket
from sclp.wire.frame import entropy_port, flow_hash, parse_frame
from sclp.wire.sclp import Carrier, segment_payload_size

log = logging.getLogger("sclp")

VNET: Final = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_off
VNET_LEN: Final = 10
VNET_NONE: Final = bytes(VNET_LEN)
F_NEEDS_CSUM: Final = 1
GSO_NONE, GSO_TCPV4, GSO_TCPV6 = 0, 1, 4
HEADROOM: Final = 64  # room in front of a TAP frame for the biggest tunnel header
FRAME_BUF: Final = 65536 + 256
# Largest TAP frame we accept: payload = tunnel header (<= 18 B for STT) + frame <= 65,535.
MAX_TAP_FRAME: Final = 65535 - 24
TAP_BUDGET: Final = 64  # frames read from one TAP per wake-up
RX_BUDGET: Final = 128  # datagrams read from one socket per wake-up

SOL_UDP: Final = 17
UDP_SEGMENT: Final = 103
UDP_GRO: Final = 104
UDP_GSO_MAX_SEGMENTS: Final = 64
UDP_GSO_MAX_BYTES: Final = 65493  # larger GSO sends arrive uncoalesced (sclp.io.udp)
IP_MTU_DISCOVER: Final = 10
IP_PMTUDISC_DONT: Final = 0
IP_PMTUDISC_DO: Final = 2
SO_RCVBUFFORCE: Final = 33
SO_SNDBUFFORCE: Final = 32
SOCK_BUF: Final = 32 * 1024 * 1024
UDP_PORTS: Final = {"vxlan": 4789, "geneve": 6081}
STT_PORT: Final = stt.STT_PORT
IPPROTO_SCLP: Final = 234
IPPROTO_GRE: Final = 47
_GRO_CMSG = struct.Struct("i")
_SEGMENT_CMSG = struct.Struct("H")


class EndpointError(Exception):
    """A start-up problem, phrased as one line naming the problem and the fix."""


class Port:
    """One virtual network on this endpoint: its TAP, its FDB, its counters."""

    def __init__(self, cfg: Network, tap: TapDevice, vm_mtu: int, fdb: Fdb) -> None:
        self.cfg = cfg
        self.vni = cfg.vni
        self.protocol = cfg.protocol
        self.tap = tap
        self.vm_mtu = vm_mtu
        self.fdb = fdb
        self.peers = frozenset(cfg.peers)
        self.counters: Counter[str] = Counter()
        # A frame longer than this left the sender as a GSO frame (VLAN tag allowed).
        self.max_plain_frame = vm_mtu + 18


class Endpoint:
    """One running NVE for a :class:`Config`.  ``start()`` builds everything (and
    undoes what it built if a step fails), ``run()`` serves until ``stop()`` or a
    signal, ``close()`` removes TAPs, rules and sockets."""

    def __init__(self, cfg: Config, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.clock = clock
        self.counters: Counter[str] = Counter()
        self.ports: dict[int, Port] = {}
        self._closers: list[Callable[[], None]] = []
        self._handlers: dict[int, Callable[[float], None]] = {}
        self._epoll: select.epoll | None = None
        self._running = False
        self._started_at = 0.0
        self._local = cfg.underlay.local
        self._local_packed = ipaddress.ip_address(self._local).packed
        self._ip_version = ipaddress.ip_address(self._local).version
        self._all_peers: frozenset[str] = frozenset(p for n in cfg.networks for p in n.peers)
        self._peer_packed: dict[str, bytes] = {
            p: ipaddress.ip_address(p).packed for p in self._all_peers
        }
        self._underlay_mtu = 1500
        self._tap_buf = bytearray(FRAME_BUF)
        self._rx_buf = bytearray(FRAME_BUF)
        self._rx_view = memoryview(self._rx_buf)
        self._sclp_segmenter = Segmenter()
        self._stt_segmenter = SttSegmenter()
        lim = cfg.limits
        carrier = Carrier.UDP if cfg.underlay.sclp_carrier == "udp" else Carrier.IP
        self._carrier = carrier
        self._reassembler = Reassembler(
            carrier, lim.reasm_timeout, lim.reasm_max_bytes, lim.reasm_max_entries
        )
        self._stt_reassembler = SttReassembler(
            lim.reasm_timeout, lim.reasm_max_bytes, lim.reasm_max_entries
        )
        self._sockets: dict[str, socket.socket] = {}
        self._tuning = cfg.tuning
        self._strided = StridedSender()
        self._sockaddr: dict[Hashable, bytes] = {}
        self._v4_peer: dict[int, str] = {}
        if self._ip_version == 4:
            self._v4_peer = {v4_key(p): p for p in self._all_peers}
        self._faults = FaultInjector(cfg.underlay.faults) if cfg.underlay.faults.enabled else None

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        cfg = self.cfg
        if os.geteuid() != 0:
            raise EndpointError(
                "sclp run needs root (CAP_NET_ADMIN) to create TAP devices; run it with sudo"
            )
        if cfg.underlay.namespace:
            if not nsio.netns_exists(cfg.underlay.namespace):
                raise EndpointError(
                    f"underlay namespace {cfg.underlay.namespace!r} does not exist; "
                    f"create it (ip netns add {cfg.underlay.namespace}) "
                    "or remove underlay.namespace"
                )
            from pyroute2 import netns as pr_netns

            pr_netns.setns(cfg.underlay.namespace)
        self._underlay_mtu = cfg.underlay.mtu or self._detect_mtu()
        control = ControlServer(cfg.control_socket, {"stats": self.stats})
        self._closers.append(control.close)
        self._epoll = select.epoll()
        self._register(control.fileno(), lambda _now: control.handle_ready())
        for net in cfg.networks:
            self._open_port(net)
        self._open_underlay()
        self._started_at = self.clock()
        if self._faults:
            self._closers.append(self._faults.close)
            log.warning("fault injection is ON for outgoing underlay packets: %s", self._faults)
        log.info(
            "endpoint %s up: local %s, underlay mtu %d, %s",
            cfg.name,
            self._local,
            self._underlay_mtu,
            ", ".join(
                f"vni {p.vni} {p.protocol} tap {p.tap.name} mtu {p.vm_mtu}"
                for p in self.ports.values()
            ),
        )

    def _detect_mtu(self) -> int:
        with nsio.NetNS(None) as ns:
            for msg in ns.ipr.get_addr(address=self._local):
                index = msg["index"]
                link = ns.ipr.get_links(index)[0]
                return int(link.get_attr("IFLA_MTU"))
        raise EndpointError(
            f"underlay.local {self._local} is not an address of this host; "
            "use one of this host's addresses (ip -br addr)"
        )

    def _vm_mtu(self, net: Network) -> int:
        if net.mtu:
            return net.mtu
        if net.protocol in ("vxlan", "geneve", "nvgre"):
            return self._underlay_mtu - tunnels.overhead(net.protocol, self._ip_version)
        return self._underlay_mtu  # SCLP and STT segment: no fragmentation at any MTU

    def _tap_gso_max_size(self, net: Network) -> int:
        """The largest TSO frame the VM may hand us.  Always small enough that the
        tunnel payload fits SCLP's 65,535 bytes; in the UDP carrier also small enough
        that the whole payload leaves in ONE UDP GSO send that arrives as one GRO
        buffer (<= 65,493 bytes with headers), so the receiver's whole-payload fast
        path applies instead of a table entry per frame."""
        if net.is_sclp and self._carrier is Carrier.UDP:
            stride = self._sclp_seg_size() + 12
            segments = min(UDP_GSO_MAX_SEGMENTS, UDP_GSO_MAX_BYTES // stride)
            return segments * (stride - 12) - 24
        return MAX_TAP_FRAME

    def _open_port(self, net: Network) -> None:
        vm_mtu = self._vm_mtu(net)
        try:
            tap = TapDevice.open(net.tap, vnet_hdr=True, offloads=True)
        except OSError as exc:
            raise EndpointError(str(exc)) from None
        self._closers.append(tap.close)
        try:
            with nsio.NetNS(None) as here:
                here.set_link(net.tap, gso_max_size=self._tap_gso_max_size(net))
            if net.namespace:
                if not nsio.netns_exists(net.namespace):
                    raise EndpointError(
                        f"network namespace {net.namespace!r} (vni {net.vni}) does not exist; "
                        f"create it with: ip netns add {net.namespace}"
                    )
                with nsio.NetNS(net.namespace) as vm:
                    if vm.link_exists(net.tap):
                        raise EndpointError(
                            f"an interface named {net.tap!r} already exists in namespace "
                            f"{net.namespace!r} (vni {net.vni}); choose another tap name "
                            "or remove that interface"
                        )
                nsio.move_link(net.tap, None, net.namespace, address=net.address, mtu=vm_mtu)
            else:
                with nsio.NetNS(None) as here:
                    here.set_link(net.tap, mtu=vm_mtu)
                    if net.address:
                        here.add_address(net.tap, net.address)
                    here.set_link(net.tap, up=True)
        except nsio.NetnsError as exc:
            raise EndpointError(f"configuring {net.tap}: {exc}") from None
        fdb = Fdb(net.peers, self.cfg.limits.fdb_aging, self.cfg.limits.fdb_max_entries)
        for entry in net.static:
            fdb.add_static(entry.mac, entry.peer)
        port = Port(net, tap, vm_mtu, fdb)
        self.ports[net.vni] = port
        self._register(tap.fileno(), functools.partial(self._on_tap, port))

    def _udp_socket(self, port: int, what: str, gro: bool = True) -> socket.socket:
        family = socket.AF_INET if self._ip_version == 4 else socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_DGRAM)
        self._closers.append(sock.close)
        try:
            sock.bind((self._local, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise EndpointError(
                    f"UDP port {port} ({what}) on {self._local} is in use by another program; "
                    "stop it or change the port"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise EndpointError(
                    f"underlay.local {self._local} is not an address of this host; "
                    "use one of this host's addresses"
                ) from None
            raise
        self._tune(sock)
        if gro:
            with contextlib.suppress(OSError):
                sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        return sock

    def _raw_socket(self, proto: int) -> socket.socket:
        family = socket.AF_INET if self._ip_version == 4 else socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_RAW, proto)
        self._closers.append(sock.close)
        sock.bind((self._local, 0))
        self._tune(sock)
        return sock

    @staticmethod
    def _tune(sock: socket.socket) -> None:
        sock.setblocking(False)
        for opt, fallback in (
            (SO_RCVBUFFORCE, socket.SO_RCVBUF),
            (SO_SNDBUFFORCE, socket.SO_SNDBUF),
        ):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCK_BUF)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, fallback, SOCK_BUF)

    def _open_underlay(self) -> None:
        protocols = {p.protocol for p in self.ports.values()}
        for proto in ("vxlan", "geneve"):
            if proto in protocols:
                sock = self._udp_socket(UDP_PORTS[proto], proto)
                if self._ip_version == 4:  # classic tunnels may fragment (VM MTU 1500)
                    sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
                self._sockets[proto] = sock
                self._register(sock.fileno(), functools.partial(self._on_udp_classic, sock, proto))
        if protocols & {"vxlan-sclp", "geneve-sclp"}:
            if self._carrier is Carrier.UDP:
                sock = self._udp_socket(
                    self.cfg.underlay.sclp_udp_port, "SCLP UDP carrier", self._tuning.rx_batch
                )
                if self._ip_version == 4:
                    sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
                self._register(sock.fileno(), functools.partial(self._on_sclp_udp, sock))
            else:
                sock = self._raw_socket(IPPROTO_SCLP)
                if self._ip_version == 4:
                    sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
                self._register(sock.fileno(), self._raw_handler(sock, self._sclp_segment))
            self._sockets["sclp"] = sock
        if "nvgre" in protocols:
            sock = self._raw_socket(IPPROTO_GRE)
            self._sockets["nvgre"] = sock
            self._register(sock.fileno(), self._raw_handler(sock, self._gre_packet))
        if "stt" in protocols:
            sock = self._raw_socket(socket.IPPROTO_TCP)
            if self._ip_version == 4:
                sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
            self._sockets["stt"] = sock
            self._install_stt_guard()
            if not self._open_stt_taps(sock):
                self._register(sock.fileno(), self._raw_handler(sock, self._stt_segment))

    def _raw_handler(
        self, sock: socket.socket, handle: Callable[[str, memoryview, float, int | None], None]
    ) -> Callable[[float], None]:
        """recvmmsg batches with one NumPy checksum pass (level-1 pre-reassembly of the
        native mode), or one read per packet when ``tuning.rx_batch`` is off."""
        if self._tuning.rx_batch and self._ip_version == 4:
            slot = self._underlay_mtu + 64
            return functools.partial(self._on_raw_batch, sock, BatchReceiver(64, slot), handle)
        return functools.partial(self._on_raw, sock, handle)

    def _install_stt_guard(self) -> None:
        """Keep the kernel's TCP from answering STT segments with resets (no socket
        listens on 7471): drop outgoing RSTs from that port while we run."""
        from sclp.io import nft

        try:
            nft.install_stt_rst_guard(STT_PORT, self.cfg.name)
        except (OSError, nft.NftError) as exc:
            raise EndpointError(f"installing the STT nftables rule failed: {exc}") from None
        self._closers.append(lambda: nft.remove_stt_rst_guard(self.cfg.name))

    def _open_stt_taps(self, send_sock: socket.socket) -> bool:
        """Read STT segments with packet sockets on the underlay devices and drop them
        at those devices' ingress hook, so the kernel's IP and TCP never process them
        (:mod:`sclp.io.packet`); ``send_sock`` then only sends.  False (and a warning)
        when that cannot be set up: the caller reads ``send_sock`` instead."""
        from sclp.io import nft

        if self._ip_version != 4:
            return False  # the packet path parses IPv4 only; IPv6 keeps the raw socket
        taps: list[socket.socket] = []
        try:
            devices = self._underlay_devices()
            program = packet_io.stt_filter(self._local, STT_PORT)
            for dev in devices:
                taps.append(packet_io.open_ipv4_tap(dev, program))
            nft.install_stt_ingress_drop(devices, self._local, STT_PORT, self.cfg.name)
        except (OSError, ValueError, nft.NftError, nsio.NetnsError) as exc:
            for tap in taps:
                tap.close()
            log.warning(
                "STT segments are read from a raw TCP socket, after the kernel's TCP has "
                "processed them (slower): no packet socket + ingress drop: %s",
                exc,
            )
            return False
        self._closers.append(lambda: nft.remove_stt_ingress_drop(self.cfg.name))
        for tap in taps:
            self._closers.append(tap.close)
            self._tune(tap)
            if self._tuning.rx_batch:
                rx = packet_io.PacketBatchReceiver(64, self._underlay_mtu + 64)
                self._register(tap.fileno(), functools.partial(self._on_stt_batch, tap, rx))
            else:
                self._register(tap.fileno(), functools.partial(self._on_stt_packet, tap))
        packet_io.attach_filter(send_sock, packet_io.drop_all_filter())
        log.info("STT: packet sockets and an ingress drop on %s", ", ".join(devices))
        return True

    def _underlay_devices(self) -> list[str]:
        """The devices the routes to the peers leave by (where their segments come in),
        loopback excepted; raises ValueError if there is none."""
        devices: list[str] = []
        with nsio.NetNS(None) as ns:
            for peer in sorted(self._all_peers):
                for route in ns.ipr.route("get", dst=peer):
                    index = route.get_attr("RTA_OIF")
                    if index is None:
                        continue
                    name = str(ns.ipr.get_links(index)[0].get_attr("IFLA_IFNAME"))
                    if name != "lo" and name not in devices:
                        devices.append(name)
        if not devices:
            raise ValueError("no underlay device routes to the peers")
        return devices

    def _on_stt_batch(
        self, sock: socket.socket, rx: packet_io.PacketBatchReceiver, now: float
    ) -> None:
        """Like :meth:`_on_raw_batch`, for a packet socket: the IPv4 header was not
        checked by the kernel, so :meth:`PacketBatchReceiver.plain_ok` vouches for it
        (and for the slot sum being the TCP segment's) or the packet goes through
        :func:`sclp.io.packet.ipv4_payload_bounds`."""
        fd = sock.fileno()
        views = rx.views
        peers = self._v4_peer
        counters = self.counters
        handle = self._stt_segment
        for _ in range(RX_BUDGET // rx.count + 1):
            n = rx.receive_batch(fd)
            if not n:
                return
            sizes = rx.sizes(n)
            sources = rx.sources_v4(n)
            plain = rx.plain_ok(n, sizes)
            sums = rx.ones_sums(n)
            for i in range(n):
                src = peers.get(sources[i])
                if src is None:
                    counters["rx_packets"] += 1
                    counters[DropReason.NOT_PEER.counter] += 1
                elif plain[i]:
                    handle(src, views[i][20 : sizes[i]], now, sums[i])
                else:
                    self._stt_ip_packet(src, views[i], sizes[i], now)
            if n < rx.count:
                return

    def _on_stt_packet(self, sock: socket.socket, now: float) -> None:
        """One ``recv`` per packet (``tuning.rx_batch`` off)."""
        view = self._rx_view
        for _ in range(RX_BUDGET):
            try:
                n = sock.recv_into(view)
            except BlockingIOError:
                return
            src = socket.inet_ntoa(view[12:16]) if n >= 20 else ""
            self._stt_ip_packet(src, view, n, now)

    def _stt_ip_packet(self, src: str, view: memoryview, size: int, now: float) -> None:
        try:
            start, end = packet_io.ipv4_payload_bounds(view, size)
        except MalformedPacket as exc:
            self.counters["rx_packets"] += 1
            self.counters[exc.reason.counter] += 1
            return
        self._stt_segment(src, view[start:end], now, None)

    def _register(self, fd: int, handler: Callable[[float], None]) -> None:
        assert self._epoll is not None
        self._epoll.register(fd, select.EPOLLIN)
        self._handlers[fd] = handler

    def run(self, install_signals: bool = True) -> None:
        """Serve until :meth:`stop` or SIGINT/SIGTERM."""
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: self.stop())
        assert self._epoll is not None
        self._running = True
        poll = self._epoll.poll
        handlers = self._handlers
        next_housekeeping = 0.0
        while self._running:
            try:
                events = poll(0.1)
            except InterruptedError:
                continue
            now = self.clock()
            for fd, _ in events:
                handler = handlers.get(fd)
                if handler is not None:
                    handler(now)
            if now >= next_housekeeping:
                self._housekeeping(now)
                next_housekeeping = now + 0.1

    def stop(self) -> None:
        self._running = False

    def close(self) -> None:
        """Undo everything start() did, newest first.  Idempotent."""
        while self._closers:
            closer = self._closers.pop()
            try:
                closer()
            except Exception as exc:  # keep closing the rest
                log.warning("cleanup step failed: %s", exc)
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None

    def _housekeeping(self, now: float) -> None:
        self._reassembler.expire(now)
        self._stt_reassembler.expire(now)
        for port in self.ports.values():
            port.fdb.expire(now)
        if self._faults:
            self._faults.flush(now)

    # -- stats ---------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        drops: Counter[str] = Counter(self.counters)
        for reason, count in self._reassembler.drops.items():
            drops[reason.counter] += count
        for reason, count in self._stt_reassembler.drops.items():
            drops[reason.counter] += count
        totals: Counter[str] = Counter()
        per_vni = {}
        for port in self.ports.values():
            totals.update(port.counters)
            per_vni[str(port.vni)] = {
                "protocol": port.protocol,
                "tap": port.tap.name,
                "vm_mtu": port.vm_mtu,
                "fdb_entries": len(port.fdb),
                **dict(sorted(port.counters.items())),
            }
        totals.update(drops)
        base = {name: 0 for name in COUNTER_NAMES}
        base.update(totals)
        base["reasm_complete"] = self._reassembler.completed + self._stt_reassembler.completed
        base["reasm_bytes_held"] = self._reassembler.bytes_held + self._stt_reassembler.bytes_held
        base["reasm_entries"] = self._reassembler.entries + self._stt_reassembler.entries
        return {
            "name": self.cfg.name,
            "pid": os.getpid(),
            "uptime_s": round(self.clock() - self._started_at, 3),
            "underlay": {
                "local": self._local,
                "mtu": self._underlay_mtu,
                "sclp_carrier": self.cfg.underlay.sclp_carrier,
            },
            "counters": dict(sorted(base.items())),
            "vni": per_vni,
            "faults": self._faults.counters() if self._faults else None,
        }

    # -- VM -> underlay ------------------------------------------------------------

    def _on_tap(self, port: Port, now: float) -> None:
        buf = self._tap_buf
        view = memoryview(buf)
        tap_fd = port.tap.fileno()
        readv = os.readv
        counters = port.counters
        for _ in range(TAP_BUDGET):
            try:
                n = readv(tap_fd, (view[HEADROOM - VNET_LEN :],))
            except BlockingIOError:
                return
            if n <= VNET_LEN + 14:
                counters[DropReason.TOO_SHORT.counter] += 1
                continue
            flen = n - VNET_LEN
            counters["tx_frames"] += 1
            counters["tx_bytes"] += flen
            if flen > MAX_TAP_FRAME:
                counters[DropReason.OVERSIZE.counter] += 1
                continue
            vnet = VNET.unpack_from(buf, HEADROOM - VNET_LEN)
            dest = port.fdb.lookup(bytes(buf[HEADROOM : HEADROOM + 6]), now)
            if not dest.peers:
                counters[DropReason.NO_ROUTE.counter] += 1
                continue
            if dest.flooded:
                counters["tx_flooded"] += 1
            try:
                self._send_frame(port, buf, flen, vnet, dest.peers)
            except MalformedPacket as exc:
                counters[exc.reason.counter] += 1

    def _send_frame(
        self,
        port: Port,
        buf: bytearray,
        flen: int,
        vnet: tuple[int, ...],
        peers: tuple[Hashable, ...],
    ) -> None:
        flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = vnet
        frame = memoryview(buf)[HEADROOM : HEADROOM + flen]
        is_gso = gso_type != GSO_NONE
        protocol = port.protocol
        if not is_gso and flags & F_NEEDS_CSUM:
            complete_checksum(frame, csum_start, csum_offset)
        if protocol in ("vxlan-sclp", "geneve-sclp"):
            self._send_sclp(port, buf, flen, gso_size if is_gso else 0, peers)
        elif protocol == "stt":
            self._send_stt(port, buf, flen, vnet, peers)
        else:
            if is_gso:
                frames: list[bytearray] | list[memoryview] = segment_tcp_frame(frame, gso_size)
            else:
                frames = [frame]
            flow = flow_hash(parse_frame(frame))
            if protocol == "nvgre":
                hdr = tunnels.nvgre_header(port.vni, flow)
                stride = len(hdr) + len(frames[0])
                packets = hdr + hdr.join(frames) if len(frames) > 1 else hdr + frames[0]
                for peer in peers:
                    self._send_strided("nvgre", packets, stride, len(frames), peer)
                    port.counters["tx_packets"] += len(frames)
            else:
                if protocol == "vxlan":
                    hdr = tunnels.vxlan_header(port.vni)
                else:
                    hdr = tunnels.geneve_header(port.vni)
                self._send_udp_many(protocol, hdr, frames, peers, UDP_PORTS[protocol], port)

    def _send_udp_many(
        self,
        which: str,
        hdr: bytes,
        frames: list[bytearray] | list[memoryview],
        peers: tuple[Hashable, ...],
        dport: int,
        port: Port,
    ) -> None:
        """One inner frame per datagram; the datagrams of one TSO frame leave in one
        UDP GSO send when they fit the path MTU (the same batching SCLP gets)."""
        sock = self._sockets[which]
        count = len(frames)
        stride = len(hdr) + len(frames[0])
        ip_len = 20 if self._ip_version == 4 else 40
        datagrams = hdr + hdr.join(frames) if count > 1 else hdr + frames[0]
        gso_ok = count > 1 and stride + ip_len + 8 <= self._underlay_mtu
        for peer in peers:
            addr = (peer, dport)
            if self._faults or not gso_ok:
                for i in range(count):
                    self._emit(sock, memoryview(datagrams)[i * stride : (i + 1) * stride], addr)
            else:
                self._send_gso(sock, datagrams, stride, addr)
            port.counters["tx_packets"] += count

    def _send_gso(
        self, sock: socket.socket, data: Buffer, stride: int, addr: tuple[Any, ...]
    ) -> None:
        view = memoryview(data)
        step = stride * min(UDP_GSO_MAX_SEGMENTS, UDP_GSO_MAX_BYTES // stride)
        for off in range(0, len(view), step):
            chunk = view[off : off + step]
            try:
                if len(chunk) <= stride:
                    sock.sendto(chunk, addr)
                else:
                    sock.sendmsg(
                        [chunk], [(SOL_UDP, UDP_SEGMENT, _SEGMENT_CMSG.pack(stride))], 0, addr
                    )
            except BlockingIOError:
                self.counters["drop_tx_busy"] += 1
            except OSError as exc:
                self._tx_error(exc)

    def _tx_error(self, exc: OSError) -> None:
        self.counters["tx_errors"] += 1
        if self.counters["tx_errors"] <= 5:
            log.warning("underlay send failed: %s", exc)

    def _emit(self, sock: socket.socket, packet: Buffer, addr: tuple[Any, ...]) -> None:
        if self._faults is not None:
            self._faults.send(sock, packet, addr, self.clock())
            return
        try:
            sock.sendto(packet, addr)
        except BlockingIOError:
            self.counters["drop_tx_busy"] += 1
        except OSError as exc:
            self._tx_error(exc)

    def _sockaddr_of(self, peer: Hashable) -> bytes:
        sa = self._sockaddr.get(peer)
        if sa is None:
            sa = self._sockaddr[peer] = sockaddr_in(str(peer))
        return sa

    def _send_strided(
        self, which: str, buf: Buffer, stride: int, count: int, peer: Hashable
    ) -> None:
        """The packets of one payload, back to back at ``stride`` in ``buf``, in one
        ``sendmmsg`` (per-packet sends when fault injection is on)."""
        sock = self._sockets[which]
        if self._faults is not None or self._ip_version != 4:
            view = memoryview(buf)
            for off in range(0, len(view), stride):
                self._emit(sock, view[off : off + stride], (peer, 0))
            return
        try:
            sent = self._strided.send(sock.fileno(), buf, stride, self._sockaddr_of(peer))
        except OSError as exc:
            self._tx_error(exc)
            return
        if sent < count:
            self.counters["drop_tx_busy"] += count - sent

    def _sclp_seg_size(self) -> int:
        return segment_payload_size(self._underlay_mtu, self._ip_version, self._carrier)

    def _send_sclp(
        self, port: Port, buf: bytearray, flen: int, mss: int, peers: tuple[Hashable, ...]
    ) -> None:
        frame = memoryview(buf)[HEADROOM : HEADROOM + flen]
        if port.protocol == "vxlan-sclp":
            hdr = tunnels.vxlan_header(port.vni)
        else:
            hdr = tunnels.geneve_header(port.vni, mss)
        start = HEADROOM - len(hdr)
        buf[start:HEADROOM] = hdr
        payload = memoryview(buf)[start : HEADROOM + flen]
        sport = entropy_port(flow_hash(parse_frame(frame)))
        dport = tunnels.SCLP_PORT_OF[port.protocol]
        batch = self._sclp_segmenter.segment_payload(
            payload, sport, dport, self._sclp_seg_size(), checksum=self._carrier is Carrier.IP
        )
        sock = self._sockets["sclp"]
        for peer in peers:
            if self._carrier is Carrier.UDP:
                addr = (peer, self.cfg.underlay.sclp_udp_port)
                if self._faults:
                    for seg in batch.segments():
                        self._emit(sock, seg, addr)
                else:
                    self._send_gso(sock, batch.buffer, batch.stride, addr)
            else:
                self._send_strided("sclp", batch.buffer, batch.stride, batch.count, peer)
            port.counters["tx_packets"] += batch.count

    def _send_stt(
        self,
        port: Port,
        buf: bytearray,
        flen: int,
        vnet: tuple[int, ...],
        peers: tuple[Hashable, ...],
    ) -> None:
        _flags, gso_type, _hdr_len, gso_size, csum_start, _csum_offset = vnet
        frame = memoryview(buf)[HEADROOM : HEADROOM + flen]
        sflags = stt.SttFlags.NONE
        l4_offset = mss = 0
        if gso_type != GSO_NONE:
            sflags |= stt.SttFlags.CSUM_PARTIAL | stt.SttFlags.TCP
            if gso_type == GSO_TCPV4:
                sflags |= stt.SttFlags.IPV4
            l4_offset = csum_start
            mss = gso_size
            if l4_offset > 0xFF:  # STT's L4 Offset is 8 bits (draft-davie-stt §3.1)
                raise MalformedPacket(DropReason.MALFORMED, f"l4 offset {l4_offset} > 255")
        hdr = stt.encode(
            stt.SttHeader(context_id=port.vni, flags=sflags, l4_offset=l4_offset, mss=mss)
        )
        start = HEADROOM - stt.STT_HLEN
        buf[start:HEADROOM] = hdr
        stt_frame = memoryview(buf)[start : HEADROOM + flen]
        sport = entropy_port(flow_hash(parse_frame(frame)))
        ip_len = 20 if self._ip_version == 4 else 40
        seg_mss = self._underlay_mtu - ip_len - 20
        for peer in peers:
            batch = self._stt_segmenter.segment_frame(
                stt_frame, sport, seg_mss, self._local_packed, self._peer_packed[str(peer)]
            )
            self._send_strided("stt", batch.buffer, batch.stride, batch.count, peer)
            port.counters["tx_packets"] += batch.count

    # -- underlay -> VM ------------------------------------------------------------

    def _recv_udp(self, sock: socket.socket) -> Iterator[tuple[int, str, int]]:
        """Up to RX_BUDGET receives into the shared buffer, as (length, source, GRO
        segment size); an empty datagram is counted and skipped."""
        view = self._rx_view
        for _ in range(RX_BUDGET):
            try:
                n, anc, _flags, addr = sock.recvmsg_into([view], 64)
            except BlockingIOError:
                return
            if not n:  # an empty datagram: nothing to split into segments
                self.counters["rx_packets"] += 1
                self.counters[DropReason.TOO_SHORT.counter] += 1
                continue
            yield n, addr[0], _gro_size(anc) or n

    def _on_udp_classic(self, sock: socket.socket, protocol: str, now: float) -> None:
        view = self._rx_view
        decap = tunnels.vxlan_decapsulate if protocol == "vxlan" else tunnels.geneve_decapsulate
        for n, src, seg in self._recv_udp(sock):
            for off in range(0, n, seg):
                self.counters["rx_packets"] += 1
                if src not in self._all_peers:
                    self.counters[DropReason.NOT_PEER.counter] += 1
                    continue
                dgram = view[off : min(off + seg, n)]
                try:
                    d = decap(dgram)
                except MalformedPacket as exc:
                    self.counters[exc.reason.counter] += 1
                    continue
                self._deliver(protocol, src, d.vni, dgram[d.inner_offset :], 0, now)

    def _on_sclp_udp(self, sock: socket.socket, now: float) -> None:
        view = self._rx_view
        reasm = self._reassembler
        for n, src, seg in self._recv_udp(sock):
            self.counters["rx_packets"] += -(-n // seg)
            if src not in self._all_peers:
                self.counters[DropReason.NOT_PEER.counter] += -(-n // seg)
                continue
            for done in reasm.add_coalesced(src, self._local, view[:n], seg, now):
                self._sclp_completed(src, done.dport, done.payload, now)

    def _on_raw(
        self,
        sock: socket.socket,
        handle: Callable[[str, memoryview, float, int | None], None],
        now: float,
    ) -> None:
        view = self._rx_view
        v4 = self._ip_version == 4
        for _ in range(RX_BUDGET):
            try:
                n, addr = sock.recvfrom_into(view)
            except BlockingIOError:
                return
            src = addr[0]
            if v4:  # IPv4 raw sockets deliver the IP header too
                if n < 20:
                    self.counters[DropReason.TOO_SHORT.counter] += 1
                    continue
                ihl = (view[0] & 0x0F) * 4
                packet = view[ihl:n]
            else:
                packet = view[:n]
            handle(src, packet, now, None)

    def _on_raw_batch(
        self,
        sock: socket.socket,
        rx: BatchReceiver,
        handle: Callable[[str, memoryview, float, int | None], None],
        now: float,
    ) -> None:
        fd = sock.fileno()
        views = rx.views
        peers = self._v4_peer
        counters = self.counters
        for _ in range(RX_BUDGET // rx.count + 1):
            n = rx.receive_batch(fd)
            if not n:
                return
            sizes = rx.sizes(n)
            sources = rx.sources_v4(n)
            sums = rx.ones_sums(n)
            for i in range(n):
                src = peers.get(sources[i])
                if src is None:
                    counters["rx_packets"] += 1
                    counters[DropReason.NOT_PEER.counter] += 1
                    continue
                view = views[i]
                size = sizes[i]
                ihl = (view[0] & 0x0F) * 4
                if size < ihl or size > rx.buffer_size:
                    counters[DropReason.TOO_SHORT.counter] += 1
                    continue
                # The IPv4 header sums to 0xFFFF (the kernel checked it), which is the
                # identity in ones' complement: the slot's sum is the L4 packet's sum.
                handle(src, view[ihl:size], now, sums[i])
            if n < rx.count:
                return

    def _sclp_segment(self, src: str, segment: memoryview, now: float, l4_sum: int | None) -> None:
        self.counters["rx_packets"] += 1
        if src not in self._all_peers:
            self.counters[DropReason.NOT_PEER.counter] += 1
            return
        ok = None if l4_sum is None else l4_sum == 0xFFFF
        done = self._reassembler.add_segment(src, self._local, segment, now, ok)
        if done is not None:
            self._sclp_completed(src, done.dport, done.payload, now)

    def _sclp_completed(self, src: str, dport: int, payload: Any, now: float) -> None:
        protocol = tunnels.PROTOCOL_OF_SCLP_PORT.get(dport)
        if protocol is None:
            self.counters[DropReason.UNKNOWN_PORT.counter] += 1
            return
        try:
            d = tunnels.decapsulate(protocol, payload)
        except MalformedPacket as exc:
            self.counters[exc.reason.counter] += 1
            return
        self._deliver(protocol, src, d.vni, memoryview(payload)[d.inner_offset :], d.mss, now)

    def _gre_packet(self, src: str, packet: memoryview, now: float, l4_sum: int | None) -> None:
        self.counters["rx_packets"] += 1
        if src not in self._all_peers:
            self.counters[DropReason.NOT_PEER.counter] += 1
            return
        try:
            d = tunnels.nvgre_decapsulate(packet)
        except MalformedPacket as exc:
            self.counters[exc.reason.counter] += 1
            return
        self._deliver("nvgre", src, d.vni, packet[d.inner_offset :], 0, now)

    def _stt_segment(self, src: str, segment: memoryview, now: float, l4_sum: int | None) -> None:
        if len(segment) < 4 or (segment[2] << 8 | segment[3]) != STT_PORT:
            return  # other TCP traffic of this host: not ours to count
        self.counters["rx_packets"] += 1
        if src not in self._all_peers:
            self.counters[DropReason.NOT_PEER.counter] += 1
            return
        src_packed = self._peer_packed[src]
        verify = True
        if l4_sum is not None:
            pseudo = pseudo_sum_for(src_packed, self._local_packed, len(segment))
            total = l4_sum + pseudo
            total = (total & 0xFFFF) + (total >> 16)
            if total != 0xFFFF:
                self.counters[DropReason.BAD_CHECKSUM.counter] += 1
                return
            verify = False
        frame = self._stt_reassembler.add_segment(
            src_packed, self._local_packed, segment, now, verify_checksum=verify
        )
        if frame is None:
            return
        try:
            d = tunnels.stt_decapsulate(frame)
        except MalformedPacket as exc:
            self.counters[exc.reason.counter] += 1
            return
        self._deliver("stt", src, d.vni, memoryview(frame)[d.inner_offset :], d.mss, now)

    def _deliver(
        self, protocol: str, src: str, vni: int, frame: memoryview, mss: int, now: float
    ) -> None:
        """Hand one decapsulated inner frame to its VNI's TAP (as a GSO frame when it
        is larger than the VM's MTU), after the peer and VNI checks and learning."""
        port = self.ports.get(vni)
        if port is None or port.protocol != protocol:
            self.counters[DropReason.UNKNOWN_VNI.counter] += 1
            return
        counters = port.counters
        if src not in port.peers:
            counters[DropReason.NOT_PEER.counter] += 1
            return
        flen = len(frame)
        if flen < 14:
            counters[DropReason.TOO_SHORT.counter] += 1
            return
        port.fdb.learn(bytes(frame[6:12]), src, now)
        vnet = VNET_NONE
        if flen > port.max_plain_frame:
            try:
                info = parse_frame(frame)
            except MalformedPacket as exc:
                counters[exc.reason.counter] += 1
                return
            if info.tcp_header_len:
                l4 = info.l4_offset
                if not mss:
                    mss = port.vm_mtu - (l4 - info.l3_offset) - info.tcp_header_len
                if mss <= 0:  # headers longer than the VM's MTU (e.g. IPv6 extensions)
                    counters[DropReason.MALFORMED.counter] += 1
                    return
                if not self._tuning.deliver_gso:
                    self._deliver_segmented(port, frame, mss)
                    return
                vnet = VNET.pack(
                    F_NEEDS_CSUM,
                    GSO_TCPV4 if info.ip_version == 4 else GSO_TCPV6,
                    l4 + info.tcp_header_len,
                    mss,
                    l4,
                    16,
                )
        try:
            os.writev(port.tap.fileno(), (vnet, frame))
        except BlockingIOError:
            counters["drop_tap_busy"] += 1
            return
        except OSError as exc:
            counters["drop_tap_error"] += 1
            if counters["drop_tap_error"] <= 5:
                log.warning("writing a %d-byte frame to %s failed: %s", flen, port.tap.name, exc)
            return
        counters["rx_frames"] += 1
        counters["rx_bytes"] += flen

    def _deliver_segmented(self, port: Port, frame: memoryview, mss: int) -> None:
        """Level 2 off (ablation): hand the VM MSS-sized frames, not one GSO frame."""
        try:
            segments = segment_tcp_frame(frame, mss)
        except MalformedPacket as exc:
            port.counters[exc.reason.counter] += 1
            return
        fd = port.tap.fileno()
        for seg in segments:
            try:
                os.writev(fd, (VNET_NONE, seg))
            except BlockingIOError:
                port.counters["drop_tap_busy"] += 1
                continue
            port.counters["rx_frames"] += 1
            port.counters["rx_bytes"] += len(seg)


def _gro_size(ancdata: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in ancdata:
        if level == SOL_UDP and kind == UDP_GRO:
            return int(_GRO_CMSG.unpack_from(data)[0])
    return 0


COUNTER_NAMES: Final = (
    "tx_frames",
    "rx_frames",
    "tx_packets",
    "rx_packets",
    "tx_bytes",
    "rx_bytes",
    "reasm_complete",
    "reasm_bytes_held",
    *(reason.counter for reason in DropReason),
)


FAULT_COUNTERS: Final = (
    "fault_packets",
    "fault_dropped",
    "fault_corrupted",
    "fault_duplicated",
    "fault_reordered",
    "fault_send_errors",
)


class FaultInjector:
    """Drops, delays (reorders), duplicates and corrupts outgoing underlay packets
    with a seeded RNG (this kernel has no netem).  Off unless configured.

    Every packet handed to :meth:`send` draws, in this order: drop; corrupt (one bit
    flipped); duplicate (sent twice); reorder (one copy held back until
    ``reorder_depth`` more packets have been sent, or until the underlay has been idle
    for a whole housekeeping tick, see :meth:`flush`).  The same seed and the same
    packets give the same faults.

    Corruption models a bit error on the wire, after the sender's checksums.  A raw
    socket's packet already carries its own checksum (SCLP's, STT's TCP one) and goes
    out damaged as it is.  A UDP socket would checksum the damaged bytes, making the
    error invisible, so a damaged datagram leaves through an ``IPPROTO_RAW`` socket
    with the UDP checksum of the undamaged one, from the same address and port: the
    receiving kernel drops it (UDP ``InCsumErrors``) as it would a real bit error.
    """

    def __init__(self, faults: Any) -> None:
        self.cfg = faults
        self.rng = random.Random(faults.seed)
        self.held: list[tuple[int, socket.socket, bytes, tuple[Any, ...]]] = []
        self.stats: Counter[str] = Counter(dict.fromkeys(FAULT_COUNTERS, 0))
        self.sent = 0
        self._sent_at_flush = 0
        self._raw: dict[int, socket.socket] = {}  # family -> IPPROTO_RAW sender
        self.raw_socket_factory: Callable[[int], socket.socket] = lambda family: socket.socket(
            family, socket.SOCK_RAW, socket.IPPROTO_RAW
        )

    def __str__(self) -> str:
        c = self.cfg
        return (
            f"drop={c.drop} reorder={c.reorder} (depth {c.reorder_depth}) "
            f"duplicate={c.duplicate} corrupt={c.corrupt} seed={c.seed}"
        )

    def counters(self) -> dict[str, int]:
        return dict(self.stats)

    def send(self, sock: socket.socket, packet: Buffer, addr: tuple[Any, ...], now: float) -> None:
        """Send ``packet`` to ``addr`` on ``sock``, or not, or twice, or later, or
        damaged.  The packet is copied; the caller may reuse its buffer."""
        c, rng, stats = self.cfg, self.rng, self.stats
        self.sent += 1
        stats["fault_packets"] += 1
        if rng.random() < c.drop:
            stats["fault_dropped"] += 1
            return
        data = bytes(packet)
        if rng.random() < c.corrupt and data:
            index, bit = rng.randrange(len(data)), rng.randrange(8)
            stats["fault_corrupted"] += 1
            if sock.type == socket.SOCK_DGRAM:
                sock, data, addr = self._damaged_datagram(sock, data, addr, index, bit)
            else:
                data = data[:index] + bytes([data[index] ^ (1 << bit)]) + data[index + 1 :]
        copies = 1
        if rng.random() < c.duplicate:
            stats["fault_duplicated"] += 1
            copies = 2
        if rng.random() < c.reorder:
            stats["fault_reordered"] += 1
            self.held.append((self.sent + max(1, c.reorder_depth), sock, data, addr))
            copies -= 1
        for _ in range(copies):
            self._send(sock, data, addr)
        if self.held and self.held[0][0] <= self.sent:
            due = [h for h in self.held if h[0] <= self.sent]
            self.held = [h for h in self.held if h[0] > self.sent]
            for _, s, d, a in due:
                self._send(s, d, a)

    def flush(self, now: float) -> None:
        """Called from housekeeping (every 0.1 s): once no packet at all was sent
        since the previous call, release the held ones, so that a packet held at the
        end of a burst is late rather than lost."""
        if self.sent != self._sent_at_flush:
            self._sent_at_flush = self.sent
            return
        held, self.held = self.held, []
        for _, s, d, a in held:
            self._send(s, d, a)

    def close(self) -> None:
        for sock in self._raw.values():
            sock.close()
        self._raw.clear()

    def _send(self, sock: socket.socket, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            sock.sendto(data, addr)
        except OSError:
            self.stats["fault_send_errors"] += 1

    def _damaged_datagram(
        self, sock: socket.socket, data: bytes, addr: tuple[Any, ...], index: int, bit: int
    ) -> tuple[socket.socket, bytes, tuple[Any, ...]]:
        """The whole IP packet ``sock`` would send for ``data`` (checksummed), with bit
        ``bit`` of data byte ``index`` flipped afterwards, and the raw socket for it."""
        from sclp.wire import ipv4, ipv6, udp  # fault injection only

        local = sock.getsockname()
        src = ipaddress.ip_address(local[0])
        dst = ipaddress.ip_address(addr[0])
        length = udp.UDP_HLEN + len(data)
        if src.version == 4:
            pseudo = ipv4.pseudo_header_sum(src.packed, dst.packed, socket.IPPROTO_UDP, length)
            ip_header = ipv4.encode(
                ipv4.IPv4Header(
                    src.packed,
                    dst.packed,
                    socket.IPPROTO_UDP,
                    ipv4.IPV4_HLEN + length,
                    flags=ipv4.IPv4Flags(0),
                )
            )
            family = socket.AF_INET
        else:
            pseudo = ipv6.pseudo_header_sum(src.packed, dst.packed, socket.IPPROTO_UDP, length)
            ip_header = ipv6.encode(
                ipv6.IPv6Header(src.packed, dst.packed, socket.IPPROTO_UDP, length)
            )
            family = socket.AF_INET6
        sport, dport = int(local[1]), int(addr[1])
        checksum = udp.udp_checksum(pseudo, udp.encode(udp.UdpHeader(sport, dport, length)) + data)
        datagram = bytearray(udp.encode(udp.UdpHeader(sport, dport, length, checksum)) + data)
        datagram[udp.UDP_HLEN + index] ^= 1 << bit
        raw = self._raw.get(family)
        if raw is None:
            raw = self._raw[family] = self.raw_socket_factory(family)
            raw.setblocking(False)
        return raw, ip_header + bytes(datagram), (addr[0], 0)

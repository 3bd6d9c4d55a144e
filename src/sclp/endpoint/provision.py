"""Provisioning: everything the endpoint sets up on the host before it forwards.

Privileges, the underlay namespace, the underlay MTU, the VM ports (TAP devices, their
namespace, address, MTU and largest TSO frame, over netlink), the underlay sockets of
the channels the networks use, and the nftables rules and packet sockets STT needs.
Each step pushes its undo onto one :class:`contextlib.ExitStack`, so a failure half-way
and a normal stop both leave the host as it was.  Every problem a user can fix is an
:class:`EndpointError` of one line naming the problem and the fix.

Nothing here runs in the event loop; :mod:`sclp.endpoint.runner` gets the handles.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from sclp.endpoint.config import Config
from sclp.endpoint.datapath import DataPath, VmPort
from sclp.endpoint.tunnels import Channel
from sclp.io import netns as nsio
from sclp.io import nft
from sclp.io import packet as packet_io
from sclp.io.linux import IPPROTO_GRE, IPPROTO_SCLP
from sclp.io.rawip import RawIpSocket
from sclp.io.tap import TapDevice
from sclp.io.txring import PacketTxRing, TxRingSender
from sclp.io.udp import UdpSocket
from sclp.wire.sclp import Carrier
from sclp.wire.stt import STT_PORT

log = logging.getLogger("sclp")

UDP_PORTS = {Channel.VXLAN: 4789, Channel.GENEVE: 6081}
RX_SLOTS = 64  # packets per recvmmsg batch
PEER_COUNTER_REFRESH: Final = 5.0  # seconds: the loop's snapshots read the kernel counter
PEER_COUNTER_ON_REQUEST: Final = 0.5  # ... and an ``sclp stats`` request at most this often
TX_RING_ENV: Final = "SCLP_TX_RING"  # "off": native SCLP and STT sent with sendmmsg


class EndpointError(Exception):
    """A start-up problem, phrased as one line naming the problem and the fix."""


@dataclass
class UnderlaySockets:
    """The underlay sockets: UDP ones with their destination port, raw ones, and the
    receive-only packet taps of STT (when they replace the raw TCP socket's reads)."""

    udp: dict[Channel, tuple[UdpSocket, int]] = field(default_factory=dict)
    raw: dict[Channel, RawIpSocket] = field(default_factory=dict)
    raw_receive: dict[Channel, RawIpSocket] = field(default_factory=dict)
    tx: dict[Channel, TxRingSender] = field(default_factory=dict)  # raw sends via TX rings
    stt_taps: list[packet_io.PacketTap] = field(default_factory=list)
    stt_devices: list[str] = field(default_factory=list)  # where the taps are
    batch: int = 1  # packets or buffers one receive call returns at most


def check_privileges() -> None:
    if os.geteuid() != 0:
        raise EndpointError(
            "sclp run needs root (CAP_NET_ADMIN) to create TAP devices; run it with sudo"
        )


def enter_underlay_namespace(cfg: Config) -> None:
    name = cfg.underlay.namespace
    if not name:
        return
    if not nsio.netns_exists(name):
        raise EndpointError(
            f"underlay namespace {name!r} does not exist; "
            f"create it (ip netns add {name}) or remove underlay.namespace"
        )
    from pyroute2 import netns as pr_netns

    pr_netns.setns(name)


def underlay_mtu(cfg: Config) -> int:
    """``underlay.mtu``, or the MTU of the device that holds ``underlay.local``."""
    if cfg.underlay.mtu:
        return cfg.underlay.mtu
    with nsio.NetNS(None) as ns:
        for msg in ns.ipr.get_addr(address=cfg.underlay.local):
            link = ns.ipr.get_links(msg["index"])[0]
            return int(link.get_attr("IFLA_MTU"))
    raise EndpointError(
        f"underlay.local {cfg.underlay.local} is not an address of this host; "
        "use one of this host's addresses (ip -br addr)"
    )


def open_tap(port: VmPort, stack: contextlib.ExitStack) -> TapDevice:
    """The TAP ``port`` of its network, with its MTU, largest TSO frame, namespace and
    address; removed again by ``stack``."""
    net = port.net.network
    vm_mtu = port.net.vm_mtu
    assert net.tap is not None and port.owned
    try:
        tap = TapDevice.open(net.tap, vnet_hdr=True, offloads=True)
    except OSError as exc:
        raise EndpointError(str(exc)) from None
    stack.callback(tap.close)
    try:
        with nsio.NetNS(None) as here:
            here.set_link(net.tap, gso_max_size=port.net.max_tunnel_frame)
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
    return tap


def open_underlay(cfg: Config, dp: DataPath, stack: contextlib.ExitStack) -> UnderlaySockets:
    """One socket per channel the networks use (plus STT's packet taps)."""
    batch = RX_SLOTS if cfg.tuning.rx_batch else 1
    out = UnderlaySockets(batch=batch)
    for channel in sorted(dp.channels, key=lambda c: c.value):
        open_channel(cfg, dp, channel, out, stack)
    return out


def open_channel(
    cfg: Config,
    dp: DataPath,
    channel: Channel,
    out: UnderlaySockets,
    stack: contextlib.ExitStack,
) -> None:
    """Open the socket(s) of ``channel`` into ``out`` (nothing if open already): at
    start, and when a network added at run time needs a channel no other uses."""
    if channel in out.udp or channel in out.raw:
        return
    local = cfg.underlay.local
    batch = out.batch
    slot = dp.underlay.mtu + 64
    if channel in UDP_PORTS:
        # The classic tunnels may fragment (a VM MTU of 1500 is allowed).
        port = UDP_PORTS[channel]
        sock = _udp(local, port, channel.value, stack, batch, gro=True, df=False)
        out.udp[channel] = (sock, port)
    elif channel is Channel.SCLP:
        if cfg.underlay.sclp_carrier is Carrier.UDP:
            port = cfg.underlay.sclp_udp_port
            carrier = _udp(local, port, "SCLP UDP carrier", stack, batch, cfg.tuning.rx_batch, True)
            out.udp[Channel.SCLP] = (carrier, port)
        else:
            out.raw[Channel.SCLP] = _raw(IPPROTO_SCLP, local, stack, batch, slot)
    elif channel is Channel.GRE:
        # No L4 checksum; and like the UDP tunnels, NVGRE may fragment a VM MTU set
        # above the default (IPv4 and IPv6).
        out.raw[Channel.GRE] = _raw(IPPROTO_GRE, local, stack, batch, slot, sums=False, df=False)
    elif channel is Channel.STT:
        stt_sock = out.raw[Channel.STT] = _raw(socket.IPPROTO_TCP, local, stack, batch, slot)
        install_stt_guard(cfg, stack)
        if ":" not in local and dp.peers:
            out.stt_taps = open_stt_taps(cfg, dp, stt_sock, stack, batch, slot)
            if out.stt_taps:
                out.stt_devices = underlay_devices(dp.peers)
    if channel in out.raw and (channel is not Channel.STT or not out.stt_taps):
        out.raw_receive[channel] = out.raw[channel]
    if channel in out.raw and channel in (Channel.SCLP, Channel.STT):
        open_tx_ring(cfg, dp, channel, out, stack)


def _udp(
    local: str,
    port: int,
    what: str,
    stack: contextlib.ExitStack,
    batch: int,
    gro: bool,
    df: bool,
) -> UdpSocket:
    try:
        sock = UdpSocket.bind(local, port, gro=gro, batch=batch, pmtu_discover=df)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise EndpointError(
                f"UDP port {port} ({what}) on {local} is in use by another program; "
                "stop it or change the port"
            ) from None
        raise _bind_error(exc, local) from None
    stack.callback(sock.close)
    return sock


def _bind_error(exc: OSError, local: str) -> Exception:
    if exc.errno == errno.EADDRNOTAVAIL:
        return EndpointError(
            f"underlay.local {local} is not an address of this host; "
            "use one of this host's addresses"
        )
    return exc


def _raw(
    protocol: int,
    local: str,
    stack: contextlib.ExitStack,
    batch: int,
    slot: int,
    sums: bool = True,
    df: bool = True,
) -> RawIpSocket:
    """``sums``: the batch's L4 sums, for the tunnels with an L4 checksum (SCLP, STT);
    GRE has none, and skips their cost.  ``df``: don't fragment (the segmenting
    tunnels size their packets to the path)."""
    try:
        sock = RawIpSocket.open(
            protocol, local, batch=batch, slot_size=slot, l4_sums=sums, dont_fragment=df
        )
    except OSError as exc:
        raise _bind_error(exc, local) from None
    stack.callback(sock.close)
    return sock


def open_tx_ring(
    cfg: Config,
    dp: DataPath,
    channel: Channel,
    out: UnderlaySockets,
    stack: contextlib.ExitStack,
) -> None:
    """Send ``channel``'s segments (native SCLP, STT) through AF_PACKET TX rings on
    the underlay devices (:mod:`sclp.io.txring`: no trip through the kernel's IP output
    per packet) into ``out.tx``; the raw socket still sends where a ring cannot (no
    neighbour entry yet, another device).  Nothing, and one warning, for an IPv6
    underlay or when no ring can be set up: the raw socket sends everything.
    ``SCLP_TX_RING=off`` in the environment turns the rings off (comparisons)."""
    local = cfg.underlay.local
    what = "STT" if channel is Channel.STT else "native SCLP"
    if os.environ.get(TX_RING_ENV, "on") == "off":
        log.info("%s: sent with sendmmsg on a raw socket (%s=off)", what, TX_RING_ENV)
        return
    if ":" in local:
        log.warning("%s: no TX ring on an IPv6 underlay: sent with sendmmsg (slower)", what)
        return
    rings: list[PacketTxRing] = []
    try:
        devices = underlay_devices(dp.peers) if dp.peers else [_device_of(local)]
        for dev in devices:
            rings.append(PacketTxRing.open(dev))
        ns = nsio.NetNS(None)
        ipr = ns.ipr
    except (OSError, ValueError, nsio.NetnsError) as exc:
        for ring in rings:
            ring.close()
        log.warning("%s: no TX ring (%s): sent with sendmmsg on a raw socket (slower)", what, exc)
        return
    sender = TxRingSender(out.raw[channel], rings, local, out.raw[channel].protocol, ipr)
    stack.callback(sender.close)
    out.tx[channel] = sender
    log.info("%s: sent through TX rings on %s", what, ", ".join(devices))


def _device_of(local: str) -> str:
    """The name of the device that holds address ``local``."""
    with nsio.NetNS(None) as ns:
        for msg in ns.ipr.get_addr(address=local):
            return str(ns.ipr.get_links(msg["index"])[0].get_attr("IFLA_IFNAME"))
    raise ValueError(f"{local} is not an address of this host")


def install_stt_guard(cfg: Config, stack: contextlib.ExitStack) -> None:
    """Keep the kernel's TCP from answering STT segments with resets (no socket
    listens on 7471): drop outgoing RSTs from that port while we run."""
    try:
        nft.install_stt_rst_guard(STT_PORT, cfg.name)
    except (OSError, nft.NftError) as exc:
        raise EndpointError(f"installing the STT nftables rule failed: {exc}") from None
    stack.callback(lambda: nft.remove_stt_rst_guard(cfg.name))


def open_stt_taps(
    cfg: Config,
    dp: DataPath,
    send_sock: RawIpSocket,
    stack: contextlib.ExitStack,
    batch: int,
    slot: int,
) -> list[packet_io.PacketTap]:
    """Read STT segments with packet sockets on the underlay devices and drop them
    at those devices' ingress hook, so the kernel's IP and TCP never process them
    (:mod:`sclp.io.packet`); ``send_sock`` then only sends.  Empty (and a warning)
    when that cannot be set up: the caller reads ``send_sock`` instead."""
    taps: list[packet_io.PacketTap] = []
    try:
        devices = underlay_devices(dp.peers)
        program = packet_io.stt_filter(cfg.underlay.local, STT_PORT, sorted(dp.peers))
        for dev in devices:
            taps.append(packet_io.PacketTap.open(dev, program, batch=batch, slot_size=slot))
        nft.install_stt_ingress_drop(devices, cfg.underlay.local, STT_PORT, cfg.name)
    except (OSError, ValueError, nft.NftError, nsio.NetnsError) as exc:
        for tap in taps:
            tap.close()
        log.warning(
            "STT segments are read from a raw TCP socket, after the kernel's TCP has "
            "processed them (slower): no packet socket + ingress drop: %s",
            exc,
        )
        return []
    stack.callback(lambda: nft.remove_stt_ingress_drop(cfg.name))
    for tap in taps:
        stack.callback(tap.close)
    packet_io.attach_filter(send_sock.sock, packet_io.drop_all_filter())
    log.info("STT: packet sockets and an ingress drop on %s", ", ".join(devices))
    return taps


def underlay_devices(peers: frozenset[str]) -> list[str]:
    """The devices the routes to the peers leave by (where their segments come in),
    loopback excepted; raises ValueError if there is none."""
    devices: list[str] = []
    with nsio.NetNS(None) as ns:
        for peer in sorted(peers):
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


class PeerFilter:
    """The kernel's peer filter of one endpoint (:func:`sclp.io.nft.install_peer_filter`)
    and its drop counter, read with an ``nft`` subprocess (~10 ms) only when the last
    read is older than the caller allows: :meth:`drops` is called from the loop, for
    every stats snapshot (twice a second, :data:`PEER_COUNTER_REFRESH`) and every
    ``sclp stats`` request (:data:`PEER_COUNTER_ON_REQUEST`)."""

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.clock = clock
        self._drops = 0
        self._read_at = -float("inf")
        self._failed = False

    def drops(self, max_age: float = PEER_COUNTER_REFRESH) -> int:
        """The packets the kernel dropped as not from a peer, read at most ``max_age``
        seconds ago (the last value if a read fails)."""
        now = self.clock()
        if now - self._read_at >= max_age:
            self._read_at = now
            try:
                self._drops = nft.peer_filter_drops(self.name)
            except (OSError, ValueError, nft.NftError) as exc:
                if not self._failed:
                    log.warning("reading the kernel's not-peer counter failed: %s", exc)
                self._failed = True
        return self._drops

    def update(self, peers: frozenset[str]) -> None:
        """Replace the peer sets (peers found at run time); raises NftError."""
        nft.update_peer_set(self.name, peers)


def filter_ports(cfg: Config, dp: DataPath) -> tuple[list[int], list[int], list[int]]:
    """UDP destination ports, IP protocols and TCP destination ports of the channels
    the networks use: what the peer filter guards."""
    udp = [port for channel, port in UDP_PORTS.items() if channel in dp.channels]
    protocols: list[int] = []
    tcp: list[int] = []
    if Channel.SCLP in dp.channels:
        if cfg.underlay.sclp_carrier is Carrier.UDP:
            udp.append(cfg.underlay.sclp_udp_port)
        else:
            protocols.append(IPPROTO_SCLP)
    if Channel.GRE in dp.channels:
        protocols.append(IPPROTO_GRE)
    if Channel.STT in dp.channels:
        tcp.append(STT_PORT)
    return udp, protocols, tcp


def install_peer_filter(
    cfg: Config, dp: DataPath, underlay: UnderlaySockets, stack: contextlib.ExitStack
) -> PeerFilter | None:
    """Drop packets from non-peers to the endpoint's ports and protocols in the kernel
    (``inet sclp_<name>_peers``), removed again by ``stack``.  None (and a one-line
    warning) when that cannot be set up: the data path still drops them, after
    reading them."""
    udp, protocols, tcp = filter_ports(cfg, dp)
    if not (udp or protocols or tcp):
        return None
    try:
        nft.install_peer_filter(
            cfg.name,
            cfg.underlay.local,
            dp.peers,
            udp_ports=udp,
            protocols=protocols,
            tcp_ports=tcp,
            ingress_devices=underlay.stt_devices,
        )
    except (OSError, ValueError, nft.NftError) as exc:
        log.warning(
            "packets from non-peers are dropped in user space, after being read "
            "(slower): no kernel peer filter: %s",
            exc,
        )
        return None
    stack.callback(lambda: nft.remove_peer_filter(cfg.name))
    log.info("kernel peer filter %s: %d peer(s)", nft.peer_filter_table(cfg.name), len(dp.peers))
    return PeerFilter(cfg.name)

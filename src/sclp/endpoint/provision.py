"""Provisioning: everything the endpoint sets up on the host before it forwards.

Privileges, the underlay namespace, the underlay MTU, the VM ports (TAP devices, their
namespace, address, MTU and largest TSO frame, over netlink), the underlay sockets of
the channels the networks use, and the nftables rules and packet sockets (receive rings,
:mod:`sclp.io.rxring`) that take STT and native SCLP off the kernel's IP input.
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

from sclp.endpoint.config import Config, vm_mtu_problem
from sclp.endpoint.datapath import DataPath, VmPort
from sclp.endpoint.tunnels import Channel
from sclp.io import netns as nsio
from sclp.io import nft
from sclp.io import packet as packet_io
from sclp.io.linux import IPPROTO_GRE, IPPROTO_SCLP, IPPROTO_TCP
from sclp.io.rawip import RawIpSocket
from sclp.io.rxring import RxRing
from sclp.io.tap import TapDevice
from sclp.io.txring import PacketTxRing, TxRingSender
from sclp.io.udp import UdpSocket
from sclp.wire.sclp import Carrier
from sclp.wire.stt import STT_PORT

log = logging.getLogger("sclp")

RX_SLOTS = 64  # packets per recvmmsg batch
PEER_COUNTER_REFRESH: Final = 5.0  # seconds: the loop's snapshots read the kernel counter
PEER_COUNTER_ON_REQUEST: Final = 0.5  # ... and an ``sclp stats`` request at most this often
# IP protocol and destination port the taps and the ingress drop of a channel match.
TAPPED: Final[dict[Channel, tuple[int, int | None]]] = {
    Channel.STT: (IPPROTO_TCP, STT_PORT),
    Channel.SCLP: (IPPROTO_SCLP, None),
}

UnderlayTap = packet_io.PacketTap | RxRing


def udp_ports(cfg: Config) -> dict[Channel, int]:
    """The UDP destination port of each classic UDP channel (``underlay.vxlan_port``,
    ``underlay.geneve_port``): the port its socket binds, and the one its sends go to."""
    return {Channel.VXLAN: cfg.underlay.vxlan_port, Channel.GENEVE: cfg.underlay.geneve_port}


class EndpointError(Exception):
    """A start-up problem, phrased as one line naming the problem and the fix."""


@dataclass
class UnderlaySockets:
    """The underlay sockets: UDP ones with their destination port, raw ones, and the
    receive-only packet taps of STT and native SCLP (when they replace the raw
    socket's reads), with the devices they are on."""

    udp: dict[Channel, tuple[UdpSocket, int]] = field(default_factory=dict)
    raw: dict[Channel, RawIpSocket] = field(default_factory=dict)
    raw_receive: dict[Channel, RawIpSocket] = field(default_factory=dict)
    tx: dict[Channel, TxRingSender] = field(default_factory=dict)  # raw sends via TX rings
    taps: dict[Channel, list[UnderlayTap]] = field(default_factory=dict)
    tap_devices: dict[Channel, list[str]] = field(default_factory=dict)  # where the taps are
    untapped: set[Channel] = field(default_factory=set)  # taps failed: raw socket for good
    batch: int = 1  # packets or buffers one receive call returns at most
    slot: int = 2048  # bytes of the largest underlay packet a receive slot holds

    def all_taps(self) -> list[UnderlayTap]:
        return [tap for taps in self.taps.values() for tap in taps]

    def all_tap_devices(self) -> list[str]:
        return sorted({dev for devices in self.tap_devices.values() for dev in devices})


def check_privileges() -> None:
    if os.geteuid() != 0:
        raise EndpointError(
            "sclp run needs root (CAP_NET_ADMIN) to create TAP devices; run it with sudo"
        )


def missing_namespaces(cfg: Config) -> EndpointError | None:
    """The error a start gives for the first namespace the file names that does not
    exist (the underlay's, then each network's), or None.  Reads only."""
    name = cfg.underlay.namespace
    if name and not nsio.netns_exists(name):
        return _missing_underlay_namespace(name)
    for net in cfg.networks:
        if net.namespace and not nsio.netns_exists(net.namespace):
            return _missing_vm_namespace(net.namespace, net.vni)
    return None


def _missing_underlay_namespace(name: str) -> EndpointError:
    return EndpointError(
        f"underlay namespace {name!r} does not exist; "
        f"create it (ip netns add {name}) or remove underlay.namespace"
    )


def _missing_vm_namespace(name: str, vni: int) -> EndpointError:
    return EndpointError(
        f"network namespace {name!r} (vni {vni}) does not exist; "
        f"create it with: ip netns add {name}"
    )


def enter_underlay_namespace(cfg: Config) -> None:
    name = cfg.underlay.namespace
    if not name:
        return
    if not nsio.netns_exists(name):
        raise _missing_underlay_namespace(name)
    from pyroute2 import netns as pr_netns

    pr_netns.setns(name)


def underlay_mtu(cfg: Config) -> int:
    """``underlay.mtu``, or the MTU of the device that holds ``underlay.local``."""
    if cfg.underlay.mtu:
        return cfg.underlay.mtu
    with nsio.NetNS(None) as ns:
        for msg in ns.ipr.get_addr(address=cfg.underlay.local):
            link = ns.ipr.get_links(msg["index"])[0]
            mtu = int(link.get_attr("IFLA_MTU"))
            check_vm_mtus(cfg, mtu, str(link.get_attr("IFLA_IFNAME")))
            return mtu
    raise not_local(cfg.underlay.local)


def not_local(address: str) -> EndpointError:
    return EndpointError(
        f"underlay.local {address} is not an address of this host; "
        "use one of this host's addresses (ip -br addr)"
    )


def check_vm_mtus(cfg: Config, mtu: int, device: str) -> None:
    """Every network's ``mtu`` fits the underlay MTU ``mtu`` read from ``device``
    (the file's own ``underlay.mtu`` was checked with the file)."""
    for index, net in enumerate(cfg.networks):
        underlay = cfg.underlay
        problem = vm_mtu_problem(net, underlay.local, mtu, underlay.sclp_carrier, device)
        if problem:
            raise EndpointError(
                f"network[{index}].mtu (vni {net.vni}): {problem}, or raise the MTU of {device}"
            )


def open_tap(port: VmPort, stack: contextlib.ExitStack) -> TapDevice:
    """The TAP ``port`` of its network, with its MTU, largest TSO frame, namespace and
    address (its index, where it ended up, in ``port.ifindex``); removed again by
    ``stack``."""
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
                raise _missing_vm_namespace(net.namespace, net.vni)
            with nsio.NetNS(net.namespace) as vm:
                if vm.link_exists(net.tap):
                    raise EndpointError(
                        f"an interface named {net.tap!r} already exists in namespace "
                        f"{net.namespace!r} (vni {net.vni}); choose another tap name "
                        "or remove that interface"
                    )
            port.ifindex = nsio.move_link(
                net.tap, None, net.namespace, address=net.address, mtu=vm_mtu
            )
        else:
            with nsio.NetNS(None) as here:
                here.set_link(net.tap, mtu=vm_mtu)
                if net.address:
                    here.add_address(net.tap, net.address)
                here.set_link(net.tap, up=True)
                port.ifindex = here.link_index(net.tap)
    except nsio.NetnsError as exc:
        raise EndpointError(f"configuring {net.tap}: {exc}") from None
    return tap


def open_underlay(cfg: Config, dp: DataPath, stack: contextlib.ExitStack) -> UnderlaySockets:
    """One socket per channel the networks use (plus STT's packet taps)."""
    batch = RX_SLOTS if cfg.tuning.rx_batch else 1
    out = UnderlaySockets(batch=batch, slot=dp.underlay.mtu + 64)
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
    slot = out.slot
    classic = udp_ports(cfg)
    if channel in classic:
        # The port is fixed here, once: the sender sends every datagram of the channel
        # to it.  DF unless a network opted into fragmentation (outer_fragments).
        port = classic[channel]
        what = f"{'VXLAN' if channel is Channel.VXLAN else 'Geneve'}, underlay.{channel.value}_port"
        df = not outer_fragments(dp, channel)
        sock = _udp(local, port, what, stack, batch, gro=True, df=df)
        out.udp[channel] = (sock, port)
    elif channel is Channel.SCLP:
        if cfg.underlay.sclp_carrier is Carrier.UDP:
            port = cfg.underlay.sclp_udp_port
            carrier = _udp(local, port, "SCLP UDP carrier", stack, batch, cfg.tuning.rx_batch, True)
            out.udp[Channel.SCLP] = (carrier, port)
        else:
            out.raw[Channel.SCLP] = _raw(IPPROTO_SCLP, local, stack, batch, slot)
            open_taps(cfg, dp, Channel.SCLP, out, stack)
    elif channel is Channel.GRE:
        # No L4 checksum; DF as for the UDP tunnels.
        df = not outer_fragments(dp, channel)
        out.raw[Channel.GRE] = _raw(IPPROTO_GRE, local, stack, batch, slot, sums=False, df=df)
    elif channel is Channel.STT:
        out.raw[Channel.STT] = _raw(socket.IPPROTO_TCP, local, stack, batch, slot)
        install_stt_guard(cfg, stack)
        open_taps(cfg, dp, Channel.STT, out, stack)
    if channel in out.raw and not out.taps.get(channel):
        out.raw_receive[channel] = out.raw[channel]
    if channel in out.raw and channel in (Channel.SCLP, Channel.STT):
        open_tx_ring(cfg, dp, channel, out, stack)


def outer_fragments(dp: DataPath, channel: Channel) -> bool:
    """Whether a network on ``channel`` has a VM MTU above what its tunnel carries
    unfragmented (``mtu = 1500`` on a 1500-byte underlay, docs/config.md): only then
    may the kernel fragment the channel's outer packets.  Otherwise DF is set and the
    data path answers a frame that does not fit with ICMP (RFC 7348 §4.3: a VTEP MUST
    NOT fragment)."""
    return any(
        n.tunnel.channel is channel and n.vm_mtu > n.tunnel.default_vm_mtu()
        for n in dp.networks.values()
    )


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
        return not_local(local)
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
    ``tuning.tx_ring = false`` turns the rings off."""
    local = cfg.underlay.local
    what = "STT" if channel is Channel.STT else "native SCLP"
    if not cfg.tuning.tx_ring:
        log.info("%s: sent with sendmmsg on a raw socket (tuning.tx_ring = false)", what)
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


def open_taps(
    cfg: Config,
    dp: DataPath,
    channel: Channel,
    out: UnderlaySockets,
    stack: contextlib.ExitStack,
) -> bool:
    """Read ``channel`` (STT or native SCLP, :data:`TAPPED`) with packet sockets on
    the underlay devices (receive rings, :class:`sclp.io.rxring.RxRing`; the
    ``recvmmsg`` :class:`sclp.io.packet.PacketTap` when a ring cannot be had or
    ``batch`` is 1) and drop its packets at those devices' ingress hook, so the
    kernel's IP (and TCP) never process them (:mod:`sclp.io.packet`); its raw socket
    in ``out.raw`` then only sends.  Fills ``out.taps`` and ``out.tap_devices``;
    False (the caller reads the raw socket) for an IPv6 underlay, no peers yet (their
    routes name the devices), ``tuning.rx_taps = "off"``, or a failure (one warning, and no
    second try: ``out.untapped``)."""
    local = cfg.underlay.local
    mode = cfg.tuning.rx_taps
    if out.taps.get(channel):
        return True
    if ":" in local or not dp.peers or mode == "off" or channel in out.untapped:
        return False
    protocol, port = TAPPED[channel]
    what = "STT" if channel is Channel.STT else "native SCLP"
    taps: list[UnderlayTap] = []
    try:
        devices = underlay_devices(dp.peers)
        program = packet_io.ipv4_filter(local, protocol, port, sorted(dp.peers))
        for dev in devices:
            taps.append(_open_tap(dev, program, out.batch, out.slot, ring=mode == "ring"))
        nft.install_ingress_drop(devices, local, protocol, port, cfg.name)
    except (OSError, ValueError, nft.NftError, nsio.NetnsError) as exc:
        for tap in taps:
            tap.close()
        log.warning(
            "%s segments are read from a raw socket, after the kernel's IP input has "
            "processed them (slower): no packet socket + ingress drop: %s",
            what,
            exc,
        )
        out.untapped.add(channel)
        return False
    stack.callback(lambda: nft.remove_ingress_drop(protocol, port, cfg.name))
    for tap in taps:
        stack.callback(tap.close)
    packet_io.attach_filter(out.raw[channel].sock, packet_io.drop_all_filter())
    out.taps[channel] = taps
    out.tap_devices[channel] = devices
    out.raw_receive.pop(channel, None)
    log.info(
        "%s: %s and an ingress drop on %s",
        what,
        "receive rings" if isinstance(taps[0], RxRing) else "packet sockets",
        ", ".join(devices),
    )
    return True


def _open_tap(
    dev: str, program: list[packet_io.BpfInsn], batch: int, slot: int, ring: bool
) -> UnderlayTap:
    """A receive ring on ``dev``, or the ``recvmmsg`` tap when rings are not wanted,
    ``batch`` is 1 (the per-packet reads of the ablation) or the kernel refuses one."""
    if ring and batch > 1:
        try:
            return RxRing.open(dev, program, batch=batch, slot_size=slot)
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                raise
            log.warning("no receive ring on %s (%s): reading it with recvmmsg", dev, exc)
    return packet_io.PacketTap.open(dev, program, batch=batch, slot_size=slot)


def refresh_tap_filters(cfg: Config, dp: DataPath, out: UnderlaySockets) -> None:
    """Give every tap the filter of the current peers (peers changed at run time)."""
    for channel, taps in out.taps.items():
        protocol, port = TAPPED[channel]
        program = packet_io.ipv4_filter(cfg.underlay.local, protocol, port, sorted(dp.peers))
        for tap in taps:
            packet_io.attach_filter(tap.sock, program)


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
    udp = [port for channel, port in udp_ports(cfg).items() if channel in dp.channels]
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
            ingress_devices=underlay.all_tap_devices(),
            ingress_protocols=[IPPROTO_SCLP] if Channel.SCLP in underlay.taps else [],
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

"""The endpoint's data path, sans-I/O: frames and packets in, sends and deliveries out.

Strategy (docs/architecture.md, "The data path"): per-batch, not per-packet.  A VM with TSO
hands us frames of up to ~64 KB; the SCLP and STT tunnels carry each one as a single
payload (one UDP GSO send in carrier mode, one ``sendmmsg`` of raw segments natively)
and the receiver hands it back to its VM as one GSO frame.  The classic tunnels
(VXLAN, Geneve, NVGRE) cut such a frame into MTU-sized TCP segments in software, one
inner frame per outer packet — which is exactly what they cost in the paper — but get
the same batching: all packets of a frame in one buffer at a fixed stride.

The shape follows aioquic's connection: the runner calls

- :meth:`DataPath.from_vm` with a frame read from a VM port (virtio-net header in
  front of it, headroom before that) → the :class:`~sclp.endpoint.tunnels.Send`\\ s to
  put on the underlay;
- :meth:`DataPath.from_udp` / :meth:`DataPath.from_ip` with what an underlay socket
  received (with the kernel's GRO segment size or the slot's ones' complement sum) →
  the :class:`Deliver`\\ ies to write to VM ports, each with its virtio-net header;
- :meth:`DataPath.expire` at :meth:`DataPath.next_deadline`.

No sockets, no system calls, no clock: ``now`` is passed in, so two data paths wired
back to back in memory are the unit test of the whole endpoint (tests/endpoint/).

Ports (docs/vms.md): a network (VNI) has any number of local ports — the TAP the
endpoint owns, interfaces it attached (a QEMU/libvirt TAP, a container's veth) — added
and removed while it runs (:meth:`DataPath.add_port`, :meth:`DataPath.remove_port`).
The VNI's FDB learns MACs behind ports as well as behind peers, so a frame between
two local ports is switched here and never touches the underlay (it comes back from
:meth:`DataPath.from_vm` as a :class:`Deliver`, its GSO header as the VM left it);
a broadcast reaches the other local ports and every peer; a frame from a peer goes
to the port of its destination MAC, or to every local port when that is unknown.

Inner checksums (sclp-spec §6): a frame that fits the VM's MTU crosses the tunnel
with a complete L4 checksum (the sender finishes a partial one); a GSO frame keeps
the partial checksum the sending VM left (pseudo-header sum) and the receiver hands
it to its VM as NEEDS_CSUM, as a virtio NIC with TSO would.

Counters: per VNI in :attr:`VirtualNetwork.counters` (frames in and out per port in
:attr:`VmPort.counters`), endpoint-wide in
:attr:`DataPath.counters`, and in the reassemblers' ``drops``; every loss is a
:class:`~sclp.wire.errors.DropReason`.  The runner adds the ones only I/O can see
(TX_BUSY, TAP_BUSY, TAP_ERROR) and the frames it did deliver (``rx_frames``).
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Final, NamedTuple

from sclp.endpoint.config import Config, Network, Protocol
from sclp.endpoint.stats import DataPathStats, PortStats, VniStats, sorted_counters
from sclp.endpoint.tunnels import (
    HEADROOM,
    MAX_VM_FRAME,
    SCLP_TUNNEL_OF_PORT,
    Channel,
    GeneveTunnel,
    NvgreTunnel,
    Send,
    SttTunnel,
    Tunnel,
    Underlay,
    VmFrame,
    VxlanTunnel,
    tunnel_for,
)
from sclp.engine.reassembler import Reassembler
from sclp.engine.segmenter import Segmenter
from sclp.engine.stt import SttReassembler, SttSegmenter, pseudo_sum_for
from sclp.engine.table import ReassemblyTable, TableEntry
from sclp.engine.tso import complete_checksum, segment_tcp_frame, split_gso_frame
from sclp.switch.fdb import Fdb
from sclp.wire import icmp, stt
from sclp.wire.checksum import Buffer
from sclp.wire.errors import DropReason, MalformedPacket
from sclp.wire.frame import l4_checksum, parse_frame
from sclp.wire.ipfrag import fragment_ipv4
from sclp.wire.tcp import TCP_CSUM_OFFSET
from sclp.wire.udp import UDP_CSUM_OFFSET
from sclp.wire.virtio_net import (
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    NEEDS_CSUM,
    VNET_HDR,
    VNET_HDR_LEN,
    VNET_HDR_NONE,
)

__all__ = [
    "COUNTER_NAMES",
    "FRAME_BUF",
    "HEADROOM",
    "MAX_VM_FRAME",
    "DataPath",
    "Deliver",
    "PeerCounters",
    "TokenBucket",
    "TooBig",
    "VirtualNetwork",
    "VmPort",
    "too_big_action",
]

FRAME_BUF: Final = 65536 + 256  # a read buffer: headroom + virtio header + any frame
# The largest frame a VM port can hand over: an IP packet of 65,535 bytes behind an
# Ethernet header and a VLAN tag (sclp.io.tap.MAX_FRAME_LEN).
MAX_PORT_FRAME: Final = 65_535 + 18
# Receive side, classic tunnels: a plain inner frame whose TCP/UDP checksum field holds
# exactly the pseudo-header sum (wire.frame.l4_checksum) goes to the VM as NEEDS_CSUM at
# its L4 header, as a virtio NIC hands over a partial checksum.  Why: a Linux vxlan,
# geneve or gretap device whose underlay claims checksum offload (a veth, by default)
# sends the inner checksum CHECKSUM_PARTIAL for a NIC that never comes; a kernel
# receiver learns that from the skb, we see bytes, and the VM would drop the frame as a
# bad checksum.  Every other value (every complete checksum, right or wrong; UDP's 0,
# which a folded pseudo-header sum never is) goes on as VNET_HDR_NONE and the VM
# verifies it.  A complete checksum equals the pseudo-header sum about once in 2**16
# frames, harmless (completing it rewrites the same value); corruption slips through
# only if it hits such a frame or turns the field into exactly that value: about
# 2**-16 of corrupted frames, on top of what the 16-bit checksum misses anyway.
# SCLP and STT peers are ours and complete their checksums.  benchmarks/partial_csum.py
# measures the check.
_CLASSIC_TUNNELS: Final = frozenset((VxlanTunnel, GeneveTunnel, NvgreTunnel))
_U16: Final = struct.Struct("!H")
_U16LE: Final = struct.Struct("<H")
_GSO_FIELDS: Final = struct.Struct("<HH")  # gso_size, csum_start of a virtio-net header
_GSO_TCP: Final = frozenset((GSO_TCPV4, GSO_TCPV6))  # gso_type without the ECN bit
_PARTIAL_VNET: Final = {
    (l4, off): VNET_HDR.pack(NEEDS_CSUM, GSO_NONE, 0, 0, l4, off)
    for l4 in range(14, 14 + 4 * 4 + 60 + 1, 2)
    for off in (TCP_CSUM_OFFSET, UDP_CSUM_OFFSET)
}

COUNTER_NAMES: Final = (
    "tx_frames",
    "rx_frames",
    "tx_local",
    "tx_filtered",
    "tx_split",
    "tx_packets",
    "rx_packets",
    "tx_bytes",
    "rx_bytes",
    "reasm_complete",
    "reasm_bytes_held",
    "icmp_too_big_sent",
    "icmp_too_big_limited",
    "tx_inner_fragments",
    "tx_resegmented",
    *(reason.counter for reason in DropReason),
)


# -- path MTU inside the tunnel -------------------------------------------------------------
# RFC 7348 §4.3: "VTEPs MUST NOT fragment VXLAN packets".  A frame from a port that is
# larger than its network carries is answered as the kernel's bridge with a VXLAN device
# answers it (docs/vms.md, "MTU"): ICMP "fragmentation needed" / ICMPv6 "packet too big"
# back to the sender, rate-limited like the kernel's ICMP; an IPv4 packet without DF is
# fragmented (a TCP GSO frame re-segmented) *inside*, never the outer packet.
ICMP_RATE: Final = 100.0  # ICMP errors per second, after a burst of ...
ICMP_BURST: Final = 50  # ... (the kernel's net.ipv4.icmp_msgs_burst)
_DF: Final = 0x4000


class TooBig(enum.Enum):
    """What to do with a frame from a port (:func:`too_big_action`)."""

    CARRY = "carry"  # it fits (for a GSO frame: each of its segments fits)
    ICMP = "icmp"  # too big, DF set or IPv6: tell the sender the MTU
    FRAGMENT = "fragment"  # too big, IPv4 without DF: fragment the inner packet
    RESEGMENT = "resegment"  # a TCP GSO frame over IPv4 without DF: smaller segments
    DROP = "drop"  # too big and not IP: nobody to tell


def too_big_action(version: int, df: bool, gso: bool, ip_len: int, mtu: int) -> TooBig:
    """The decision for an IP packet of ``ip_len`` bytes (for a GSO frame: of one
    segment) of IP ``version`` (0: not IP) where ``mtu`` bytes fit."""
    if ip_len <= mtu:
        return TooBig.CARRY
    if version == 6 or (version == 4 and df):
        return TooBig.ICMP
    if version == 4:
        return TooBig.RESEGMENT if gso else TooBig.FRAGMENT
    return TooBig.DROP


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; :meth:`take` with the caller's
    ``now`` (monotonic seconds)."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float = ICMP_RATE, burst: int = ICMP_BURST) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last: float | None = None

    def take(self, now: float) -> bool:
        if self._last is not None and now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class PeerCounters:
    """One peer's traffic on one VNI: the inner frames (and their bytes) sent to it and
    taken from it, and when one was last taken (``last_rx``, the data path's ``now``;
    None: never).  Counted once per frame, not per underlay packet."""

    __slots__ = ("last_rx", "rx_bytes", "rx_frames", "tx_bytes", "tx_frames")

    def __init__(self) -> None:
        self.tx_frames = self.tx_bytes = self.rx_frames = self.rx_bytes = 0
        self.last_rx: float | None = None


class VirtualNetwork:
    """One virtual network (VNI) on this endpoint: its tunnel, its FDB (peers and
    local ports), its counters.  ``peer_counters`` has one :class:`PeerCounters` per
    peer (its keys are the peers a frame is taken from: one lookup on receipt both
    checks and counts); ``tx_counters`` has those and the peers only static entries
    name (a frame may be sent to them), sharing the objects."""

    __slots__ = (
        "alt_tunnel",
        "counters",
        "fdb",
        "max_fast_frame",
        "max_frame",
        "max_plain_frame",
        "max_tunnel_frame",
        "network",
        "peer_counters",
        "peers",
        "plain_peers",
        "rx_partial_csum",
        "tunnel",
        "tx_counters",
        "vm_mtu",
        "vni",
    )

    def __init__(
        self,
        network: Network,
        tunnel: Tunnel,
        fdb: Fdb[str, VmPort],
        alt_tunnel: Tunnel | None = None,
    ) -> None:
        self.network = network
        self.vni = network.vni
        self.tunnel = tunnel
        self.fdb = fdb
        self.peers = frozenset(network.peers)
        # Per-peer encapsulation (docs/evpn.md): a VXLAN-over-SCLP network that BGP
        # EVPN may give VXLAN-only peers also has plain VXLAN (``alt_tunnel``), for
        # the peers in ``plain_peers`` (decided when the peers are set); its VM MTU
        # and largest frame are what both carry.
        self.alt_tunnel = alt_tunnel
        self.plain_peers: frozenset[Hashable] = frozenset()
        tunnels = (tunnel,) if alt_tunnel is None else (tunnel, alt_tunnel)
        self.vm_mtu = network.mtu or min(t.default_vm_mtu() for t in tunnels)
        # A frame longer than this left the sender as a GSO frame (VLAN tag allowed).
        self.max_plain_frame = self.vm_mtu + 18
        # The longest (segment of a) frame a port may hand over: a classic tunnel's
        # outer packet is sized for an untagged frame of the VM MTU; SCLP and STT carry
        # a tagged one too.  Up to max_fast_frame no header is read to know it fits.
        self.max_fast_frame = self.vm_mtu + 14
        classic = type(tunnel) in _CLASSIC_TUNNELS
        self.max_frame = self.max_fast_frame if classic else self.max_plain_frame
        # The largest frame the tunnel carries whole; longer GSO frames are split.
        self.max_tunnel_frame = min(t.max_vm_frame() for t in tunnels)
        # Classic tunnels may come from a kernel peer that left inner checksums
        # partial (_PARTIAL_VNET); SCLP and STT peers are ours and complete them.
        self.rx_partial_csum = any(type(t) in _CLASSIC_TUNNELS for t in tunnels)
        self.counters: Counter[str] = Counter()
        self.peer_counters: dict[str, PeerCounters] = {}
        self.tx_counters: dict[str, PeerCounters] = {}
        self.set_peers(self.peers)

    def set_peers(self, peers: frozenset[str]) -> None:
        """Serve ``peers`` from now on; a peer that stays keeps its counters."""
        old = self.tx_counters
        self.peers = peers
        self.peer_counters = {p: old.get(p) or PeerCounters() for p in sorted(peers)}
        tx = dict(self.peer_counters)
        for entry in self.network.static:
            if entry.peer not in tx:
                tx[entry.peer] = old.get(entry.peer) or PeerCounters()
        self.tx_counters = tx

    @property
    def protocol(self) -> str:
        return self.tunnel.protocol.value

    @property
    def ports(self) -> tuple[VmPort, ...]:
        return self.fdb.ports


class VmPort:
    """One local port of a network: the TAP the endpoint owns (``owned``) or an
    interface it attached.  ``fd`` is the runner's, for the write of each delivery;
    ``ifindex`` the interface's index once whoever opened it knows it (0 before);
    ``counters`` are this port's frames and bytes each way."""

    __slots__ = ("counters", "fd", "ifindex", "name", "net", "owned")

    def __init__(self, name: str, net: VirtualNetwork, owned: bool) -> None:
        self.name = name
        self.net = net
        self.owned = owned
        self.fd = -1
        self.ifindex = 0
        self.counters: Counter[str] = Counter()

    @property
    def vni(self) -> int:
        return self.net.vni

    def __repr__(self) -> str:
        return f"VmPort({self.name!r}, vni={self.net.vni})"


class Deliver(NamedTuple):
    """Write ``vnet`` (a virtio-net header) then ``frame`` to ``port``.
    ``frame`` may be a view into the buffer the packet was received in.  (Defined after
    :class:`VmPort`: compiled by mypyc, a NamedTuple's field types are looked up when
    the module loads.)"""

    port: VmPort
    vnet: bytes
    frame: Buffer


class DataPath:
    """The whole forwarding state of one endpoint: ports by VNI, the underlay peers,
    the SCLP and STT reassemblers and segmenters.  Not thread-safe."""

    def __init__(
        self,
        cfg: Config,
        underlay_mtu: int,
        *,
        segmenter: Segmenter | None = None,
        stt_segmenter: SttSegmenter | None = None,
    ) -> None:
        self.cfg = cfg
        self.underlay = Underlay(cfg.underlay.local, underlay_mtu, cfg.underlay.sclp_carrier)
        self.counters: Counter[str] = Counter()
        self._local = cfg.underlay.local
        self._local_packed = ipaddress.ip_address(self._local).packed
        self._deliver_gso = cfg.tuning.deliver_gso
        self.icmp_bucket = TokenBucket()
        segmenter = segmenter or Segmenter()
        stt_segmenter = stt_segmenter or SttSegmenter()
        lim = cfg.limits
        # One table, one memory budget: the caps hold for SCLP and STT together.
        self.reassembly: ReassemblyTable[TableEntry] = ReassemblyTable(
            lim.reasm_timeout, lim.reasm_max_bytes, lim.reasm_max_entries
        )
        self.reassembler = Reassembler(cfg.underlay.sclp_carrier, table=self.reassembly)
        self.stt_reassembler = SttReassembler(table=self.reassembly)
        self._segmenters = (segmenter, stt_segmenter)
        self.networks: dict[int, VirtualNetwork] = {}
        self.ports: dict[str, VmPort] = {}  # by interface name
        self.peers: frozenset[str] = frozenset()
        self._peer_packed: dict[str, bytes] = {}
        self._peer_of_packed: dict[bytes, str] = {}
        self.channels: frozenset[Channel] = frozenset()
        for net in cfg.networks:
            self.add_network(net)

    # -- networks and peers (configuration, SIGHUP, the cluster registry) -----------------

    def add_network(self, network: Network) -> VirtualNetwork:
        """Serve ``network`` (its TAP, if it has one, becomes a port); raises
        ValueError if its VNI is served already."""
        if network.vni in self.networks:
            raise ValueError(f"vni {network.vni} is served already")
        lim = self.cfg.limits
        tunnel = tunnel_for(network.protocol, network.vni, self.underlay, *self._segmenters)
        alt = None
        if self.cfg.bgp is not None and network.protocol is Protocol.VXLAN_SCLP:
            alt = VxlanTunnel(network.vni, self.underlay)  # for VXLAN-only EVPN peers
        fdb: Fdb[str, VmPort] = Fdb(network.peers, lim.fdb_aging, lim.fdb_max_entries)
        for entry in network.static:
            fdb.add_static(entry.mac, entry.peer)
        net = self.networks[network.vni] = VirtualNetwork(network, tunnel, fdb, alt)
        if network.tap is not None:
            self.add_port(network.tap, network.vni, owned=True)
        self._refresh()
        return net

    def remove_network(self, vni: int) -> VirtualNetwork:
        """Stop serving ``vni``: its ports leave with it (the caller closes what it
        opened for them).  Returns the network; KeyError if not served."""
        net = self.networks.pop(vni)
        for port in net.ports:
            self.ports.pop(port.name, None)
        self._refresh()
        return net

    def set_peers(
        self, vni: int, peers: Iterable[str], plain: Iterable[str] = ()
    ) -> tuple[frozenset[str], frozenset[str]]:
        """Replace the peers of ``vni`` (MACs behind a peer that left are forgotten);
        returns (joined, left).  ``plain``: the peers that take plain VXLAN on a
        network that has it as well (its ``alt_tunnel``; ignored on the others)."""
        net = self.networks[vni]
        new = frozenset(peers)
        if net.alt_tunnel is not None:
            net.plain_peers = frozenset(plain) & new
        joined, left = new - net.peers, net.peers - new
        if joined or left:
            net.set_peers(new)
            net.fdb.set_peers(sorted(new))
            self._refresh()
        return joined, left

    def _refresh(self) -> None:
        self.peers = frozenset(p for n in self.networks.values() for p in n.peers)
        self._peer_packed = {p: ipaddress.ip_address(p).packed for p in self.peers}
        self._peer_of_packed = {b: p for p, b in self._peer_packed.items()}
        self.channels = frozenset(n.tunnel.channel for n in self.networks.values()) | {
            n.alt_tunnel.channel for n in self.networks.values() if n.alt_tunnel is not None
        }

    # -- ports -----------------------------------------------------------------------------

    def add_port(self, name: str, vni: int, *, owned: bool = False) -> VmPort:
        """A local port ``name`` joins network ``vni``; raises ValueError if a port of
        that name exists or the VNI is not served."""
        if name in self.ports:
            raise ValueError(f"{name} is already a port of vni {self.ports[name].vni}")
        net = self.networks.get(vni)
        if net is None:
            raise ValueError(f"vni {vni} is not a network of this endpoint")
        port = self.ports[name] = VmPort(name, net, owned)
        net.fdb.add_port(port)
        return port

    def remove_port(self, port: VmPort) -> int:
        """``port`` leaves its network; returns how many FDB entries went with it."""
        self.ports.pop(port.name, None)
        return port.net.fdb.remove_port(port)

    def network_for(self, ifname: str) -> VirtualNetwork | None:
        """The network whose ``attach`` patterns take ``ifname`` (the first in the
        file), or None; the networks' own TAPs are never attached."""
        if any(n.network.tap == ifname for n in self.networks.values()):
            return None
        for net in self.networks.values():
            if net.network.attaches(ifname):
                return net
        return None

    # -- VM -> underlay ------------------------------------------------------------------

    def from_vm(
        self, port: VmPort, buf: bytearray, size: int, now: float
    ) -> Sequence[Send | Deliver]:
        """A frame read from VM port ``port``: ``size`` bytes at ``buf[HEADROOM -
        VNET_HDR_LEN:]``, the virtio-net header first.  The headroom in front may be
        overwritten.  Returns the packets to send to peers and the frames for other
        local ports (none when dropped and counted), to be carried out before the next
        read into ``buf``."""
        net = port.net
        counters = net.counters
        if size <= VNET_HDR_LEN + 14:
            counters[DropReason.TOO_SHORT.counter] += 1
            return []
        flen = size - VNET_HDR_LEN
        counters["tx_frames"] += 1
        counters["tx_bytes"] += flen
        pc = port.counters
        pc["tx_frames"] += 1
        pc["tx_bytes"] += flen
        if flen > MAX_PORT_FRAME:
            counters[DropReason.OVERSIZE.counter] += 1
            return []
        fdb = net.fdb
        fdb.learn(bytes(buf[HEADROOM + 6 : HEADROOM + 12]), port, now)
        dest = fdb.lookup(bytes(buf[HEADROOM : HEADROOM + 6]), now)
        local = dest.ports
        if local:
            return self._switch(port, buf, flen, dest.peers, local, now)
        if not dest.peers:
            counters[DropReason.NO_ROUTE.counter] += 1
            return []
        if dest.flooded:
            counters["tx_flooded"] += 1
        return self._to_peers(port, buf, flen, dest.peers, now)

    def _switch(
        self,
        port: VmPort,
        buf: bytearray,
        flen: int,
        peers: tuple[str, ...],
        local: tuple[VmPort, ...],
        now: float,
    ) -> list[Send | Deliver]:
        """A frame for other local ports (and peers, when flooded): the local ports get
        it as it came, GSO header included, without touching the underlay."""
        net = port.net
        counters = net.counters
        others = [p for p in local if p is not port]
        if not others and not peers:
            counters["tx_filtered"] += 1  # its destination is behind the port it came from
            return []
        vnet = bytes(buf[HEADROOM - VNET_HDR_LEN : HEADROOM])
        out: list[Send | Deliver] = []
        if peers:
            counters["tx_flooded"] += 1
            out.extend(self._to_peers(port, buf, flen, peers, now))
            partial = buf[HEADROOM - VNET_HDR_LEN] & NEEDS_CSUM
            if partial and (
                buf[HEADROOM - VNET_HDR_LEN + 1] == GSO_NONE or flen <= net.max_plain_frame
            ):
                vnet = VNET_HDR_NONE  # _encapsulate completed the checksum in place
        frame = memoryview(buf)[HEADROOM : HEADROOM + flen]
        counters["tx_local"] += len(others)
        out.extend(Deliver(p, vnet, frame) for p in others)
        return out

    def _to_peers(
        self, port: VmPort, buf: bytearray, flen: int, peers: tuple[str, ...], now: float
    ) -> Sequence[Send | Deliver]:
        """:meth:`_encapsulate` a frame that fits its network; one that does not goes
        to :meth:`_too_big`.  A frame that left counts once per peer it went to (an
        ICMP reply to the port, or a drop, counts for none)."""
        net = port.net
        at = HEADROOM - VNET_HDR_LEN
        sends: Sequence[Send | Deliver]
        if buf[at + 1] == GSO_NONE:
            fits = flen <= net.max_fast_frame
        else:
            # A TCP segment is the headers up to the TCP header (csum_start), the TCP
            # header (its data offset: the high nibble of its byte 12) and gso_size
            # bytes; for anything else, the longest a header can be.
            gso_size, csum_start = _GSO_FIELDS.unpack_from(buf, at + 4)
            thl = 60
            if buf[at + 1] & ~GSO_ECN in _GSO_TCP and csum_start + 13 <= flen:
                thl = (buf[HEADROOM + csum_start + 12] >> 2) & 0x3C
            fits = csum_start + thl + gso_size <= net.max_fast_frame
        if fits:
            sends = self._encapsulate(net, buf, flen, peers)
        else:
            sends = self._too_big(port, buf, flen, peers, now)
        if sends and type(sends[-1]) is Send:
            tx = net.tx_counters
            for peer in peers:
                to = tx[peer]
                to.tx_frames += 1
                to.tx_bytes += flen
        return sends

    def _too_big(
        self, port: VmPort, buf: bytearray, flen: int, peers: tuple[str, ...], now: float
    ) -> Sequence[Send | Deliver]:
        """A frame (or a GSO frame's segment) that may not fit: carried if it does,
        else :func:`too_big_action` says what becomes of it."""
        net = port.net
        counters = net.counters
        at = HEADROOM - VNET_HDR_LEN
        flags, gso_type, _h, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(buf, at)
        frame = memoryview(buf)[HEADROOM : HEADROOM + flen]
        try:
            info = parse_frame(frame)
        except MalformedPacket as exc:
            counters[exc.reason.counter] += 1
            return []
        l3 = info.l3_offset
        mtu = min(net.vm_mtu, net.max_frame - l3)
        gso = gso_type != GSO_NONE
        if gso:
            if info.l4_offset < 0 or not info.tcp_header_len:
                counters[DropReason.MALFORMED.counter] += 1
                return []
            ip_len = info.l4_offset - l3 + info.tcp_header_len + gso_size
        else:
            ip_len = flen - l3
        df = info.ip_version == 4 and bool(_U16.unpack_from(frame, l3 + 6)[0] & _DF)
        action = too_big_action(info.ip_version, df, gso, ip_len, mtu)
        if action is TooBig.CARRY:
            return self._encapsulate(net, buf, flen, peers)
        if action is TooBig.RESEGMENT:
            seg = mtu - (info.l4_offset - l3) - info.tcp_header_len
            if seg > 0:
                counters["tx_resegmented"] += 1
                _U16LE.pack_into(buf, at + 4, seg)
                return self._encapsulate(net, buf, flen, peers)
        if not gso and flags & NEEDS_CSUM:
            complete_checksum(frame, csum_start, csum_offset)  # local ports get it whole
        if action is TooBig.FRAGMENT:
            parts = fragment_ipv4(frame, l3, mtu)
            if parts is not None:
                counters["tx_inner_fragments"] += len(parts)
                sends: list[Send | Deliver] = []
                for part in parts:
                    pbuf = bytearray(HEADROOM) + part
                    for send in self._encapsulate(net, pbuf, len(part), peers):
                        sends.append(send._replace(data=bytes(send.data)))
                return sends
        counters[DropReason.TOO_BIG.counter] += 1
        if action is not TooBig.ICMP:
            return []
        reply = icmp.too_big_reply(frame, l3, info.ip_version, mtu)
        if reply is None:
            return []
        if not self.icmp_bucket.take(now):
            counters["icmp_too_big_limited"] += 1
            return []
        counters["icmp_too_big_sent"] += 1
        return [Deliver(port, VNET_HDR_NONE, reply)]

    def _encapsulate(
        self, net: VirtualNetwork, buf: bytearray, flen: int, peers: tuple[str, ...]
    ) -> list[Send]:
        counters = net.counters
        flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(
            buf, HEADROOM - VNET_HDR_LEN
        )
        try:
            if gso_type == GSO_NONE:
                gso_size = 0
                if flags & NEEDS_CSUM:
                    frame = memoryview(buf)[HEADROOM : HEADROOM + flen]
                    complete_checksum(frame, csum_start, csum_offset)
            elif flen > net.max_tunnel_frame:
                return self._split(net, buf, flen, gso_size, csum_start, gso_type, peers)
            elif flen <= net.max_plain_frame:
                # A "GSO" frame of one segment: the receiver hands a frame that fits the
                # MTU to its VM as a plain one, so its checksum must be complete (§6).
                complete_checksum(
                    memoryview(buf)[HEADROOM : HEADROOM + flen], csum_start, csum_offset
                )
                gso_size, gso_type = 0, GSO_NONE
            if flen > net.max_tunnel_frame:
                counters[DropReason.OVERSIZE.counter] += 1
                return []
            vm = VmFrame(buf, flen, gso_size, csum_start, gso_type)
            plain = net.plain_peers
            if not plain:
                sends = net.tunnel.transmit(vm, peers)
            else:  # a mixed VNI: VXLAN to its VXLAN-only peers (the frame is intact)
                alt = net.alt_tunnel
                assert alt is not None
                to_plain = [p for p in peers if p in plain]
                others = [p for p in peers if p not in plain]
                sends = alt.transmit(vm, to_plain) if to_plain else []
                if others:
                    sends += net.tunnel.transmit(vm, others)
        except MalformedPacket as exc:
            counters[exc.reason.counter] += 1
            return []
        except ValueError:  # a virtio header that contradicts the frame
            counters[DropReason.MALFORMED.counter] += 1
            return []
        for send in sends:
            counters["tx_packets"] += send.packets
        return sends

    def _split(
        self,
        net: VirtualNetwork,
        buf: bytearray,
        flen: int,
        gso_size: int,
        csum_start: int,
        gso_type: int,
        peers: tuple[str, ...],
    ) -> list[Send]:
        """A GSO frame longer than the tunnel carries (from an attached port, whose
        sender's ``gso_max_size`` we do not set): cut into GSO frames that fit, at
        segment boundaries, one copy.  Raises MalformedPacket / ValueError."""
        frame = memoryview(buf)[HEADROOM : HEADROOM + flen]
        l3 = parse_frame(frame).l3_offset
        parts = split_gso_frame(frame, gso_size, net.max_tunnel_frame, HEADROOM, l3)
        net.counters["tx_split"] += 1
        sends: list[Send] = []
        for part in parts:
            # Each part is a frame as a VM would hand it over (a one-segment remainder
            # is then completed and sent plain by _encapsulate, as any such frame).
            VNET_HDR.pack_into(
                part,
                HEADROOM - VNET_HDR_LEN,
                NEEDS_CSUM,
                gso_type,
                0,
                gso_size,
                csum_start,
                TCP_CSUM_OFFSET,
            )
            for send in self._encapsulate(net, part, len(part) - HEADROOM, peers):
                # A tunnel may reuse one buffer for every frame: own each part's copy.
                sends.append(send._replace(data=bytes(send.data)))
        return sends

    # -- underlay -> VM ------------------------------------------------------------------

    def count_rx_drop(self, reason: DropReason, packets: int = 1) -> None:
        """Packets the I/O layer received and could not hand over (empty datagram,
        impossible IP header)."""
        self.counters["rx_packets"] += packets
        self.counters[reason.counter] += packets

    def from_udp(
        self, channel: Channel, src: str, data: memoryview, seg_size: int, now: float
    ) -> list[Deliver]:
        """``data`` came from ``src`` on a UDP ``channel``: datagrams of ``seg_size``
        bytes back to back (kernel GRO; the last may be shorter), or one datagram."""
        size = len(data)
        if size == 0 or seg_size <= 0:
            self.count_rx_drop(DropReason.TOO_SHORT)
            return []
        packets = -(-size // seg_size)
        self.counters["rx_packets"] += packets
        if src not in self.peers:
            self.counters[DropReason.NOT_PEER.counter] += packets
            return []
        out: list[Deliver] = []
        if channel is Channel.SCLP:
            for done in self.reassembler.add_coalesced(src, self._local, data, seg_size, now):
                self._sclp_payload(src, done.dport, done.payload, now, out)
            return out
        tunnel = VxlanTunnel if channel is Channel.VXLAN else GeneveTunnel
        for off in range(0, size, seg_size):
            self._decapsulate(tunnel, src, data[off : off + seg_size], now, out)
        return out

    def from_ip(
        self, channel: Channel, src: str, packet: memoryview, now: float, l4_sum: int | None = None
    ) -> list[Deliver]:
        """One IP payload (the SCLP segment, GRE packet or TCP segment after the IP
        header) from ``src`` on a raw ``channel``.  ``l4_sum`` is its folded ones'
        complement sum when the I/O layer took it (a batch's NumPy pass), else None
        and checksums are verified here."""
        out: list[Deliver] = []
        if channel is Channel.STT:
            self._stt_segment(src, packet, now, l4_sum, out)
            return out
        self.counters["rx_packets"] += 1
        if src not in self.peers:
            self.counters[DropReason.NOT_PEER.counter] += 1
            return out
        if channel is Channel.SCLP:
            ok = None if l4_sum is None else l4_sum == 0xFFFF
            done = self.reassembler.add_segment(src, self._local, packet, now, ok)
            if done is not None:
                self._sclp_payload(src, done.dport, done.payload, now, out)
            return out
        self._decapsulate(NvgreTunnel, src, packet, now, out)
        return out

    def from_sclp_batch(
        self,
        srcs: Sequence[Hashable],
        views: list[memoryview],
        starts: list[int],
        ends: list[int],
        l4_sums: list[int] | None,
        now: float,
    ) -> list[Deliver]:
        """A native-mode receive batch: SCLP segment ``i`` is ``views[i][starts[i]:
        ends[i]]`` from peer ``srcs[i]`` (the caller mapped every source to a peer),
        ``l4_sums[i]`` its folded sum (None: verified here).  The same as
        :meth:`from_ip` per segment, without a call chain per segment
        (:meth:`~sclp.engine.reassembler.Reassembler.add_batch`)."""
        self.counters["rx_packets"] += len(starts)
        out: list[Deliver] = []
        done = self.reassembler.add_batch(srcs, self._local, views, starts, ends, l4_sums, now)
        for src, payload in done:
            self._sclp_payload(str(src), payload.dport, payload.payload, now, out)
        return out

    def from_stt_batch(
        self,
        srcs: Sequence[str],
        views: list[memoryview],
        starts: list[int],
        ends: list[int],
        l4_sums: list[int] | None,
        now: float,
    ) -> list[Deliver]:
        """A receive batch of STT's pseudo-TCP segments: segment ``i`` is ``views[i][
        starts[i]:ends[i]]`` from peer ``srcs[i]`` (the caller mapped every source to a
        peer), ``l4_sums[i]`` its folded sum (None: verified here).  The same as
        :meth:`from_ip` per segment, without a call chain per segment
        (:meth:`~sclp.engine.stt.SttReassembler.add_batch`); a segment both malformed
        and with a bad checksum counts as the former here."""
        out: list[Deliver] = []
        packed = self._peer_packed
        try:
            sources = [packed[src] for src in srcs]
        except KeyError:  # not a peer after all: one by one, as from_ip
            for i, src in enumerate(srcs):
                segment = views[i][starts[i] : ends[i]]
                self._stt_segment(src, segment, now, l4_sums[i] if l4_sums else None, out)
            return out
        reasm = self.stt_reassembler
        foreign = reasm.foreign
        done = reasm.add_batch(
            sources, self._local_packed, views, starts, ends, l4_sums, now, skip_foreign=True
        )
        self.counters["rx_packets"] += len(starts) - (reasm.foreign - foreign)
        peer_of = self._peer_of_packed
        for src_packed, frame in done:
            self._decapsulate(SttTunnel, peer_of[src_packed], frame, now, out)
        return out

    def _sclp_payload(
        self, src: str, dport: int, payload: Buffer, now: float, out: list[Deliver]
    ) -> None:
        tunnel = SCLP_TUNNEL_OF_PORT.get(dport)
        if tunnel is None:
            self.counters[DropReason.UNKNOWN_PORT.counter] += 1
            return
        self._decapsulate(tunnel, src, payload, now, out)

    def _decapsulate(
        self, tunnel: type[Tunnel], src: str, payload: Buffer, now: float, out: list[Deliver]
    ) -> None:
        """Take ``payload`` apart as ``tunnel``'s format and deliver its inner frame to
        the VNI's port, if that network runs this format."""
        try:
            vni, inner_offset, mss = tunnel.decapsulate(payload)
        except MalformedPacket as exc:
            self.counters[exc.reason.counter] += 1
            return
        net = self.networks.get(vni)
        if net is None or (
            type(net.tunnel) is not tunnel
            and (net.alt_tunnel is None or type(net.alt_tunnel) is not tunnel)
        ):
            self.counters[DropReason.UNKNOWN_VNI.counter] += 1
            return
        self._deliver_net(net, src, memoryview(payload)[inner_offset:], mss, now, out)

    def _stt_segment(
        self, src: str, segment: memoryview, now: float, l4_sum: int | None, out: list[Deliver]
    ) -> None:
        if len(segment) < 4 or (segment[2] << 8 | segment[3]) != stt.STT_PORT:
            return  # other TCP traffic of this host: not ours to count
        self.counters["rx_packets"] += 1
        src_packed = self._peer_packed.get(src)
        if src_packed is None:
            self.counters[DropReason.NOT_PEER.counter] += 1
            return
        verify = True
        if l4_sum is not None:
            total = l4_sum + pseudo_sum_for(src_packed, self._local_packed, len(segment))
            total = (total & 0xFFFF) + (total >> 16)
            if total != 0xFFFF:
                self.counters[DropReason.BAD_CHECKSUM.counter] += 1
                return
            verify = False
        frame = self.stt_reassembler.add_segment(
            src_packed, self._local_packed, segment, now, verify_checksum=verify
        )
        if frame is not None:
            self._decapsulate(SttTunnel, src, frame, now, out)

    def _deliver_net(
        self,
        net: VirtualNetwork,
        src: str,
        frame: memoryview,
        mss: int,
        now: float,
        out: list[Deliver],
    ) -> None:
        """One decapsulated inner frame for network ``net`` (as a GSO frame when it is
        larger than the VM's MTU), after the peer check and learning: to the port of
        its destination MAC, else to every local port."""
        counters = net.counters
        pc = net.peer_counters.get(src)
        if pc is None:
            counters[DropReason.NOT_PEER.counter] += 1
            return
        flen = len(frame)
        if flen < 14:
            counters[DropReason.TOO_SHORT.counter] += 1
            return
        pc.rx_frames += 1
        pc.rx_bytes += flen
        pc.last_rx = now
        fdb = net.fdb
        fdb.learn(bytes(frame[6:12]), src, now)
        ports = fdb.ports
        if len(ports) > 1:
            ports = fdb.lookup(bytes(frame[:6]), now).ports or ports
        elif not ports:
            counters[DropReason.NO_ROUTE.counter] += 1  # every port of the VNI is gone
            return
        if flen <= net.max_plain_frame:
            vnet = VNET_HDR_NONE
            if net.rx_partial_csum:  # a kernel peer's partial checksum (_PARTIAL_VNET)
                csum = l4_checksum(frame, flen)
                if csum is not None and csum[2] == csum[3]:
                    vnet = _PARTIAL_VNET[csum[0], csum[1]]
            out.extend(Deliver(p, vnet, frame) for p in ports)
            return
        try:
            info = parse_frame(frame)
        except MalformedPacket as exc:
            counters[exc.reason.counter] += 1
            return
        if not info.tcp_header_len:
            out.extend(Deliver(p, VNET_HDR_NONE, frame) for p in ports)
            return
        l4 = info.l4_offset
        if not mss:
            mss = net.vm_mtu - (l4 - info.l3_offset) - info.tcp_header_len
        if mss <= 0:  # headers longer than the VM's MTU (e.g. IPv6 extensions)
            counters[DropReason.MALFORMED.counter] += 1
            return
        if not self._deliver_gso:  # level 2 off (ablation): MSS-sized frames
            try:
                segments = segment_tcp_frame(frame, mss)
            except MalformedPacket as exc:
                counters[exc.reason.counter] += 1
                return
            for p in ports:
                out.extend(Deliver(p, VNET_HDR_NONE, seg) for seg in segments)
            return
        gso = GSO_TCPV4 if info.ip_version == 4 else GSO_TCPV6
        vnet = VNET_HDR.pack(NEEDS_CSUM, gso, l4 + info.tcp_header_len, mss, l4, TCP_CSUM_OFFSET)
        out.extend(Deliver(p, vnet, frame) for p in ports)

    # -- timers and state ----------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Time out incomplete payloads and age FDB entries."""
        self.reassembly.expire(now)
        for net in self.networks.values():
            net.fdb.expire(now)

    def next_deadline(self) -> float | None:
        """The earliest ``now`` at which :meth:`expire` has reassembly work to do
        (FDB aging is lazy and may wait for the runner's periodic tick)."""
        return self.reassembly.next_deadline()

    def stats(self, extra: Mapping[str, int] | None = None) -> DataPathStats:
        """Counters: ``counters`` (every name in :data:`COUNTER_NAMES`, totals over
        the VNIs, the endpoint's own and the reassemblers', plus ``extra``: what the
        I/O around the data path counted), ``vni`` (per VNI, with its ports),
        ``ports`` (frames and bytes per port) and ``peers`` (how many peers each VNI
        has)."""
        totals: Counter[str] = Counter()
        per_vni: dict[str, VniStats] = {}
        for net in self.networks.values():
            totals.update(net.counters)
            per_vni[str(net.vni)] = {
                "protocol": net.protocol,
                "tap": net.network.tap,
                "ports": [p.name for p in net.ports],
                "peers": sorted(net.peers),
                "vm_mtu": net.vm_mtu,
                "fdb_entries": len(net.fdb),
                **sorted_counters(net.counters),
            }
        totals.update(self.counters)
        reasm = (self.reassembler, self.stt_reassembler)
        for r in reasm:
            for reason, count in r.drops.items():
                totals[reason.counter] += count
        base: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        base.update(totals)
        base["reasm_complete"] = sum(r.completed for r in reasm)
        base["reasm_bytes_held"] = sum(r.bytes_held for r in reasm)
        base["reasm_entries"] = sum(r.entries for r in reasm)
        for name, value in (extra or {}).items():
            base[name] = base.get(name, 0) + value
        peers = {str(net.vni): len(net.peers) for net in self.networks.values()}
        ports: dict[str, PortStats] = {
            name: {
                "vni": port.vni,
                "kind": "tap" if port.owned else "attached",
                "tx_frames": port.counters["tx_frames"],
                "tx_bytes": port.counters["tx_bytes"],
                "rx_frames": port.counters["rx_frames"],
                "rx_bytes": port.counters["rx_bytes"],
            }
            for name, port in sorted(self.ports.items())
        }
        return {
            "counters": sorted_counters(base),
            "vni": per_vni,
            "ports": ports,
            "peers": peers,
        }

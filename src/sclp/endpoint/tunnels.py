"""The tunnel types: one class per encapsulation, bound to a network once at start.

A :class:`Tunnel` owns everything that differs between the formats: its header, the
outer bytes it adds (and so the VM MTU that avoids fragmentation), the largest frame
it takes from a VM, how it finds the VNI and the inner frame in a received payload,
and the *transmit shape* — which underlay :class:`Channel` it uses and how one VM
frame becomes packets there:

- VXLAN, Geneve: one inner frame per UDP datagram; a TSO frame is cut into MSS-sized
  TCP frames in software first (what the classic tunnels cost in the paper), and the
  datagrams of one frame lie back to back in one buffer for one UDP GSO send.
- NVGRE: the same inner frames behind GRE headers, back to back for one ``sendmmsg``.
- VXLAN/Geneve over SCLP: header written into the headroom in front of the frame,
  the payload cut into SCLP segments: in the UDP carrier an iovec of the segment
  headers interleaved with views of the frame (one UDP GSO send, no copy), natively
  one buffer of checksummed segments (``sendmmsg`` of raw IP protocol 234).
- STT: the STT frame cut into pseudo-TCP segments, checksummed per peer.

Nothing here does I/O; a :class:`Send` says what to put on which channel for which
peer, and the runner's sender does it.  The data path picks the class from the
:class:`~sclp.endpoint.config.Protocol` enum once per network (:func:`tunnel_for`),
so no protocol name is compared on the per-frame path.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Final, NamedTuple

from sclp.endpoint.config import Protocol
from sclp.engine.segmenter import Pieces, Segmenter
from sclp.engine.stt import SttSegmenter
from sclp.engine.tso import segment_tcp_frame
from sclp.wire import geneve, nvgre, stt, vxlan
from sclp.wire.checksum import Buffer
from sclp.wire.errors import DropReason, MalformedPacket
from sclp.wire.frame import entropy_port, flow_hash, parse_frame
from sclp.wire.sclp import (
    SCLP_HLEN,
    SCLP_PORT_GENEVE,
    SCLP_PORT_VXLAN,
    Carrier,
    segment_payload_size,
)
from sclp.wire.virtio_net import GSO_TCPV4

HEADROOM: Final = 64  # room in front of a VM frame for the biggest tunnel header
# Largest VM frame we take: tunnel header (<= 18 B for STT) + frame <= 65,535 (the SCLP
# payload and the STT frame are both limited to 16-bit lengths).
MAX_VM_FRAME: Final = 65535 - 24
# A UDP GSO send reaches the receiver's GRO whole only below the egress device's
# gso_max_size (sclp.io.udp measures it): 65,536 - Ethernet - IP - UDP - 1, and the
# oldest kernels we run on take 64 segments per send.
_GRO_WHOLE_MAX: Final = {4: 65_536 - 14 - 20 - 8 - 1, 6: 65_536 - 14 - 40 - 8 - 1}
_GSO_MAX_SEGMENTS: Final = 64


class Channel(enum.Enum):
    """An underlay socket the endpoint opens: what a :class:`Send` goes out on and
    what a received packet came in from."""

    VXLAN = "vxlan"  # UDP underlay.vxlan_port (4789 unless configured)
    GENEVE = "geneve"  # UDP underlay.geneve_port (6081 unless configured)
    SCLP = "sclp"  # IP protocol 234, or UDP sclp_udp_port in the carrier mode
    GRE = "gre"  # IP protocol 47
    STT = "stt"  # IP protocol 6 (pseudo-TCP to port 7471)


class Send(NamedTuple):
    """``packets`` packets for ``peer`` on ``channel``, back to back in ``data`` at
    ``stride`` bytes (the last may be shorter; one packet: ``stride == len(data)``).
    ``data`` is one buffer, or :class:`~sclp.engine.segmenter.Pieces` to be sent as
    an iovec (SCLP in the UDP carrier: headers interleaved with views of the VM's
    frame).  ``data`` is valid until the data path is called again."""

    channel: Channel
    peer: str
    data: Buffer | Pieces
    stride: int
    packets: int


class VmFrame(NamedTuple):
    """A frame from a VM at ``buf[HEADROOM : HEADROOM + flen]`` (the headroom may be
    written) with its virtio-net GSO facts: ``gso_size`` 0 for a plain frame (whose
    checksum the data path has completed), else the MSS, ``csum_start`` where the L4
    header starts and ``gso_type`` (GSO_TCPV4, GSO_TCPV6)."""

    buf: bytearray
    flen: int
    gso_size: int
    csum_start: int
    gso_type: int


class Decapsulated(NamedTuple):
    """A received payload taken apart: the VNI, where the inner frame starts, and the
    sender's MSS when the format carries one (Geneve option, STT header), else 0."""

    vni: int
    inner_offset: int
    mss: int = 0


@dataclass(frozen=True, slots=True)
class Underlay:
    """What a tunnel needs to know about the underlay to shape its packets."""

    local: str
    mtu: int
    carrier: Carrier = Carrier.IP

    @property
    def ip_version(self) -> int:
        return ipaddress.ip_address(self.local).version

    @property
    def ip_header_len(self) -> int:
        return 20 if self.ip_version == 4 else 40


# -- decapsulation, per format: the wire modules' receive fast paths, and STT ----------


def stt_decapsulate(view: Buffer) -> Decapsulated:
    hdr = stt.decode(view)
    if hdr.context_id >= 1 << 24:
        raise MalformedPacket(DropReason.UNKNOWN_VNI, f"stt context {hdr.context_id:#x}")
    return Decapsulated(hdr.context_id, stt.STT_HLEN, hdr.mss)


# -- the tunnel types -----------------------------------------------------------------


class Tunnel:
    """One network's encapsulation.  Subclasses set the class attributes and
    implement :meth:`transmit`; :meth:`decapsulate` is the format's parser.

    ``transmit(vm, peers)`` takes a :class:`VmFrame` and returns the packets for every
    peer.  It raises :class:`MalformedPacket` for a frame it cannot carry.
    """

    protocol: ClassVar[Protocol]
    channel: ClassVar[Channel]

    @staticmethod
    def decapsulate(payload: Buffer) -> tuple[int, int, int]:
        """(VNI, offset of the inner frame, the sender's MSS or 0) of a received
        payload; raises MalformedPacket.  A method each format defines (not the wire
        function bound as an attribute), which mypyc compiles."""
        return vxlan.frame_of(payload)

    def __init__(self, vni: int, underlay: Underlay) -> None:
        self.vni = vni
        self.underlay = underlay

    def overhead(self) -> int:
        """Outer bytes added to an inner frame's IP packet: 0 for the segmenting
        tunnels, which never need the VM MTU to shrink."""
        return 0

    def default_vm_mtu(self) -> int:
        return self.underlay.mtu - self.overhead()

    def max_vm_frame(self) -> int:
        """The largest (TSO) frame the VM may hand us (the TAP's gso_max_size)."""
        return MAX_VM_FRAME

    def transmit(self, vm: VmFrame, peers: Sequence[str]) -> list[Send]:
        raise NotImplementedError


class _PerFrameTunnel(Tunnel):
    """VXLAN, Geneve, NVGRE: one inner frame per outer packet."""

    header_len: ClassVar[int]
    l4_len: ClassVar[int]  # UDP header, or 0 for GRE on IP

    def overhead(self) -> int:
        return self.underlay.ip_header_len + self.l4_len + self.header_len + 14

    def _frames(
        self, buf: bytearray, flen: int, gso_size: int
    ) -> list[memoryview] | list[bytearray]:
        frame = memoryview(buf)[HEADROOM : HEADROOM + flen]
        if gso_size:
            return segment_tcp_frame(frame, gso_size)
        return [frame]


class _UdpTunnel(_PerFrameTunnel):
    l4_len = 8

    def __init__(self, vni: int, underlay: Underlay) -> None:
        super().__init__(vni, underlay)
        self.header = self._header()

    def _header(self) -> bytes:
        raise NotImplementedError

    def transmit(self, vm: VmFrame, peers: Sequence[str]) -> list[Send]:
        buf, flen, gso_size, *_ = vm
        frames = self._frames(buf, flen, gso_size)
        hdr = self.header
        count = len(frames)
        stride = len(hdr) + len(frames[0])
        data = hdr + hdr.join(frames) if count > 1 else hdr + frames[0]
        channel = self.channel
        if count == 1 or stride + self.underlay.ip_header_len + 8 <= self.underlay.mtu:
            return [Send(channel, peer, data, stride, count) for peer in peers]
        # Datagrams larger than the path MTU (a VM MTU set above the default) leave
        # one by one, to be fragmented: no GSO for them.
        view = memoryview(data)
        return [
            Send(channel, peer, view[off : off + stride], stride, 1)
            for peer in peers
            for off in range(0, len(view), stride)
        ]


class VxlanTunnel(_UdpTunnel):
    protocol = Protocol.VXLAN
    channel = Channel.VXLAN
    header_len = vxlan.VXLAN_LEN

    @staticmethod
    def decapsulate(payload: Buffer) -> tuple[int, int, int]:
        return vxlan.frame_of(payload)

    def _header(self) -> bytes:
        return vxlan.header(self.vni)


class GeneveTunnel(_UdpTunnel):
    protocol = Protocol.GENEVE
    channel = Channel.GENEVE
    header_len = geneve.GENEVE_BASE_LEN

    @staticmethod
    def decapsulate(payload: Buffer) -> tuple[int, int, int]:
        return geneve.frame_of(payload)

    def _header(self) -> bytes:
        return geneve.header(self.vni)


class NvgreTunnel(_PerFrameTunnel):
    protocol = Protocol.NVGRE
    channel = Channel.GRE
    header_len = nvgre.NVGRE_LEN
    l4_len = 0

    @staticmethod
    def decapsulate(payload: Buffer) -> tuple[int, int, int]:
        return nvgre.frame_of(payload)

    def transmit(self, vm: VmFrame, peers: Sequence[str]) -> list[Send]:
        buf, flen, gso_size, *_ = vm
        frames = self._frames(buf, flen, gso_size)
        hdr = nvgre.header(self.vni, flow_hash(parse_frame(frames[0])))
        count = len(frames)
        stride = len(hdr) + len(frames[0])
        data = hdr + hdr.join(frames) if count > 1 else hdr + frames[0]
        return [Send(Channel.GRE, peer, data, stride, count) for peer in peers]


class _SclpTunnel(Tunnel):
    """An encapsulated frame as one SCLP payload, cut into segments (sclp-spec §3)."""

    channel = Channel.SCLP
    sclp_port: ClassVar[int]

    def __init__(self, vni: int, underlay: Underlay, segmenter: Segmenter) -> None:
        super().__init__(vni, underlay)
        self.segmenter = segmenter
        self.seg_size = segment_payload_size(underlay.mtu, underlay.ip_version, underlay.carrier)
        self.checksum = underlay.carrier is Carrier.IP

    def max_vm_frame(self) -> int:
        """In the UDP carrier, small enough that the whole payload leaves in ONE UDP
        GSO send that arrives as one GRO buffer, so the receiver's whole-payload fast
        path applies instead of a table entry per frame."""
        if self.underlay.carrier is not Carrier.UDP:
            return MAX_VM_FRAME
        stride = self.seg_size + SCLP_HLEN
        segments = min(_GSO_MAX_SEGMENTS, _GRO_WHOLE_MAX[self.underlay.ip_version] // stride)
        return segments * self.seg_size - 24

    def _header(self, gso_size: int) -> bytes:
        raise NotImplementedError

    def transmit(self, vm: VmFrame, peers: Sequence[str]) -> list[Send]:
        buf, flen, gso_size, *_ = vm
        hdr = self._header(gso_size)
        start = HEADROOM - len(hdr)
        buf[start:HEADROOM] = hdr
        view = memoryview(buf)
        sport = entropy_port(flow_hash(parse_frame(view[HEADROOM : HEADROOM + flen])))
        if not self.checksum:  # UDP carrier: headers interleaved with views, no copy
            gathered = self.segmenter.gather_payload(
                buf, start, HEADROOM + flen, sport, self.sclp_port, self.seg_size
            )
            data: Buffer | Pieces = gathered.pieces
            stride, count = gathered.stride, gathered.count
        else:
            batch = self.segmenter.segment_payload(
                view[start : HEADROOM + flen], sport, self.sclp_port, self.seg_size, True
            )
            data, stride, count = batch.buffer, batch.stride, batch.count
        return [Send(Channel.SCLP, peer, data, stride, count) for peer in peers]


class VxlanSclpTunnel(_SclpTunnel):
    protocol = Protocol.VXLAN_SCLP
    sclp_port = SCLP_PORT_VXLAN

    @staticmethod
    def decapsulate(payload: Buffer) -> tuple[int, int, int]:
        return vxlan.frame_of(payload)

    def __init__(self, vni: int, underlay: Underlay, segmenter: Segmenter) -> None:
        super().__init__(vni, underlay, segmenter)
        self._vxlan = vxlan.header(vni)

    def _header(self, gso_size: int) -> bytes:
        return self._vxlan


class GeneveSclpTunnel(_SclpTunnel):
    protocol = Protocol.GENEVE_SCLP
    sclp_port = SCLP_PORT_GENEVE

    @staticmethod
    def decapsulate(payload: Buffer) -> tuple[int, int, int]:
        return geneve.frame_of(payload)

    def _header(self, gso_size: int) -> bytes:
        return geneve.header(self.vni, gso_size)


class SttTunnel(Tunnel):
    """draft-davie-stt: the STT frame (header + inner frame) as pseudo-TCP segments,
    checksummed for each peer's address."""

    protocol = Protocol.STT
    channel = Channel.STT

    @staticmethod
    def decapsulate(payload: Buffer) -> tuple[int, int, int]:
        return stt_decapsulate(payload)

    def __init__(self, vni: int, underlay: Underlay, segmenter: SttSegmenter) -> None:
        super().__init__(vni, underlay)
        self.segmenter = segmenter
        self.mss = underlay.mtu - underlay.ip_header_len - 20
        self._local = ipaddress.ip_address(underlay.local).packed
        self._packed: dict[str, bytes] = {}

    def transmit(self, vm: VmFrame, peers: Sequence[str]) -> list[Send]:
        buf, flen, gso_size, csum_start, gso_type = vm
        sflags = stt.SttFlags.NONE
        l4_offset = 0
        if gso_size:
            sflags |= stt.SttFlags.CSUM_PARTIAL | stt.SttFlags.TCP
            if gso_type == GSO_TCPV4:
                sflags |= stt.SttFlags.IPV4
            l4_offset = csum_start
            if l4_offset > 0xFF:  # STT's L4 Offset is 8 bits (draft-davie-stt §3.1)
                raise MalformedPacket(DropReason.MALFORMED, f"l4 offset {l4_offset} > 255")
        hdr = stt.encode(
            stt.SttHeader(context_id=self.vni, flags=sflags, l4_offset=l4_offset, mss=gso_size)
        )
        start = HEADROOM - stt.STT_HLEN
        buf[start:HEADROOM] = hdr
        view = memoryview(buf)
        sport = entropy_port(flow_hash(parse_frame(view[HEADROOM : HEADROOM + flen])))
        stt_frame = view[start : HEADROOM + flen]
        sends = []
        for peer in peers:
            batch = self.segmenter.segment_frame(
                stt_frame, sport, self.mss, self._local, self._packed_of(peer)
            )
            sends.append(Send(Channel.STT, peer, batch.buffer, batch.stride, batch.count))
        return sends

    def _packed_of(self, peer: str) -> bytes:
        packed = self._packed.get(peer)
        if packed is None:
            packed = self._packed[peer] = ipaddress.ip_address(str(peer)).packed
        return packed


TUNNEL_TYPES: Final[dict[Protocol, type[Tunnel]]] = {
    cls.protocol: cls
    for cls in (
        VxlanTunnel,
        GeneveTunnel,
        NvgreTunnel,
        SttTunnel,
        VxlanSclpTunnel,
        GeneveSclpTunnel,
    )
}
# The SCLP destination port of each SCLP protocol, and back: the tunnel type a port
# carries (sclp-spec §2).  Numbers in the SCLP header that name the format, not UDP
# ports, so underlay.vxlan_port and underlay.geneve_port never change them.
SCLP_PORT_OF: Final[dict[Protocol, int]] = {
    Protocol.VXLAN_SCLP: SCLP_PORT_VXLAN,
    Protocol.GENEVE_SCLP: SCLP_PORT_GENEVE,
}
SCLP_TUNNEL_OF_PORT: Final[dict[int, type[Tunnel]]] = {
    SCLP_PORT_VXLAN: VxlanSclpTunnel,
    SCLP_PORT_GENEVE: GeneveSclpTunnel,
}


def tunnel_for(
    protocol: Protocol,
    vni: int,
    underlay: Underlay,
    segmenter: Segmenter,
    stt_segmenter: SttSegmenter,
) -> Tunnel:
    """The tunnel type of ``protocol``, bound to one network."""
    cls = TUNNEL_TYPES[protocol]
    if issubclass(cls, _SclpTunnel):
        return cls(vni, underlay, segmenter)
    if cls is SttTunnel:
        return SttTunnel(vni, underlay, stt_segmenter)
    return cls(vni, underlay)


def largest_vm_mtu(protocol: Protocol, underlay: Underlay) -> int | None:
    """The largest VM MTU ``protocol`` carries over ``underlay`` without fragmenting
    its outer packets (its default VM MTU), or ``None`` when every VM MTU is carried
    whole (SCLP and STT segment large frames themselves)."""
    cls = TUNNEL_TYPES[protocol]
    if not issubclass(cls, _PerFrameTunnel):
        return None
    return cls(1, underlay).default_vm_mtu()


def decapsulate(protocol: Protocol | str, payload: Buffer) -> Decapsulated:
    """Find the VNI and inner frame of a payload of ``protocol``'s tunnel format.
    Raises :class:`MalformedPacket` (BAD_TUNNEL_HEADER, TOO_SHORT, ...)."""
    return Decapsulated(*TUNNEL_TYPES[Protocol(protocol)].decapsulate(payload))

"""An ``AF_PACKET`` transmit ring for the native raw-IP tunnels (SCLP, IP protocol 234,
and STT's pseudo-TCP): a payload's segments leave with Ethernet and IPv4 headers that
NumPy writes into mmapped ring frames, and one ``send`` hands them all to the driver.

Why: :meth:`sclp.io.rawip.RawIpSocket.send_strided` makes the kernel walk its whole IP
output path (route lookup, netfilter, neighbour, qdisc) for each of a payload's ~45
segments; ``perf`` put ~48 % of the sending endpoint's time there.  Here the next hop is
resolved once per destination (:mod:`sclp.io.nexthop`), the headers of a batch differ
only in total length, ID and checksum (three NumPy columns, :func:`fill_ipv4_headers`),
and ``PACKET_QDISC_BYPASS`` calls the driver's xmit directly.

What the sending host then skips, on purpose: its output netfilter hooks (the
endpoint's own rules are input and ingress ones; the STT RST guard matches RSTs of the
kernel's TCP, which still go the normal way), its qdisc, and (with the bypass) the
packet taps of the sending device: ``tcpdump`` on the sender does not see these
packets, capture on the receiver.  Nothing is fragmented: a segment over the MTU
raises EMSGSIZE, as the raw socket (DF) does.

The ring (TPACKET_V2, ``tpacket_snd`` in ``net/packet/af_packet.c``): fixed-size
frames; a frame starts with ``struct tpacket2_hdr`` (``tp_status``, ``tp_len``, ...) and
its packet starts ``TPACKET2_HDRLEN - sizeof(struct sockaddr_ll)`` = 32 bytes in.  We
fill frames in ring order and set them TP_STATUS_SEND_REQUEST; ``send`` makes the
kernel walk from its own head over the consecutive SEND_REQUEST frames; a frame
returns to TP_STATUS_AVAILABLE when its skb is freed (on a veth at once: the pages are
copied on the way into the peer's namespace).  Both sides walk in order, so the free
frames are the AVAILABLE ones from our head on.  ``PACKET_LOSS`` makes the kernel skip
a malformed frame instead of stopping at it (TP_STATUS_WRONG_FORMAT, which would wedge
the ring); such a frame is still counted.  When ``send`` could not take everything
(EAGAIN: send buffer; ENOBUFS: the driver refused) the rest stays SEND_REQUEST and goes
with the next ``send`` or :meth:`PacketTxRing.kick`.  The status words are written
after the frames' data by a separate NumPy assignment: stores are ordered on x86-64.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import socket
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, Self

import numpy as np
import numpy.typing as npt

from sclp.io._sockopt import closed_on_error, set_socket_buffers
from sclp.io.linux import (
    ARPHRD_ETHER,
    ETH_P_IP,
    MSG_DONTWAIT,
    PACKET_LOSS,
    PACKET_QDISC_BYPASS,
    PACKET_TX_RING,
    PACKET_VERSION,
    SOCKADDR_LL_LEN,
    SOL_PACKET,
    TP_STATUS_SEND_REQUEST,
    TP_STATUS_WRONG_FORMAT,
    TPACKET2_HDRLEN,
    TPACKET_V2,
)
from sclp.io.netns import NetNS, run_in_netns
from sclp.io.nexthop import NextHopCache
from sclp.io.rawip import RawIpSocket
from sclp.wire.checksum import Buffer

__all__ = [
    "ETH_IP_HLEN",
    "HeaderTemplate",
    "PacketTxRing",
    "TxPath",
    "TxRingSender",
    "choose_path",
    "fill_ipv4_headers",
]

ETH_IP_HLEN: Final = 34  # Ethernet (14) + IPv4 without options (20)
FRAME_DATA: Final = TPACKET2_HDRLEN - SOCKADDR_LL_LEN  # where a frame's packet starts: 32
DEFAULT_FRAMES: Final = 2048  # ~45 payloads of 45 segments in flight
_BLOCK: Final = 1 << 16  # ring block size: a multiple of the page and of every frame size
_BUSY: Final = 0x7  # SEND_REQUEST | SENDING | WRONG_FORMAT: not ours to fill
# Offsets in the Ethernet + IPv4 header of the fields that differ per packet.
_TOTAL_LEN: Final = 16
_IDENT: Final = 18
_CHECKSUM: Final = 24
_IPV4: Final = struct.Struct("!BBHHHBBH4s4s")


# -- the headers (pure) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeaderTemplate:
    """The Ethernet + IPv4 header of every packet to one destination with total
    length, ID and checksum zero (``header``, 34 bytes), and the sum of its ten IPv4
    header words, not folded (``word_sum``)."""

    header: npt.NDArray[np.uint8]
    word_sum: int

    @classmethod
    def build(
        cls, src_mac: bytes, dst_mac: bytes, src: str, dst: str, protocol: int, ttl: int = 64
    ) -> HeaderTemplate:
        """IPv4 ``src`` to ``dst``, version 4, IHL 5, DF, ``ttl``, ``protocol``."""
        ip = _IPV4.pack(
            0x45, 0, 0, 0, 0x4000, ttl, protocol, 0, socket.inet_aton(src), socket.inet_aton(dst)
        )
        header = np.frombuffer(dst_mac + src_mac + ETH_P_IP.to_bytes(2, "big") + ip, np.uint8)
        word_sum = int(np.frombuffer(ip, dtype=">u2").sum(dtype=np.uint32))
        return cls(header.copy(), word_sum)


def fill_ipv4_headers(
    rows: npt.NDArray[np.uint8],
    template: HeaderTemplate,
    lengths: npt.NDArray[np.integer[Any]],
    first_id: int,
) -> None:
    """Write the Ethernet + IPv4 header of ``len(rows)`` packets into ``rows[:, :34]``:
    ``template`` with total length ``20 + lengths[i]``, ID ``first_id + i`` (mod 2**16)
    and the header checksum (RFC 791 §3.1, RFC 1071), all as NumPy columns."""
    n = len(rows)
    rows[:, :ETH_IP_HLEN] = template.header
    total = lengths.astype(np.uint32) + 20
    ident = (np.arange(first_id, first_id + n, dtype=np.uint32)) & 0xFFFF
    s = template.word_sum + total + ident
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    for off, column in ((_TOTAL_LEN, total), (_IDENT, ident), (_CHECKSUM, ~s & 0xFFFF)):
        rows[:, off] = column >> 8
        rows[:, off + 1] = column & 0xFF


# -- the ring ----------------------------------------------------------------------------


def _frame_size(mtu: int) -> int:
    """The smallest power of two (at least 2048) that holds a frame header and an
    Ethernet packet of ``mtu``: frames then tile the ring's blocks exactly."""
    size = 2048
    while size < FRAME_DATA + 14 + mtu:
        size *= 2
    return size


class PacketTxRing:
    """A TPACKET_V2 transmit ring on one Ethernet device.

    :attr:`mac` and :attr:`mtu` are the device's (read at open), :attr:`ifindex` its
    index.  Counters: :attr:`deferred` (sends that left frames queued: EAGAIN/ENOBUFS),
    :attr:`wrong_format` (frames the kernel refused).  Not thread-safe.
    """

    def __init__(
        self, sock: socket.socket, ifname: str, ifindex: int, mac: bytes, mtu: int, frames: int
    ) -> None:
        self.sock = sock
        self.ifname = ifname
        self.ifindex = ifindex
        self.mac = mac
        self.mtu = mtu
        self.frame_size = _frame_size(mtu)
        self.frames = frames
        self.deferred = 0
        self.wrong_format = 0
        self._head = 0
        self._ident = 0
        self._pending = False
        size = frames * self.frame_size
        self._map = mmap.mmap(
            sock.fileno(), size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
        )
        self._rows: npt.NDArray[np.uint8] | None = np.frombuffer(self._map, np.uint8).reshape(
            frames, self.frame_size
        )
        words = self._rows.view(np.uint32)
        self._status = words[:, 0]  # tp_status
        self._len = words[:, 1]  # tp_len

    @classmethod
    def open(
        cls,
        ifname: str,
        *,
        netns: str | None = None,
        frames: int = DEFAULT_FRAMES,
        qdisc_bypass: bool = True,
    ) -> Self:
        """A ring of ``frames`` frames (rounded up to whole 64 KiB blocks) on Ethernet
        device ``ifname`` of namespace ``netns``.  The socket has protocol 0: it
        receives nothing.  Raises OSError (the kernel's errno; ENODEV: no such device),
        ValueError for a device that is not Ethernet."""
        with NetNS(netns) as ns:
            info = ns.link_info(ifname)
        frame_size = _frame_size(info.mtu)
        per_block = max(1, _BLOCK // frame_size)
        block = per_block * frame_size
        blocks = -(-frames // per_block)
        frames = blocks * per_block
        with run_in_netns(netns):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        with closed_on_error(sock):
            sock.setblocking(False)
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
            sock.setsockopt(SOL_PACKET, PACKET_LOSS, 1)
            if qdisc_bypass:
                sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            # sk_wmem_alloc counts the bytes of every frame in flight: room for all.
            set_socket_buffers(sock, 2 * frames * frame_size)
            sock.setsockopt(
                SOL_PACKET, PACKET_TX_RING, struct.pack("IIII", block, blocks, frame_size, frames)
            )
            sock.bind((ifname, 0))
            hatype, mac = sock.getsockname()[3:5]
            if hatype != ARPHRD_ETHER or len(mac) != 6:
                raise ValueError(f"{ifname} is not an Ethernet device (ARPHRD {hatype})")
            return cls(sock, ifname, info.index, bytes(mac), info.mtu, frames)

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def max_payload(self) -> int:
        """The largest IP packet a frame holds (the device MTU at open)."""
        return min(self.mtu, self.frame_size - FRAME_DATA - 14)

    def free_frames(self, want: int) -> int:
        """How many frames from the head on (at most ``want``) are free to fill."""
        status = self._status
        want = min(want, self.frames)
        head, end = self._head, self._head + want
        if end <= self.frames:
            window = status[head:end]
        else:
            window = np.concatenate((status[head:], status[: end - self.frames]))
        busy = np.flatnonzero(window & _BUSY)
        if not busy.size:
            return want
        first = int(busy[0])
        if window[first] & TP_STATUS_WRONG_FORMAT:  # only without PACKET_LOSS's effect
            self.wrong_format += 1
        return first

    def send_strided(self, buf: Buffer, stride: int, template: HeaderTemplate) -> int:
        """Queue the packets lying back to back in ``buf`` at ``stride`` bytes (the last
        may be shorter), each behind ``template``'s headers, and flush them with one
        ``send``.  Returns how many were queued: fewer than ``ceil(len(buf) / stride)``
        when the ring has too few free frames (the rest is not sent).  Raises
        OSError(EMSGSIZE) for a packet over :attr:`max_payload` (nothing is sent),
        ValueError for ``stride <= 0``, OSError for a ``send`` error other than
        EAGAIN/ENOBUFS (the packets stay queued for the next send)."""
        total = len(buf)
        if total == 0:
            return 0
        if stride <= 0:
            raise ValueError(f"stride {stride} must be positive")
        if min(stride, total) + 20 > self.max_payload:
            raise OSError(errno.EMSGSIZE, "Message too long")
        count = -(-total // stride)
        n = self.free_frames(count)
        if n:
            data = np.frombuffer(buf, np.uint8)
            head = self._head
            first = min(n, self.frames - head)
            self._fill(head, 0, first, data, stride, count, template)
            if first < n:
                self._fill(0, first, n - first, data, stride, count, template)
            self._ident = (self._ident + n) & 0xFFFF
            self._head = (head + n) % self.frames
        if n or self._pending:
            self._flush()
        return n

    def _fill(
        self,
        frame: int,
        seg: int,
        k: int,
        data: npt.NDArray[np.uint8],
        stride: int,
        count: int,
        template: HeaderTemplate,
    ) -> None:
        """Frames ``frame..frame+k`` get segments ``seg..seg+k`` and SEND_REQUEST."""
        assert self._rows is not None
        rows = self._rows[frame : frame + k]
        lengths = np.full(k, stride, dtype=np.uint32)
        short = seg + k == count and len(data) % stride
        if short:
            lengths[-1] = len(data) % stride
        whole = k - 1 if short else k
        start = FRAME_DATA + ETH_IP_HLEN
        if whole:
            rows[:whole, start : start + stride] = data[
                seg * stride : (seg + whole) * stride
            ].reshape(whole, stride)
        if short:
            rows[k - 1, start : start + lengths[-1]] = data[(count - 1) * stride :]
        fill_ipv4_headers(rows[:, FRAME_DATA:], template, lengths, self._ident + seg)
        self._len[frame : frame + k] = lengths + ETH_IP_HLEN
        self._status[frame : frame + k] = TP_STATUS_SEND_REQUEST

    def _flush(self) -> None:
        try:
            self.sock.send(b"", MSG_DONTWAIT)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ENOBUFS):
                self._pending = True
                raise
            self.deferred += 1
            self._pending = True
            return
        self._pending = False

    def kick(self) -> None:
        """Send what an earlier ``send`` left queued (call it now and then)."""
        if self._pending:
            with contextlib.suppress(OSError):  # raised by the next send_strided instead
                self._flush()

    def close(self) -> None:
        self._rows = None
        del self._status, self._len
        self._map.close()
        self.sock.close()


# -- picking the path --------------------------------------------------------------------


class TxPath(Enum):
    """Which way :class:`TxRingSender` sends a batch, and why."""

    RING = "ring"
    # One packet (an ACK, a small frame): the raw socket's one system call costs less
    # than the ring's NumPy set-up (measured: ~30 % of a sender's time under 1,400-byte
    # UDP, against ~9 % for the socket).
    ONE = "one packet"
    IPV6 = "ipv6"  # the ring writes IPv4 headers only
    NO_NEIGHBOUR = "no usable neighbour entry"  # the kernel's path resolves it
    OTHER_DEVICE = "route leaves by a device without a ring"
    CONFIRM = "stale neighbour: one batch the kernel's way to re-confirm it"
    TOO_BIG = "segment larger than a ring frame"  # the device's MTU grew


def choose_path(dst: str, ifindex: int | None, stale: bool, fits: bool) -> TxPath:
    """The path of a batch to ``dst`` whose next hop is on ring ``ifindex`` (None: no
    usable next hop, or no ring on its device)."""
    if ":" in dst:
        return TxPath.IPV6
    if ifindex is None:
        return TxPath.NO_NEIGHBOUR
    if ifindex < 0:
        return TxPath.OTHER_DEVICE
    if stale:
        return TxPath.CONFIRM
    if not fits:
        return TxPath.TOO_BIG
    return TxPath.RING


@dataclass(slots=True)
class _Route:
    ring: PacketTxRing
    template: HeaderTemplate
    mtu: int
    expires: float


class TxRingSender:
    """Sends a raw socket's strided batches through :class:`PacketTxRing`\\ s where it
    can and through the raw socket otherwise, per destination (:func:`choose_path`).

    Same contract as :meth:`sclp.io.rawip.RawIpSocket.send_strided`.  Time comes from
    :meth:`tick` (the caller's clock, every ~0.1 s): a destination's next hop is asked
    again :data:`sclp.io.nexthop.CACHE_TTL` seconds after it was resolved.
    :attr:`paths` counts batches per :class:`TxPath`.  Owns the rings and the netlink
    socket (:meth:`close`), not the raw socket.
    """

    def __init__(
        self,
        raw: RawIpSocket,
        rings: Iterable[PacketTxRing],
        source: str,
        protocol: int,
        ipr: Any,
    ) -> None:
        self.raw = raw
        self.rings = {ring.ifindex: ring for ring in rings}
        self.source = source
        self.protocol = protocol
        self.ipr = ipr
        self.next_hops = NextHopCache(ipr)
        self.paths: Counter[TxPath] = Counter()
        self._routes: dict[str, _Route] = {}
        self._confirmed: dict[str, float] = {}  # dst: no CONFIRM batch before then
        self._now = 0.0

    @property
    def sock(self) -> socket.socket:
        return self.raw.sock

    def tick(self, now: float) -> None:
        """Advance the clock; flush what a ring left queued."""
        self._now = now
        for ring in self.rings.values():
            ring.kick()

    def send_strided(self, buf: Buffer, stride: int, dst: str) -> int:
        if 0 < len(buf) <= stride:
            self.paths[TxPath.ONE] += 1
            return 1 if self.raw.send_to(buf, dst) else 0
        route = self._routes.get(dst)
        if route is None or self._now >= route.expires:
            route = self._route(dst)
            if route is None:
                return self.raw.send_strided(buf, stride, dst)
        if min(stride, len(buf)) + 20 > route.mtu:
            raise OSError(errno.EMSGSIZE, "Message too long")
        self.paths[TxPath.RING] += 1
        return route.ring.send_strided(buf, stride, route.template)

    def _route(self, dst: str) -> _Route | None:
        """Resolve ``dst``; None (and the path counted) when the ring cannot take it
        now: the caller then sends this batch through the raw socket."""
        self._routes.pop(dst, None)
        hop = None if ":" in dst else self.next_hops.get(dst, self._now)
        ring = self.rings.get(hop.ifindex) if hop is not None else None
        ifindex = None if hop is None else (ring.ifindex if ring is not None else -1)
        mtu = ring.mtu if ring is not None else 0
        if hop is not None and hop.mtu:
            mtu = min(mtu, hop.mtu)
        fits = ring is not None and mtu <= ring.max_payload
        stale = hop is not None and hop.stale and self._confirmed.get(dst, -1.0) <= self._now
        path = choose_path(dst, ifindex, stale, fits)
        if path is not TxPath.RING:
            self.paths[path] += 1
            if path is TxPath.CONFIRM:  # once per TTL; the next batch asks netlink again
                self.next_hops.forget(dst)
                if len(self._confirmed) >= 4096:
                    self._confirmed.clear()
                self._confirmed[dst] = self._now + self.next_hops.ttl
            return None
        assert hop is not None and ring is not None
        template = HeaderTemplate.build(ring.mac, hop.mac, self.source, dst, self.protocol)
        if len(self._routes) >= 4096:
            self._routes.clear()
        route = self._routes[dst] = _Route(ring, template, mtu, self._now + self.next_hops.ttl)
        return route

    def close(self) -> None:
        for ring in self.rings.values():
            ring.close()
        self.rings.clear()
        self.ipr.close()

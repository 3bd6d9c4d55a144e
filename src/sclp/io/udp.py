"""Underlay UDP socket with segmentation offload (``UDP_SEGMENT``) and receive
coalescing (``UDP_GRO``), batch-first.

Why: SCLP in carrier mode and the classic UDP tunnels move many MTU-sized datagrams
per frame; Python cannot afford one system call per datagram.  ``UDP_SEGMENT``
(Linux >= 4.18, ``udp(7)``) lets one ``sendmsg`` carry a buffer that the kernel cuts
into ``gso_size``-byte datagrams; ``UDP_GRO`` (Linux >= 5.0) hands the receiver
consecutive datagrams of one flow as one buffer plus a ``UDP_GRO`` control message
giving the segment size.  Receives go through ``recvmmsg`` (see :mod:`sclp.io._mmsg`
for the measurements behind that choice); sends loop over ``sendmsg``.

Kernel limits verified on Linux 6.18 (see ``tests/io/test_udp.py``):

- at most :data:`UDP_MAX_SEGMENTS` = 128 segments per GSO send (129 gives EINVAL;
  kernels before ~6.11 allow 64, and :meth:`UdpSocket.send_gso` steps down to 64 by
  itself when the kernel says EINVAL);
- the whole buffer is one UDP datagram as far as ``sendmsg`` is concerned: at most
  65,507 bytes over IPv4 (65,535 - 20 - 8; more gives EMSGSIZE), 65,527 over IPv6;
- a buffer arrives *coalesced* only if the GSO packet stays below the egress device's
  ``gso_max_size`` (65,536 on lo and veth) counting the Ethernet header: UDP payloads
  up to :data:`GSO_COALESCED_MAX_V4` = 65,493 bytes over IPv4 (65,536 - 14 - 20 - 8 - 1).
  Larger ones are segmented in software on the sender and arrive one datagram per
  segment — still correct, just slower — so :meth:`UdpSocket.send_gso` keeps each
  call at or below that size;
- each segment plus headers must fit the path MTU, else EMSGSIZE;
- GSO is refused with EINVAL when ``SO_NO_CHECK`` disabled UDP checksums and with EIO
  over IPsec; transmit checksum offload off on the device is *not* a problem any more
  (the kernel checksums in software);
- over loopback and veth, a GSO send reaches a ``UDP_GRO`` socket as one buffer with
  no ethtool change (the GSO packet crosses unsegmented); a socket without
  ``UDP_GRO`` gets the segments one by one.

Errors: the socket sets ``IP_RECVERR`` (:mod:`sclp.io.errqueue`), so ENOBUFS (no
neighbour entry could be made) fails the send instead of being counted only in
``Udp: SndbufErrors``, and ICMP errors wait in the error queue
(:meth:`UdpSocket.read_errors`); the pending error one leaves fails the next
``sendmsg`` once (the caller reads the queue and sends again) and the next
``recvmmsg`` once (:meth:`UdpSocket.recv_batch` receives again).
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Sequence
from typing import Final, NamedTuple, Self

from sclp.io._mmsg import Address, MmsgReceiver
from sclp.io._sockopt import (
    DEFAULT_SOCKET_BUFFER,
    SocketAdapter,
    closed_on_error,
    family_of,
    report_errors,
    send_one,
    set_pmtu_discover,
    set_socket_buffers,
)
from sclp.io.linux import MSG_TRUNC, SOL_UDP, UDP_GRO, UDP_SEGMENT
from sclp.io.netns import run_in_netns
from sclp.wire.checksum import Buffer

__all__ = [
    "DEFAULT_SOCKET_BUFFER",
    "GSO_COALESCED_MAX_V4",
    "GSO_COALESCED_MAX_V6",
    "SOL_UDP",
    "UDP_GRO",
    "UDP_MAX_PAYLOAD_V4",
    "UDP_MAX_PAYLOAD_V6",
    "UDP_MAX_SEGMENTS",
    "UDP_SEGMENT",
    "UdpBatch",
    "UdpSocket",
]

UDP_MAX_SEGMENTS: Final = 128
UDP_MAX_SEGMENTS_OLD: Final = 64
UDP_MAX_PAYLOAD_V4: Final = 65_535 - 20 - 8
UDP_MAX_PAYLOAD_V6: Final = 65_535 - 8
_GSO_MAX_SIZE: Final = 65_536  # default gso_max_size of lo, veth and most NICs
GSO_COALESCED_MAX_V4: Final = _GSO_MAX_SIZE - 14 - 20 - 8 - 1
GSO_COALESCED_MAX_V6: Final = _GSO_MAX_SIZE - 14 - 40 - 8 - 1

_IOV_MAX: Final = 1024  # UIO_MAXIOV: the most pieces one sendmsg takes
RECV_BUFFER_LEN: Final = 65_536  # holds any datagram and any GRO-coalesced buffer
_CMSG_SPACE_INT: Final = 24  # CMSG_SPACE(sizeof(int)) on LP64
_CMSG = struct.Struct("=Qiii")  # cmsg_len, cmsg_level, cmsg_type, int data


class UdpBatch(NamedTuple):
    """What :meth:`UdpSocket.recv_batch` returns: four parallel lists.

    ``views[i]`` is ``sizes[i]`` bytes from ``sources[i]``; it holds consecutive
    datagrams of ``gso_sizes[i]`` bytes each (the last may be shorter).  A datagram
    that was not coalesced has ``gso_sizes[i] == sizes[i]``; so an empty datagram is
    reported with size 0 and gso_size 0 (the caller counts it; never divide by it).
    The views point into the socket's receive slab and are overwritten by the next
    ``recv_batch``.
    """

    views: list[memoryview]
    sizes: list[int]
    sources: list[Address]
    gso_sizes: list[int]


class UdpSocket(SocketAdapter):
    """A non-blocking UDP socket for the tunnel underlay.

    Counters: :attr:`truncated` (datagrams dropped because a receive slot was too
    small), :attr:`gso_fallbacks` (times the kernel refused GSO and the socket went
    over to one ``sendmsg`` per datagram; :attr:`gso_ok` is then False).
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        gro: bool = True,
        batch: int = 64,
        buffer_size: int = RECV_BUFFER_LEN,
        socket_buffer: int = DEFAULT_SOCKET_BUFFER,
        pmtu_discover: bool | None = None,
    ) -> None:
        if sock.type != socket.SOCK_DGRAM:
            raise ValueError("UdpSocket needs a SOCK_DGRAM socket")
        self.sock = sock
        sock.setblocking(False)
        self.family = sock.family
        set_socket_buffers(sock, socket_buffer)
        report_errors(sock)
        if pmtu_discover is not None:
            set_pmtu_discover(sock, pmtu_discover)
        self.gro = False
        if gro:
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
            self.gro = True
        self._rx = MmsgReceiver(batch, buffer_size, _CMSG_SPACE_INT if gro else 0)
        self.max_segments = UDP_MAX_SEGMENTS
        self.gso_ok = True
        if self.family == socket.AF_INET6:
            self.max_gso_bytes = GSO_COALESCED_MAX_V6
        else:
            self.max_gso_bytes = GSO_COALESCED_MAX_V4
        self._gso_cmsg: dict[int, list[tuple[int, int, bytes]]] = {}
        self.truncated = 0
        self.gso_fallbacks = 0

    @classmethod
    def bind(
        cls,
        addr: str,
        port: int,
        *,
        netns: str | None = None,
        gro: bool = True,
        reuse_port: bool = False,
        batch: int = 64,
        buffer_size: int = RECV_BUFFER_LEN,
        socket_buffer: int = DEFAULT_SOCKET_BUFFER,
        pmtu_discover: bool | None = None,
    ) -> Self:
        """A socket bound to ``(addr, port)`` (IPv6 if ``addr`` contains ':'), created
        in namespace ``netns`` (None: the calling thread's), with SO_REUSEPORT if asked
        (one socket per worker).  ``batch`` receive slots of ``buffer_size`` bytes are
        preallocated.  Port 0 picks a free port (see :attr:`local_address`).

        ``pmtu_discover``: True sets DF on every datagram and makes one larger than the
        path MTU fail with EMSGSIZE (``IP_PMTUDISC_DO``; SCLP segments itself), False
        lets the kernel fragment (``IP_PMTUDISC_DONT``; classic tunnels with a 1500-byte
        inner MTU), None keeps the system default.  The IPv6 options on IPv6.

        No SO_REUSEADDR: on UDP it would let a second program bind the same port
        silently and take its traffic.  Binding fails with OSError carrying the
        kernel's errno: EADDRINUSE (port taken), EADDRNOTAVAIL (not a local address).
        """
        with run_in_netns(netns):
            sock = socket.socket(family_of(addr), socket.SOCK_DGRAM)
        with closed_on_error(sock):
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((addr, port))
            return cls(
                sock,
                gro=gro,
                batch=batch,
                buffer_size=buffer_size,
                socket_buffer=socket_buffer,
                pmtu_discover=pmtu_discover,
            )

    # -- plumbing ----------------------------------------------------------------------

    @property
    def local_address(self) -> Address:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    # -- receiving ---------------------------------------------------------------------

    def recv_batch(self, max_msgs: int | None = None) -> UdpBatch:
        """Receive up to ``max_msgs`` (default: the ``batch`` size) datagrams or
        GRO-coalesced buffers with one ``recvmmsg``.  Empty lists when nothing is
        waiting.  Fewer than requested means the socket queue is now empty."""
        rx = self._rx
        n = rx.receive(self.sock.fileno(), rx.count if max_msgs is None else max_msgs)
        views: list[memoryview] = []
        sizes: list[int] = []
        sources: list[Address] = []
        gso_sizes: list[int] = []
        gro = self.gro
        controls = rx.controls
        for i in range(n):
            if rx.flags(i) & MSG_TRUNC:
                self.truncated += 1
                continue
            size = rx.size(i)
            seg = size
            if gro and rx.control_len(i) >= 20:
                _, level, kind, value = _CMSG.unpack_from(controls, i * _CMSG_SPACE_INT)
                if level == SOL_UDP and kind == UDP_GRO and value > 0:
                    seg = value
            views.append(rx.views[i][:size])
            sizes.append(size)
            sources.append(rx.source(i))
            gso_sizes.append(seg)
        return UdpBatch(views, sizes, sources, gso_sizes)

    # -- sending -----------------------------------------------------------------------

    def send_to(self, data: Buffer | Sequence[Buffer], dst: Address) -> int:
        """One datagram (given whole or as pieces); returns bytes sent, 0 if the
        socket buffer is full.  Raises OSError (EMSGSIZE: too big with DF)."""
        return send_one(self.sock, data, dst)

    def send_batch(self, msgs: Sequence[tuple[Sequence[Buffer], Address]]) -> int:
        """Send each ``(pieces, destination)`` as one datagram; returns how many were
        sent, stopping early only when the socket buffer is full.  A loop over
        ``sendmsg``: measured faster than ``sendmmsg`` through ctypes (see
        :mod:`sclp.io._mmsg`)."""
        sendmsg = self.sock.sendmsg
        sent = 0
        try:
            for parts, dst in msgs:
                sendmsg(parts, (), 0, dst)
                sent += 1
        except BlockingIOError:
            pass
        return sent

    def _segment_cmsg(self, gso_size: int) -> list[tuple[int, int, bytes]]:
        cmsg = self._gso_cmsg.get(gso_size)
        if cmsg is None:
            cmsg = self._gso_cmsg[gso_size] = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", gso_size))]
        return cmsg

    def send_gso(self, buf: Buffer, gso_size: int, dst: Address) -> int:
        """Send ``buf`` as consecutive datagrams of ``gso_size`` bytes (the last may be
        shorter) to ``dst`` with as few ``sendmsg`` calls as the kernel limits allow
        (each call at most :attr:`max_segments` segments and :attr:`max_gso_bytes`
        bytes, so the receiver's GRO gets it whole).

        Returns the number of datagrams sent; fewer than ``ceil(len/gso_size)`` only
        if the socket buffer filled up (the rest was not sent).  If the kernel refuses
        GSO for this socket or route (EIO: IPsec or UDP-Lite; EINVAL: checksums
        disabled with ``SO_NO_CHECK``), falls back to one ``sendmsg`` per datagram
        from then on.  Raises OSError(EMSGSIZE) when a segment does not fit
        the path MTU, ValueError for a ``gso_size`` out of range.
        """
        if not 0 < gso_size <= 0xFFFF:
            raise ValueError(f"gso_size {gso_size} out of range")
        view = memoryview(buf)
        total = len(view)
        if total <= gso_size:
            try:
                self.sock.sendmsg((view,), (), 0, dst)
            except BlockingIOError:
                return 0
            return 1
        sent = 0
        offset = 0
        while offset < total:
            if not self.gso_ok:
                return sent + self._send_segments(view[offset:], gso_size, dst)
            per_call = min(self.max_segments, max(1, self.max_gso_bytes // gso_size)) * gso_size
            chunk = view[offset : offset + per_call]
            try:
                self.sock.sendmsg((chunk,), self._segment_cmsg(gso_size), 0, dst)
            except BlockingIOError:
                return sent
            except OSError as exc:
                segments = -(-len(chunk) // gso_size)
                if exc.errno == errno.EINVAL and segments > UDP_MAX_SEGMENTS_OLD:
                    self.max_segments = UDP_MAX_SEGMENTS_OLD  # an older kernel's limit
                    continue
                if exc.errno in (errno.EIO, errno.EINVAL):
                    self.gso_ok = False
                    self.gso_fallbacks += 1
                    continue
                raise
            sent += -(-len(chunk) // gso_size)
            offset += len(chunk)
        return sent

    def send_gso_pieces(
        self, pieces: Sequence[Buffer], nbytes: int, gso_size: int, dst: Address
    ) -> int:
        """:meth:`send_gso` of the concatenation of ``pieces`` (``nbytes`` bytes in all),
        given as an iovec: one ``sendmsg`` takes the pieces as they are (the kernel
        cuts the datagrams at ``gso_size`` whatever the piece boundaries), so a caller
        that interleaves headers with views of a payload sends without a copy.  When
        the datagrams do not fit one call (:attr:`max_segments`,
        :attr:`max_gso_bytes`), the kernel refuses GSO, or the iovec is longer than
        the kernel takes (``IOV_MAX``), the pieces are joined and sent by
        :meth:`send_gso`.  Returns the number of datagrams sent; raises as
        :meth:`send_gso`."""
        if not 0 < gso_size <= 0xFFFF:
            raise ValueError(f"gso_size {gso_size} out of range")
        segments = -(-nbytes // gso_size)
        if nbytes <= gso_size:
            try:
                self.sock.sendmsg(pieces, (), 0, dst)
            except BlockingIOError:
                return 0
            return 1
        if (
            self.gso_ok
            and segments <= self.max_segments
            and nbytes <= self.max_gso_bytes
            and len(pieces) <= _IOV_MAX
        ):
            try:
                self.sock.sendmsg(pieces, self._segment_cmsg(gso_size), 0, dst)
            except BlockingIOError:
                return 0
            except OSError as exc:
                if exc.errno not in (errno.EIO, errno.EINVAL):
                    raise
                # send_gso below learns the kernel's limit or falls back for good.
            else:
                return segments
        return self.send_gso(b"".join(pieces), gso_size, dst)

    def _send_segments(self, view: memoryview, gso_size: int, dst: Address) -> int:
        sendmsg = self.sock.sendmsg
        sent = 0
        try:
            for start in range(0, len(view), gso_size):
                sendmsg((view[start : start + gso_size],), (), 0, dst)
                sent += 1
        except BlockingIOError:
            pass
        return sent

"""Raw IPv4 sockets for the tunnels that are not UDP: native SCLP (IP protocol 234),
NVGRE (GRE, protocol 47) and STT's pseudo-TCP (protocol 6).

Receive: an IPv4 raw socket delivers every packet of its protocol addressed to the
namespace, *with* the IPv4 header (``raw(7)``); :class:`RawBatch` gives the header
length per packet so the tunnel payload starts at ``views[i][offsets[i]:]``.  Reads
go through ``recvmmsg`` (:mod:`sclp.io._mmsg`).

Send: without ``IP_HDRINCL`` the kernel builds the outer IPv4 header (addresses,
protocol, ID, checksum); ``IP_MTU_DISCOVER = IP_PMTUDISC_DO`` sets DF and makes an
oversized packet fail with EMSGSIZE instead of being fragmented — tunnels segment
themselves.  There is no GSO for raw sockets, so every packet is one ``sendmsg``
(a loop: measured faster than ``sendmmsg`` through ctypes, see :mod:`sclp.io._mmsg`).

STT (protocol 6): a raw TCP socket receives *all* TCP packets of its namespace,
including ordinary connections; the endpoint must keep only those whose TCP
destination port is its STT port (7471) and ignore the rest.  The kernel also sees
the STT segments, finds no TCP socket and answers each with a RST; the endpoint keeps
it quiet with :func:`sclp.io.nft.install_stt_rst_guard`.  If GRO is enabled on the
receiving interface, valid-looking pseudo-TCP segments of one flow may also arrive
coalesced into one larger packet.

IPv4 only: an IPv6 raw socket never returns the IP header and needs a different
receive path; none of these tunnels is run over IPv6 here.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Final, NamedTuple, Self

from sclp.io._mmsg import MSG_TRUNC, MmsgReceiver
from sclp.io.netns import run_in_netns
from sclp.wire.checksum import Buffer

__all__ = [
    "IPPROTO_GRE",
    "IPPROTO_SCLP",
    "IPPROTO_TCP",
    "IP_MTU_DISCOVER",
    "IP_PMTUDISC_DO",
    "RawBatch",
    "RawIpSocket",
]

IPPROTO_SCLP: Final = 234
IPPROTO_GRE: Final = 47
IPPROTO_TCP: Final = 6
IP_MTU_DISCOVER: Final = 10  # linux/in.h
IP_PMTUDISC_DO: Final = 2
SO_SNDBUFFORCE: Final = 32
SO_RCVBUFFORCE: Final = 33
DEFAULT_SOCKET_BUFFER: Final = 16 << 20
RECV_BUFFER_LEN: Final = 65_536  # any IPv4 packet, GRO-coalesced ones included


class RawBatch(NamedTuple):
    """What :meth:`RawIpSocket.recv_batch` returns: parallel lists.

    ``views[i]`` is the whole IPv4 packet (``sizes[i]`` bytes, header included) from
    ``sources[i]``; its payload starts at ``offsets[i]`` (the header length, IHL * 4).
    The views point into the socket's receive slab and are overwritten by the next
    ``recv_batch``.
    """

    views: list[memoryview]
    sizes: list[int]
    sources: list[str]
    offsets: list[int]


class RawIpSocket:
    """A non-blocking ``AF_INET``/``SOCK_RAW`` socket for one IP protocol.

    Counters: :attr:`truncated` (packets larger than a receive slot, dropped) and
    :attr:`malformed` (packets too short for the IPv4 header they announce, dropped;
    the kernel should never deliver one).
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        batch: int = 64,
        buffer_size: int = RECV_BUFFER_LEN,
        socket_buffer: int = DEFAULT_SOCKET_BUFFER,
    ) -> None:
        if sock.family != socket.AF_INET or sock.type != socket.SOCK_RAW:
            raise ValueError("RawIpSocket needs an AF_INET SOCK_RAW socket")
        self.sock = sock
        self.protocol = sock.proto
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        for force, plain in (
            (SO_RCVBUFFORCE, socket.SO_RCVBUF),
            (SO_SNDBUFFORCE, socket.SO_SNDBUF),
        ):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, socket_buffer)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, plain, socket_buffer)
        self._rx = MmsgReceiver(batch, buffer_size, 0)
        self.truncated = 0
        self.malformed = 0

    @classmethod
    def open(
        cls,
        protocol: int,
        *,
        bind_addr: str | None = None,
        netns: str | None = None,
        batch: int = 64,
        buffer_size: int = RECV_BUFFER_LEN,
        socket_buffer: int = DEFAULT_SOCKET_BUFFER,
    ) -> Self:
        """A raw socket for IP ``protocol`` (1-254) in namespace ``netns`` (None: the
        calling thread's).  ``bind_addr`` restricts receiving to packets addressed to
        it and fixes the source address of what is sent.  Needs CAP_NET_RAW
        (PermissionError otherwise)."""
        if not 0 < protocol < 255:
            raise ValueError(f"IP protocol {protocol} out of range 1-254")
        with run_in_netns(netns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, protocol)
        try:
            if bind_addr is not None:
                sock.bind((bind_addr, 0))
            return cls(sock, batch=batch, buffer_size=buffer_size, socket_buffer=socket_buffer)
        except BaseException:
            sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- receiving ---------------------------------------------------------------------

    def recv_batch(self, max_msgs: int | None = None) -> RawBatch:
        """Receive up to ``max_msgs`` (default: the ``batch`` size) packets with one
        ``recvmmsg``; empty lists when nothing is waiting, fewer than requested when
        the queue is now empty."""
        rx = self._rx
        n = rx.receive(self.sock.fileno(), rx.count if max_msgs is None else max_msgs)
        views: list[memoryview] = []
        sizes: list[int] = []
        sources: list[str] = []
        offsets: list[int] = []
        slab = rx.slab
        stride = rx.buffer_size
        for i in range(n):
            if rx.flags(i) & MSG_TRUNC:
                self.truncated += 1
                continue
            size = rx.size(i)
            header_len = (slab[i * stride] & 0x0F) * 4 if size else 0
            if header_len < 20 or header_len > size:
                self.malformed += 1
                continue
            views.append(rx.views[i][:size])
            sizes.append(size)
            sources.append(rx.source(i)[0])
            offsets.append(header_len)
        return RawBatch(views, sizes, sources, offsets)

    # -- sending -----------------------------------------------------------------------

    def send_to(self, parts: Sequence[Buffer], dst: str) -> int:
        """One packet to ``dst`` whose payload is the concatenation of ``parts`` (e.g.
        ``[tunnel_header, inner_frame]``); the kernel adds the IPv4 header with DF.
        Returns the payload bytes sent, 0 if the socket buffer is full.  Raises
        OSError(EMSGSIZE) if the packet exceeds the path MTU."""
        try:
            return self.sock.sendmsg(parts, (), 0, (dst, 0))
        except BlockingIOError:
            return 0

    def send_batch(self, msgs: Sequence[tuple[Sequence[Buffer], str]]) -> int:
        """Send each ``(parts, dst)`` as one packet; returns how many were sent,
        stopping early only when the socket buffer is full."""
        sendmsg = self.sock.sendmsg
        sent = 0
        try:
            for parts, dst in msgs:
                sendmsg(parts, (), 0, (dst, 0))
                sent += 1
        except BlockingIOError:
            pass
        return sent

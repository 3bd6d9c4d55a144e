"""Raw IP sockets for the tunnels that are not UDP: native SCLP (IP protocol 234),
NVGRE (GRE, protocol 47) and the send side of STT's pseudo-TCP (protocol 6).

Send: without ``IP_HDRINCL`` the kernel builds the outer IP header (addresses,
protocol, ID, checksum).  ``IP_MTU_DISCOVER = IP_PMTUDISC_DO`` (``IPV6_MTU_DISCOVER``
on IPv6) makes an oversized packet fail with EMSGSIZE instead of being fragmented:
tunnels segment themselves.  There is no GSO for raw sockets, but a payload's segments
lie back to back in one buffer at a fixed stride, so :meth:`RawIpSocket.send_strided`
hands all of them to one ``sendmmsg`` (:class:`sclp.io._mmsg.StridedSender`): at ~1 µs
of Python per packet and ~45 packets per 64 KB, a loop would set the pace.

Receive: one ``recvmmsg`` per batch into zeroed slots; sizes, source keys, the L4
offset and the L4 packet's ones' complement sum come out as NumPy columns
(:class:`sclp.io._mmsg.BatchReceiver`), so a batch costs a few NumPy operations and no
Python per packet.  An IPv4 raw socket delivers the IP header (``raw(7)``), already
checked by the kernel; an IPv6 raw socket delivers only the L4 packet, and the source
comes from the ``sockaddr_in6``.

STT (protocol 6): a raw TCP socket receives *all* TCP packets of its namespace; the
endpoint reads STT (and, on an IPv4 underlay with peers, native SCLP too) through
packet taps instead (:class:`sclp.io.rxring.RxRing`, :class:`sclp.io.packet.PacketTap`)
and keeps this socket for sending (with :func:`sclp.io.packet.drop_all_filter` attached to
:attr:`RawIpSocket.sock`).  The kernel's TCP would answer each STT segment it sees with
a RST; :mod:`sclp.io.nft` keeps it quiet.

Errors: ``IP_RECVERR`` as on the UDP sockets (:mod:`sclp.io.errqueue`): a raw socket
without it also swallows ENOBUFS; with it the ICMP errors about its packets — and
about the packets a TX ring sent with the same protocol and addresses — are queued
for :meth:`RawIpSocket.read_errors`.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Hashable, Sequence
from typing import Final, Self

import numpy as np

from sclp.io._mmsg import (
    BatchReceiver,
    RawBatch,
    RawReceiver,
    StridedSender,
    encode_sockaddr,
    v4_key,
    v6_key,
)
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
from sclp.io.linux import IPPROTO_GRE, IPPROTO_SCLP, IPPROTO_TCP
from sclp.io.netns import run_in_netns
from sclp.wire.checksum import Buffer

__all__ = [
    "DEFAULT_SOCKET_BUFFER",
    "IPPROTO_GRE",
    "IPPROTO_SCLP",
    "IPPROTO_TCP",
    "RawBatch",
    "RawIpSocket",
    "RawReceiver",
    "source_key",
]

_SOCKADDR_CACHE_MAX: Final = 4096
assert sys.byteorder == "little"  # source keys and sums assume it (see sclp.io._mmsg)


def source_key(address: str) -> Hashable:
    """The key :meth:`RawIpSocket.recv_batch` (and :meth:`sclp.io.packet.PacketTap.
    recv_batch`) reports in ``sources`` for packets from ``address``: an int for IPv4,
    the 16 address bytes for IPv6.  Build a ``{source_key(peer): peer}`` map once."""
    return v6_key(address) if ":" in address else v4_key(address)


class RawIpSocket(SocketAdapter):
    """A non-blocking ``SOCK_RAW`` socket for one IP protocol, IPv4 or IPv6.

    :attr:`truncated` counts packets larger than a receive slot (dropped).
    :attr:`sock` is the socket itself (e.g. to attach a BPF filter).
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        batch: int = 64,
        slot_size: int = 2048,
        socket_buffer: int = DEFAULT_SOCKET_BUFFER,
        l4_sums: bool = True,
        dont_fragment: bool = True,
    ) -> None:
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_RAW:
            raise ValueError("RawIpSocket needs an AF_INET or AF_INET6 SOCK_RAW socket")
        self.sock = sock
        self.family = sock.family
        self.protocol = sock.proto
        sock.setblocking(False)
        set_pmtu_discover(sock, dont_fragment)
        set_socket_buffers(sock, socket_buffer)
        report_errors(sock)
        self._rx = BatchReceiver(batch, slot_size, zeroed=l4_sums)
        self._sums = l4_sums
        self._tx = StridedSender()
        self._sockaddrs: dict[str, bytes] = {}
        self._v4 = self.family == socket.AF_INET

    @classmethod
    def open(
        cls,
        protocol: int,
        bind_addr: str,
        *,
        netns: str | None = None,
        batch: int = 64,
        slot_size: int = 2048,
        socket_buffer: int = DEFAULT_SOCKET_BUFFER,
        l4_sums: bool = True,
        dont_fragment: bool = True,
    ) -> Self:
        """A raw socket for IP ``protocol`` (1-254) bound to ``bind_addr`` (IPv6 if it
        contains ':'), created in namespace ``netns`` (None: the calling thread's).
        Binding restricts receiving to packets addressed to ``bind_addr`` and fixes the
        source address of what is sent.  ``batch`` receive slots of ``slot_size``
        bytes (a packet larger than a slot is dropped and counted) are preallocated.
        ``l4_sums=False`` (a tunnel without an L4 checksum, such as GRE) skips the
        per-batch sums and the zeroing of the slots they need; ``l4_sums`` is then 0.
        ``dont_fragment`` (default) sets DF and makes a send over the path MTU fail with
        EMSGSIZE; False lets the kernel fragment (IPv4 and IPv6).
        Raises PermissionError without CAP_NET_RAW, OSError with the kernel's errno
        when binding fails (EADDRNOTAVAIL: not a local address)."""
        if not 0 < protocol < 255:
            raise ValueError(f"IP protocol {protocol} out of range 1-254")
        with run_in_netns(netns):
            sock = socket.socket(family_of(bind_addr), socket.SOCK_RAW, protocol)
        with closed_on_error(sock):
            sock.bind((bind_addr, 0))
            return cls(
                sock,
                batch=batch,
                slot_size=slot_size,
                socket_buffer=socket_buffer,
                l4_sums=l4_sums,
                dont_fragment=dont_fragment,
            )

    @property
    def truncated(self) -> int:
        return self._rx.truncated

    # -- receiving ---------------------------------------------------------------------

    def recv_batch(self, max_msgs: int | None = None) -> RawBatch:
        """Receive up to ``max_msgs`` (default: the ``batch`` size) packets with one
        ``recvmmsg``.  ``count`` is 0 when nothing is waiting; fewer than requested
        means the queue is now empty.  See :class:`RawBatch` for the fields; the views
        are valid until the next call."""
        rx = self._rx
        n = rx.receive_batch(self.sock.fileno(), max_msgs)
        if not n:
            return RawBatch(0, [], [], [], [], [])
        sizes = rx.sizes_column(n)
        if self._v4:
            offsets, l4_sums = rx.ipv4_columns(n, sizes, check_header=False)
            return rx.batch(n, sizes, rx.ipv4_sources(n), offsets, l4_sums)
        offsets = np.zeros(n, dtype=np.int64)
        sums = rx.l4_sums(n) if self._sums else np.zeros(n, dtype=np.uint32)
        return rx.batch(n, sizes, rx.ipv6_sources(n), offsets, sums)

    # -- sending -----------------------------------------------------------------------

    def _sockaddr(self, dst: str) -> bytes:
        sockaddr = self._sockaddrs.get(dst)
        if sockaddr is None:
            if len(self._sockaddrs) >= _SOCKADDR_CACHE_MAX:
                self._sockaddrs.clear()
            sockaddr = self._sockaddrs[dst] = encode_sockaddr(dst)
        return sockaddr

    def send_strided(self, buf: Buffer, stride: int, dst: str) -> int:
        """Send the packets lying back to back in ``buf`` at ``stride`` bytes (the last
        may be shorter) to ``dst`` with as few ``sendmmsg`` calls as possible.  Returns
        how many the kernel took: fewer than ``ceil(len(buf) / stride)`` only when the
        socket buffer filled (the rest was not sent).  Raises OSError for other errors
        (EMSGSIZE: a packet exceeds the path MTU), ValueError for ``stride <= 0``."""
        return self._tx.send(self.sock.fileno(), buf, stride, self._sockaddr(dst))

    def send_to(self, data: Buffer | Sequence[Buffer], dst: str) -> int:
        """One packet to ``dst`` whose payload is ``data`` (whole, or the concatenation
        of pieces such as ``[tunnel_header, inner_frame]``); the kernel adds the IP
        header, with DF on IPv4.  Returns the payload bytes sent, 0 if the socket buffer
        is full.  Raises OSError (EMSGSIZE: over the path MTU)."""
        return send_one(self.sock, data, (dst, 0))

"""An existing interface as a VM port: a QEMU/libvirt TAP or a container's veth that
another program created and owns, switched by us through a packet socket.

Why a packet socket: the TAP's file descriptor belongs to QEMU, and a veth has none;
but an ``AF_PACKET`` socket bound to the interface (``packet(7)``) sees every frame
the VM or container sends (they arrive on the host side as received frames) and can
transmit frames into it.  With ``PACKET_VNET_HDR`` each frame read or written carries
the same 10-byte ``virtio_net_hdr`` as a TAP opened with ``IFF_VNET_HDR``, so TSO
frames stay whole both ways (measured on this machine kind: a TCG guest's 65 KB TSO
frames read as one, ``gso_type`` TCPV4 with NEEDS_CSUM, and GSO frames written go
into the guest as one): the rest of the endpoint cannot tell the two kinds of port
apart.  ``PACKET_IGNORE_OUTGOING`` (Linux 4.20) keeps what we transmit into the
interface from being read back.

Reads and writes use the socket's descriptor with ``readv``/``writev`` like a TAP's
(a bound packet socket sends to its own interface without an address).

The host's own stack sees the port's incoming frames too (the interface is a netdev
of the host); :func:`sclp.io.nft.install_port_guard` drops them at the ingress hook,
which runs *after* the packet socket took its copy.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Final, Self

from sclp.io._sockopt import SocketAdapter, closed_on_error, set_socket_buffers
from sclp.io.linux import ETH_P_ALL, PACKET_IGNORE_OUTGOING, PACKET_VNET_HDR, SOL_PACKET

__all__ = ["PORT_SOCKET_BUFFER", "AttachedPort"]

PORT_SOCKET_BUFFER: Final = 4 << 20  # ~60 TSO frames queued each way


class AttachedPort(SocketAdapter):
    """A non-blocking ``AF_PACKET``/``SOCK_RAW`` socket on one interface, with
    virtio-net headers.  :meth:`read_into` and the descriptor's ``writev`` move one
    frame (header first) at a time, exactly as on a :class:`~sclp.io.tap.TapDevice`."""

    def __init__(self, sock: socket.socket, name: str, ifindex: int) -> None:
        self.sock = sock
        self.name = name
        self.ifindex = ifindex
        self._fd = sock.fileno()

    @classmethod
    def open(cls, ifname: str, *, buffer_size: int = PORT_SOCKET_BUFFER) -> Self:
        """Bind to ``ifname`` in the current network namespace.  Raises OSError:
        ENODEV (no such interface), EPERM (needs CAP_NET_RAW), ENOPROTOOPT (a kernel
        without ``PACKET_VNET_HDR`` or ``PACKET_IGNORE_OUTGOING``)."""
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # no hook until bind
        with closed_on_error(sock):
            sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            set_socket_buffers(sock, buffer_size)
            sock.bind((ifname, ETH_P_ALL))
            sock.setblocking(False)
            ifindex = socket.if_nametoindex(ifname)
        return cls(sock, ifname, ifindex)

    @property
    def closed(self) -> bool:
        return self.sock.fileno() < 0

    def read_into(self, buf: bytearray | memoryview, offset: int = 0) -> int:
        """One frame, its virtio-net header first, into ``buf[offset:]``: the bytes
        read, or 0 when none is waiting.  An interface that went down or away reports
        that once as OSError (ENETDOWN, ENXIO); the caller decides."""
        try:
            return os.readv(self._fd, (memoryview(buf)[offset:],))
        except BlockingIOError:
            return 0

    def write(self, vnet: bytes, frame: bytes | bytearray | memoryview) -> int:
        """Transmit one frame into the interface (towards the VM); returns the bytes
        written, 0 when the queue is full (EAGAIN, ENOBUFS)."""
        try:
            return os.writev(self._fd, (vnet, frame))
        except BlockingIOError:
            return 0
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                return 0
            raise

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd {self._fd}"
        return f"AttachedPort({self.name!r}, ifindex {self.ifindex}, {state})"

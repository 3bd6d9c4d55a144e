"""Socket set-up and single sends shared by the UDP, raw IP and packet adapters, so
each behaviour (buffer sizes, DF, what EAGAIN means) is written once."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator, Sequence
from typing import Any, Final, Self

from sclp.io.errqueue import SendError, drain, enable_recverr
from sclp.io.linux import (
    IP_MTU_DISCOVER,
    IP_PMTUDISC_DO,
    IP_PMTUDISC_DONT,
    IPV6_MTU_DISCOVER,
    IPV6_PMTUDISC_DO,
    IPV6_PMTUDISC_DONT,
    SO_RCVBUFFORCE,
    SO_SNDBUFFORCE,
)
from sclp.wire.checksum import Buffer

DEFAULT_SOCKET_BUFFER: Final = 16 << 20


def family_of(address: str) -> socket.AddressFamily:
    """AF_INET6 if ``address`` is written with ':' (an IPv6 literal), else AF_INET."""
    return socket.AF_INET6 if ":" in address else socket.AF_INET


@contextlib.contextmanager
def closed_on_error(sock: socket.socket) -> Iterator[socket.socket]:
    """Set-up of a fresh socket: if the block raises, the socket is closed (no fd
    leaks) and the exception, errno intact, goes on to the caller."""
    try:
        yield sock
    except BaseException:
        sock.close()
        raise


def set_socket_buffers(sock: socket.socket, size: int) -> None:
    """Large socket buffers: the *FORCE options (root / CAP_NET_ADMIN) pass
    ``net.core.[rw]mem_max``; without privilege the plain options are capped by it."""
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)


def report_errors(sock: socket.socket) -> None:
    """``IP_RECVERR``/``IPV6_RECVERR``: a send the kernel refuses fails instead of being
    swallowed (ENOBUFS), and ICMP errors about sent packets are queued for
    :meth:`SocketAdapter.read_errors` (:mod:`sclp.io.errqueue`)."""
    enable_recverr(sock)


def set_pmtu_discover(sock: socket.socket, dont_fragment: bool) -> None:
    """True: DF on every packet, and a send larger than the path MTU fails with
    EMSGSIZE (``IP_PMTUDISC_DO``).  False: the kernel may fragment (``..._DONT``).
    Uses the IPv6 option on an AF_INET6 socket."""
    if sock.family == socket.AF_INET6:
        value = IPV6_PMTUDISC_DO if dont_fragment else IPV6_PMTUDISC_DONT
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, value)
    else:
        value = IP_PMTUDISC_DO if dont_fragment else IP_PMTUDISC_DONT
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, value)


def send_one(sock: socket.socket, data: Buffer | Sequence[Buffer], address: Any) -> int:
    """One datagram or packet whose payload is ``data`` (whole, or the concatenation of
    its pieces) to ``address``; returns the bytes sent, 0 when the socket buffer is
    full (EAGAIN).  Other errors raise OSError."""
    parts = (data,) if isinstance(data, bytes | bytearray | memoryview) else data
    try:
        return sock.sendmsg(parts, (), 0, address)
    except BlockingIOError:
        return 0


class SocketAdapter:
    """What every socket adapter offers besides its batches: :attr:`sock` (the socket
    object itself, e.g. for a BPF filter or a socket option), :meth:`fileno` for the
    caller's selector, :meth:`close`, and use as a context manager."""

    sock: socket.socket

    def read_errors(self) -> list[SendError]:
        """The errors waiting in the socket's error queue (ICMP errors about packets
        sent; :mod:`sclp.io.errqueue`), read and so cleared; empty when none."""
        return drain(self.sock)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

"""Interfaces appearing and disappearing: the kernel's link notifications (rtnetlink
group ``RTMGRP_LINK``) on a non-blocking socket the endpoint's loop watches.

Why not :class:`pyroute2.IPRoute`'s own event reader: its ``get()`` blocks until a
message arrives and may read several; the loop must never wait.  The socket here is
a plain ``AF_NETLINK`` socket read with ``recv`` until EAGAIN, and pyroute2's
rtnetlink marshal decodes the messages (no hand-written attribute parsing).

A netlink socket can lose notifications when its buffer overflows (``ENOBUFS``);
:meth:`LinkWatch.drain` then says so, and the caller re-reads the whole list
(:func:`current_links`), as every netlink listener must.
"""

from __future__ import annotations

import socket
from typing import Final, NamedTuple, Self

from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from sclp.io._sockopt import SocketAdapter, closed_on_error
from sclp.io.netns import NetNS

__all__ = ["LinkEvent", "LinkWatch", "current_links"]

RTMGRP_LINK: Final = 1  # include/uapi/linux/rtnetlink.h
RTM_NEWLINK: Final = 16
RTM_DELLINK: Final = 17
_RCVBUF: Final = 1 << 20
_READS: Final = 64  # datagrams per drain; the rest waits for the next wake-up


class LinkEvent(NamedTuple):
    """An interface ``ifname`` (index ``ifindex``) exists (``present``, a new one or
    a change of one) or is gone (moved to another namespace, or deleted)."""

    ifname: str
    ifindex: int
    present: bool


class LinkWatch(SocketAdapter):
    """Link notifications of the current network namespace."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._marshal = MarshalRtnl()

    @classmethod
    def open(cls) -> Self:
        """Subscribe; raises OSError."""
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        with closed_on_error(sock):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            sock.bind((0, RTMGRP_LINK))
            sock.setblocking(False)
        return cls(sock)

    def drain(self) -> tuple[list[LinkEvent], bool]:
        """The notifications waiting, oldest first, and whether some were lost (the
        caller should then compare with :func:`current_links`)."""
        events: list[LinkEvent] = []
        lost = False
        for _ in range(_READS):
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError:  # ENOBUFS: the kernel dropped notifications
                lost = True
                continue
            for msg in self._marshal.parse(data):
                kind = msg["header"]["type"]
                if kind not in (RTM_NEWLINK, RTM_DELLINK):
                    continue
                name = msg.get_attr("IFLA_IFNAME")
                if name is None:
                    continue
                events.append(LinkEvent(str(name), int(msg["index"]), kind == RTM_NEWLINK))
        return events, lost


def current_links() -> dict[int, str]:
    """Every interface of the current namespace: index -> name."""
    with NetNS(None) as ns:
        return {
            int(link["index"]): str(link.get_attr("IFLA_IFNAME")) for link in ns.ipr.get_links()
        }

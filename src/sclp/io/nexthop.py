"""Next-hop resolution for senders that write their own Ethernet header
(:mod:`sclp.io.txring`): which device a destination's route leaves by, which MAC the
packets go to there, and the route's MTU.

The kernel's answers, read over netlink (pyroute2): ``route get`` for the output
interface, the gateway (else the destination itself is the next hop) and a route or
path MTU (``RTAX_MTU``); then the neighbour entry of that next hop on that interface.
Only entries whose MAC the kernel itself would use count: REACHABLE, STALE, DELAY,
PROBE and PERMANENT.  Resolving costs a few netlink round trips, so
:class:`NextHopCache` keeps each answer for a while (time passed in, ``now``) and
forgets it afterwards, so that a moved neighbour or route is noticed.  Nothing here
sends ARP: a caller that gets ``None`` sends through the kernel's IP path, which
resolves the neighbour, and asks again later.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, Final

from pyroute2.netlink.exceptions import NetlinkError

__all__ = ["NUD_USABLE", "NextHop", "NextHopCache", "resolve_next_hop"]

# include/uapi/linux/neighbour.h: neighbour states (ndm_state)
NUD_REACHABLE: Final = 0x02
NUD_STALE: Final = 0x04
NUD_DELAY: Final = 0x08
NUD_PROBE: Final = 0x10
NUD_PERMANENT: Final = 0x80
NUD_USABLE: Final = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT

CACHE_TTL: Final = 5.0  # seconds an answer is used before it is asked again
RETRY_AFTER: Final = 1.0  # seconds before an unresolved destination is asked again
CACHE_MAX: Final = 4096  # destinations; past it the cache starts over


@dataclass(frozen=True, slots=True)
class NextHop:
    """Where packets to one destination go: out of interface ``ifindex`` to Ethernet
    address ``mac`` (6 bytes).  ``mtu`` is the route's or the learned path MTU, None
    when the device's applies.  ``stale``: the kernel has not confirmed the entry
    lately (STALE); a caller may send one batch the kernel's way so that it does."""

    ifindex: int
    mac: bytes
    mtu: int | None = None
    stale: bool = False


def resolve_next_hop(ipr: Any, dst: str) -> NextHop | None:
    """The :class:`NextHop` of IPv4 or IPv6 destination ``dst`` from the kernel's
    tables via pyroute2 ``IPRoute`` ``ipr``, or None when there is no route, the next
    hop has no usable neighbour entry, or the device has no 6-byte address."""
    try:
        routes = ipr.route("get", dst=dst)
    except NetlinkError:
        return None
    if not routes:
        return None
    route = routes[0]
    oif = route.get_attr("RTA_OIF")
    if oif is None:
        return None
    gateway = route.get_attr("RTA_GATEWAY") or route.get_attr("RTA_VIA")
    hop = gateway if isinstance(gateway, str) else dst
    mtu = None
    metrics = route.get_attr("RTA_METRICS")
    if metrics is not None:
        mtu = metrics.get_attr("RTAX_MTU")
    family = socket.AF_INET6 if ":" in hop else socket.AF_INET
    try:
        found = ipr.neigh("get", dst=hop, ifindex=oif, family=family)
    except NetlinkError:  # ENOENT: no entry (yet)
        return None
    for entry in found:
        state = entry["state"]
        lladdr = entry.get_attr("NDA_LLADDR")
        if not state & NUD_USABLE or not isinstance(lladdr, str):
            continue
        mac = bytes.fromhex(lladdr.replace(":", ""))
        if len(mac) != 6:
            return None
        return NextHop(int(oif), mac, int(mtu) if mtu else None, bool(state & NUD_STALE))
    return None


class NextHopCache:
    """:func:`resolve_next_hop` answers per destination, each kept :data:`CACHE_TTL`
    seconds (an unresolved one :data:`RETRY_AFTER`), on the caller's clock.

    ``ipr`` is a pyroute2 ``IPRoute`` in the namespace whose tables count; the cache
    does not close it.  Not thread-safe."""

    def __init__(self, ipr: Any, ttl: float = CACHE_TTL, retry: float = RETRY_AFTER) -> None:
        self.ipr = ipr
        self.ttl = ttl
        self.retry = retry
        self.lookups = 0  # netlink resolutions made (a cost to watch)
        self._entries: dict[str, tuple[float, NextHop | None]] = {}

    def get(self, dst: str, now: float) -> NextHop | None:
        """The next hop of ``dst`` as of at most ``ttl`` seconds before ``now``."""
        entry = self._entries.get(dst)
        if entry is not None and now < entry[0]:
            return entry[1]
        hop = resolve_next_hop(self.ipr, dst)
        self.lookups += 1
        if len(self._entries) >= CACHE_MAX:
            self._entries.clear()
        self._entries[dst] = (now + (self.ttl if hop is not None else self.retry), hop)
        return hop

    def forget(self, dst: str | None = None) -> None:
        """Drop the answer for ``dst`` (None: all of them): asked again at next use."""
        if dst is None:
            self._entries.clear()
        else:
            self._entries.pop(dst, None)

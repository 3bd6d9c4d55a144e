"""Per-VNI forwarding database: source learning, aging, static entries, flooding.

Strategy: one :class:`Fdb` per virtual network (VNI), so isolation between VNIs is
structural: a lookup in one table can never return a peer learned in another.  A
MAC maps to a *peer* (an opaque hashable, the underlay address of the remote NVE).
Learning only happens from frames that arrived from a configured peer; the caller
checks that before calling :meth:`Fdb.learn` (``NOT_PEER`` drops happen earlier),
and :meth:`Fdb.learn` refuses peers it does not know as a second line of defence.

Time is passed in (``now``, seconds); nothing here reads a clock.  The table is
bounded: past ``max_entries`` the least recently refreshed dynamic entry goes.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

DEFAULT_AGING = 300.0  # seconds, like the Linux bridge and the kernel VXLAN driver
DEFAULT_MAX_ENTRIES = 4096


class LearnResult(enum.Enum):
    """What :meth:`Fdb.learn` did; one value per reason, for counters and tests."""

    NEW = "new"
    REFRESHED = "refreshed"
    MOVED = "moved"  # the MAC now lives behind another peer
    STATIC = "static"  # a static entry wins; nothing learned
    MULTICAST_SOURCE = "multicast_source"  # a group address never is a source
    NOT_PEER = "not_peer"
    EVICTED_OLDEST = "evicted_oldest"  # learned, and the oldest entry made room


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a frame goes: ``peers`` (one for a known unicast MAC, all of the VNI's
    peers when flooding) and whether it was a flood."""

    peers: tuple[Hashable, ...]
    flooded: bool


def is_group_mac(mac: bytes) -> bool:
    """Broadcast or multicast: the I/G bit of the first octet."""
    return bool(mac[0] & 1)


class Fdb:
    """The forwarding table of one VNI."""

    def __init__(
        self,
        peers: Iterable[Hashable],
        aging: float = DEFAULT_AGING,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        self.peers: tuple[Hashable, ...] = tuple(dict.fromkeys(peers))
        self._peer_set = frozenset(self.peers)
        self.aging = aging
        self.max_entries = max_entries
        # mac -> (peer, last seen); order = least recently refreshed first
        self._dynamic: OrderedDict[bytes, tuple[Hashable, float]] = OrderedDict()
        self._static: dict[bytes, Hashable] = {}

    def __len__(self) -> int:
        return len(self._dynamic) + len(self._static)

    def is_peer(self, peer: Hashable) -> bool:
        return peer in self._peer_set

    def add_static(self, mac: bytes, peer: Hashable) -> None:
        """Pin ``mac`` behind ``peer`` (which need not be a flooding peer)."""
        self._static[bytes(mac)] = peer
        self._dynamic.pop(bytes(mac), None)

    def learn(self, mac: bytes, peer: Hashable, now: float) -> LearnResult:
        """Record that ``mac`` was seen as a source behind ``peer`` at ``now``."""
        if peer not in self._peer_set:
            return LearnResult.NOT_PEER
        if is_group_mac(mac):
            return LearnResult.MULTICAST_SOURCE
        if mac in self._static:
            return LearnResult.STATIC
        old = self._dynamic.get(mac)
        if old is not None:
            self._dynamic[mac] = (peer, now)
            self._dynamic.move_to_end(mac)
            return LearnResult.REFRESHED if old[0] == peer else LearnResult.MOVED
        mac = bytes(mac)
        self._dynamic[mac] = (peer, now)
        if len(self._dynamic) > self.max_entries:
            self._dynamic.popitem(last=False)
            return LearnResult.EVICTED_OLDEST
        return LearnResult.NEW

    def lookup(self, mac: bytes, now: float) -> Destination:
        """Where a frame to ``mac`` goes: its peer, or a flood to every peer."""
        if not is_group_mac(mac):
            peer = self._static.get(mac)
            if peer is not None:
                return Destination((peer,), flooded=False)
            entry = self._dynamic.get(mac)
            if entry is not None:
                if now - entry[1] <= self.aging:
                    return Destination((entry[0],), flooded=False)
                del self._dynamic[mac]
        return Destination(self.peers, flooded=True)

    def expire(self, now: float) -> int:
        """Remove dynamic entries not refreshed within ``aging``; return how many."""
        removed = 0
        while self._dynamic:
            mac, (_, seen) = next(iter(self._dynamic.items()))
            if now - seen <= self.aging:
                break
            del self._dynamic[mac]
            removed += 1
        return removed

    def entries(self) -> list[tuple[bytes, Hashable, bool]]:
        """(mac, peer, static) for every entry, static ones first."""
        out: list[tuple[bytes, Hashable, bool]] = [(m, p, True) for m, p in self._static.items()]
        out.extend((m, p, False) for m, (p, _) in self._dynamic.items())
        return out

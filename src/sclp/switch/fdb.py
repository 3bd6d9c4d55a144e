"""Per-VNI forwarding database: source learning, aging, static entries, flooding.

Strategy: one :class:`Fdb` per virtual network (VNI), so isolation between VNIs is
structural: a lookup in one table can never return a peer learned in another.  A
MAC lives behind a *peer* (the underlay address of a remote NVE) or a local *port*
(a VM's TAP or attached interface on this host); both are opaque hashables of their
own types (``Fdb[PeerT, PortT]``: the endpoint's is ``Fdb[str, VmPort]``), and the
table knows which is which, so a lookup says whether a frame stays on this host.
Learning only happens from frames that arrived from a configured peer or a port of
this VNI; the caller checks that before calling :meth:`Fdb.learn` (``NOT_PEER``
drops happen earlier), and :meth:`Fdb.learn` refuses the unknown as a second line of
defence.

Time is passed in (``now``, seconds); nothing here reads a clock.  The table is
bounded: past ``max_entries`` the least recently refreshed dynamic entry goes.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping
from typing import Generic, NamedTuple, TypeVar

DEFAULT_AGING = 300.0  # seconds, like the Linux bridge and the kernel VXLAN driver
DEFAULT_MAX_ENTRIES = 4096

PeerT = TypeVar("PeerT", bound=Hashable)  # what a remote NVE is known by (its address)
PortT = TypeVar("PortT", bound=Hashable)  # what a local port is known by


class LearnResult(enum.Enum):
    """What :meth:`Fdb.learn` did; one value per reason, for counters and tests."""

    NEW = "new"
    REFRESHED = "refreshed"
    MOVED = "moved"  # the MAC now lives behind another peer
    STATIC = "static"  # a static entry wins; nothing learned
    MULTICAST_SOURCE = "multicast_source"  # a group address never is a source
    NOT_PEER = "not_peer"  # neither a peer nor a port of this VNI
    EVICTED_OLDEST = "evicted_oldest"  # learned, and the oldest entry made room


class Origin(enum.Enum):
    """Who put an entry in the table.  Each control plane (the cluster registry, BGP
    EVPN) has its own member and its own part of the table (:meth:`Fdb.set_remote`);
    :meth:`Fdb.entries` reports each."""

    LEARNED = "learned"  # from a frame's source address (ages)
    STATIC = "static"  # from the configuration's ``static`` list (never ages)
    CLUSTER = "cluster"  # announced by another host through the cluster registry
    EVPN = "evpn"  # advertised by another VTEP in a BGP EVPN MAC/IP route


class FdbEntry(NamedTuple, Generic[PeerT, PortT]):
    """One entry as :meth:`Fdb.entries` reports it: the MAC, the peer or port it is
    behind, where it came from, and for a learned entry the seconds since its MAC was
    last seen (None for the others, which do not age).  (A NamedTuple, not a generic
    dataclass, which mypyc cannot compile.)"""

    mac: bytes
    place: PeerT | PortT
    origin: Origin
    age: float | None


class Destination(NamedTuple, Generic[PeerT, PortT]):
    """Where a frame goes: ``peers`` and local ``ports`` (the one of a known unicast
    MAC, or all of the VNI's when flooding) and whether it was a flood.  The caller
    leaves out the port a frame came in on."""

    peers: tuple[PeerT, ...]
    flooded: bool
    ports: tuple[PortT, ...] = ()


def is_group_mac(mac: bytes) -> bool:
    """Broadcast or multicast: the I/G bit of the first octet."""
    return bool(mac[0] & 1)


class Fdb(Generic[PeerT, PortT]):
    """The forwarding table of one VNI.  Lookups return shared :class:`Destination`
    objects (one per place, one for the flood), so the per-frame path allocates
    nothing."""

    def __init__(
        self,
        peers: Iterable[PeerT],
        aging: float = DEFAULT_AGING,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        self.aging = aging
        self.max_entries = max_entries
        # mac -> (peer or port, last seen); order = least recently refreshed first
        self._dynamic: OrderedDict[bytes, tuple[PeerT | PortT, float]] = OrderedDict()
        self._static: dict[bytes, PeerT] = {}
        # Announced by a control plane (the cluster registry, BGP EVPN): where other
        # hosts say their VMs' MACs are, per origin, merged into ``_remote`` (EVPN's
        # last: it has sequence numbers).  Consulted after what traffic taught us, so a
        # VM that moved is found at once.
        self._announced: dict[Origin, dict[bytes, PeerT]] = {}
        self._remote: dict[bytes, PeerT] = {}
        self._remote_origin: dict[bytes, Origin] = {}
        self.peers: tuple[PeerT, ...] = ()
        self.ports: tuple[PortT, ...] = ()
        self._dest: dict[PeerT | PortT, Destination[PeerT, PortT]] = {}
        self._flood: Destination[PeerT, PortT] = Destination((), flooded=True)
        self._set_places(tuple(dict.fromkeys(peers)), ())

    def __len__(self) -> int:
        return len(self._dynamic) + len(self._static) + len(self._remote)

    def _set_places(self, peers: tuple[PeerT, ...], ports: tuple[PortT, ...]) -> None:
        self.peers, self.ports = peers, ports
        self._peer_set = frozenset(peers)
        self._port_set = frozenset(ports)
        self._flood = Destination(peers, flooded=True, ports=ports)
        dest: dict[PeerT | PortT, Destination[PeerT, PortT]] = {
            p: Destination((p,), flooded=False) for p in peers
        }
        dest.update((p, Destination((), flooded=False, ports=(p,))) for p in ports)
        self._dest = dest

    def add_port(self, port: PortT) -> None:
        """A local port joins the VNI: it gets floods, and MACs can be learned on it."""
        if port not in self._port_set:
            self._set_places(self.peers, (*self.ports, port))

    def remove_port(self, port: PortT) -> int:
        """A local port leaves: no more floods to it, and every MAC learned on it is
        forgotten; returns how many."""
        self._set_places(self.peers, tuple(p for p in self.ports if p != port))
        return self._forget(port)

    def set_peers(self, peers: Iterable[PeerT]) -> int:
        """Replace the flooding peers; MACs learned behind a peer that is gone are
        forgotten (returns how many).  Static entries stay."""
        new = tuple(dict.fromkeys(peers))
        gone = self._peer_set - set(new)
        self._set_places(new, self.ports)
        if gone and self._announced:
            self._announced = {
                o: {m: p for m, p in macs.items() if p not in gone}
                for o, macs in self._announced.items()
            }
            self._merge()
        return sum(self._forget(p) for p in gone)

    def _forget(self, place: PeerT | PortT) -> int:
        stale = [mac for mac, (where, _) in self._dynamic.items() if where == place]
        for mac in stale:
            del self._dynamic[mac]
        return len(stale)

    def set_remote(self, macs: Mapping[bytes, PeerT], origin: Origin = Origin.CLUSTER) -> None:
        """Replace the MACs announced by other hosts through ``origin`` (``mac ->
        peer``); entries whose peer is not a flooding peer of this VNI are ignored."""
        self._announced[origin] = {bytes(m): p for m, p in macs.items() if p in self._peer_set}
        self._merge()

    def _merge(self) -> None:
        remote: dict[bytes, PeerT] = {}
        origins: dict[bytes, Origin] = {}
        for origin in (Origin.CLUSTER, Origin.EVPN):
            macs = self._announced.get(origin, {})
            remote.update(macs)
            origins.update(dict.fromkeys(macs, origin))
        self._remote, self._remote_origin = remote, origins

    def forget(self, mac: bytes) -> bool:
        """Drop what traffic taught about ``mac`` (a control plane says it moved)."""
        return self._dynamic.pop(bytes(mac), None) is not None

    def local_macs(self) -> frozenset[bytes]:
        """The MACs learned behind this host's own ports (what this host announces)."""
        ports = self._port_set
        return frozenset(mac for mac, (where, _) in self._dynamic.items() if where in ports)

    def add_static(self, mac: bytes, peer: PeerT) -> None:
        """Pin ``mac`` behind ``peer`` (which need not be a flooding peer)."""
        self._static[bytes(mac)] = peer
        self._dynamic.pop(bytes(mac), None)

    def learn(self, mac: bytes, where: PeerT | PortT, now: float) -> LearnResult:
        """Record that ``mac`` was seen as a source behind the peer or local port
        ``where`` at ``now``."""
        if where not in self._peer_set and where not in self._port_set:
            return LearnResult.NOT_PEER
        if is_group_mac(mac):
            return LearnResult.MULTICAST_SOURCE
        if mac in self._static:
            return LearnResult.STATIC
        if (
            self._remote
            and self._remote_origin.get(mac) is Origin.EVPN
            and self._remote[mac] == where
        ):  # where EVPN says it is: nothing to learn (`sclp show fdb` says evpn)
            self._dynamic.pop(mac, None)
            return LearnResult.REFRESHED
        old = self._dynamic.get(mac)
        if old is not None:
            self._dynamic[mac] = (where, now)
            self._dynamic.move_to_end(mac)
            return LearnResult.REFRESHED if old[0] == where else LearnResult.MOVED
        mac = bytes(mac)
        self._dynamic[mac] = (where, now)
        if len(self._dynamic) > self.max_entries:
            self._dynamic.popitem(last=False)
            return LearnResult.EVICTED_OLDEST
        return LearnResult.NEW

    def lookup(self, mac: bytes, now: float) -> Destination[PeerT, PortT]:
        """Where a frame to ``mac`` goes: its peer or port (static entries first, then
        what traffic taught us, then what other hosts announced), or a flood to all."""
        if not is_group_mac(mac):
            peer = self._static.get(mac)
            if peer is not None:
                return self._dest.get(peer) or Destination((peer,), flooded=False)
            entry = self._dynamic.get(mac)
            if entry is not None:
                if now - entry[1] <= self.aging:
                    return self._dest[entry[0]]
                del self._dynamic[mac]
            if self._remote:
                peer = self._remote.get(mac)
                if peer is not None:
                    return self._dest[peer]
        return self._flood

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

    def entries(self, now: float) -> list[FdbEntry[PeerT, PortT]]:
        """Every entry that :meth:`lookup` would use at ``now``: static ones first,
        then the learned ones (least recently seen first, aged-out ones left out),
        then the control planes' (cluster, EVPN) that neither shadows."""
        return [FdbEntry(*row) for row in self.rows(now)]

    def rows(self, now: float) -> list[tuple[bytes, PeerT | PortT, Origin, float | None]]:
        """:meth:`entries` as plain tuples (mac, place, origin, age), for a listing
        of many entries that should cost the caller's loop as little as possible."""
        static, learned, cluster = Origin.STATIC, Origin.LEARNED, Origin.CLUSTER
        out: list[tuple[bytes, PeerT | PortT, Origin, float | None]] = [
            (m, p, static, None) for m, p in self._static.items()
        ]
        oldest = now - self.aging
        dynamic = self._dynamic
        out.extend(
            (m, p, learned, now - seen) for m, (p, seen) in dynamic.items() if seen >= oldest
        )
        if self._remote:
            shadow = self._static
            origin = self._remote_origin
            out.extend(
                (m, p, origin.get(m, cluster), None)
                for m, p in self._remote.items()
                if m not in shadow and (m not in dynamic or dynamic[m][1] < oldest)
            )
        return out

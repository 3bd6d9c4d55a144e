"""BGP EVPN for VXLAN, sans-I/O: the routes we send, the routes we take (docs/evpn.md).

What this module knows, and nothing else does:

- the encodings of RFC 7432 (EVPN) as RFC 8365 uses them for VXLAN: route type 2
  (MAC/IP advertisement) and 3 (inclusive multicast Ethernet tag), the VNI in the
  24-bit label field, the PMSI tunnel attribute "ingress replication" (RFC 6514 §5),
  the route distinguisher and route target (RFC 4364 §4.2, RFC 4360), the BGP
  encapsulation extended community (RFC 9012 §4.1, tunnel type 8 = VXLAN), the MAC
  mobility extended community (RFC 7432 §7.7), and this project's marker "this VTEP
  also speaks SCLP" (:data:`SCLP_MARKER_TYPE`);
- how FRR derives an RD (``router-id:index``) and an RT (``ASN:VNI``) per VNI by
  default, and how it imports routes whose RT was derived by another AS (the AS part
  is ignored for auto-derived RTs);
- the MAC mobility sequence numbers (RFC 7432 §15): a MAC that appears here after
  another VTEP advertised it goes out with that VTEP's sequence number plus one;
- the speaker's JSON (ExaBGP's ``encoder json``): sessions going up and down, updates
  with routes announced and withdrawn, decoded from the NLRI bytes themselves;
- the received routes per neighbor (:class:`RemoteRib`): kept while the session is
  up, kept for the hold time after it went down, and turned into what the data path
  wants (:meth:`RemoteRib.view`): per VNI, the flooding peers with the encapsulation
  each advertised, and the MACs behind them.

No sockets, no processes, no clock: ``now`` is passed in.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "ENCAP_VXLAN",
    "ROUTE_IMET",
    "ROUTE_MAC_IP",
    "SCLP_MARKER_TYPE",
    "Advertiser",
    "Encap",
    "EvpnView",
    "LocalVni",
    "RemoteRib",
    "RemoteRoute",
    "Route",
    "SessionEvent",
    "SpeakerError",
    "UpdateEvent",
    "auto_rd",
    "auto_rt",
    "decode_message",
    "parse_rd",
    "parse_rt",
]

ROUTE_MAC_IP: Final = 2
ROUTE_IMET: Final = 3
ENCAP_VXLAN: Final = 8  # RFC 9012 §14.5 / RFC 8365 §5.1.3: BGP tunnel type VXLAN
PMSI_INGRESS_REPLICATION: Final = 6  # RFC 6514 §5
ATTR_EXT_COMMUNITIES: Final = 16
ATTR_PMSI: Final = 22
ATTR_FLAGS_OPTIONAL_TRANSITIVE: Final = 0xC0
# Extended community type (high) and sub-type (low) octets.
_EC_RT_AS2: Final = 0x0002
_EC_RT_IPV4: Final = 0x0102
_EC_RT_AS4: Final = 0x0202
_EC_ENCAP: Final = 0x030C
_EC_MAC_MOBILITY: Final = 0x0600
# "This VTEP also speaks SCLP": a transitive extended community of the experimental
# type range (RFC 7153 §5.1, 0x80-0x8F), sub-type 0x53 ("S"); value: the SCLP
# carrier (0 = IP protocol 234, 1 = UDP), the SCLP UDP port (0 with the IP carrier),
# the SCLP version (1), two reserved octets.  docs/evpn.md documents it.
SCLP_MARKER_TYPE: Final = 0x8F53
SCLP_VERSION: Final = 1
_EC: Final = struct.Struct("!HHI")  # type+subtype, then 6 octets as 2 + 4
_MAX_SEQ: Final = 0xFFFFFFFF


class SpeakerError(ValueError):
    """A message from the speaker that is not what ExaBGP sends."""


class Encap(enum.Enum):
    """What a remote VTEP takes on one VNI, from the type-3 route it advertised."""

    VXLAN = "vxlan"  # plain VXLAN (RFC 7348) on the VXLAN UDP port
    VXLAN_SCLP = "vxlan-sclp"  # VXLAN over SCLP: it advertised our marker as well


# -- route distinguishers and route targets ------------------------------------------


def auto_rd(router_id: str, index: int) -> str:
    """FRR's default RD of a VNI: type 1, ``router-id:index``, index 1.. per VNI."""
    return f"{router_id}:{index}"


def auto_rt(asn: int, vni: int) -> str:
    """FRR's default RT of a VNI: ``ASN:VNI`` (a 4-octet ASN takes the VNI's low 16
    bits, as FRR does)."""
    return f"{asn}:{vni if asn <= 0xFFFF else vni & 0xFFFF}"


def _admin_value(text: str, what: str) -> tuple[str, int]:
    admin, sep, value = text.rpartition(":")
    if not sep or not admin or not value.isdigit():
        raise ValueError(f"{text!r} is not a {what} like 65000:42 or 10.0.0.1:42")
    return admin, int(value)


def parse_rd(text: str) -> bytes:
    """A route distinguisher as written (``ASN:nn`` or ``IPv4:nn``), 8 octets
    (RFC 4364 §4.2 types 0, 1, 2).  ValueError if it is not one."""
    admin, value = _admin_value(text, "route distinguisher")
    if admin.isdigit():
        asn = int(admin)
        if asn <= 0xFFFF and value <= 0xFFFFFFFF:
            return struct.pack("!HHI", 0, asn, value)
        if asn <= 0xFFFFFFFF and value <= 0xFFFF:
            return struct.pack("!HIH", 2, asn, value)
        raise ValueError(f"{text!r}: ASN or number out of range")
    try:
        address = ipaddress.IPv4Address(admin)
    except ValueError:
        raise ValueError(f"{text!r}: {admin!r} is neither an ASN nor an IPv4 address") from None
    if value > 0xFFFF:
        raise ValueError(f"{text!r}: the number after an address is 0..65535")
    return struct.pack("!H4sH", 1, address.packed, value)


def format_rd(raw: bytes) -> str:
    """The inverse of :func:`parse_rd` (unknown types as hex)."""
    kind = int.from_bytes(raw[:2])
    if kind == 0:
        _, asn, value = struct.unpack("!HHI", raw)
        return f"{asn}:{value}"
    if kind == 1:
        _, address, value = struct.unpack("!H4sH", raw)
        return f"{ipaddress.IPv4Address(address)}:{value}"
    if kind == 2:
        _, asn, value = struct.unpack("!HIH", raw)
        return f"{asn}:{value}"
    return raw.hex()


def parse_rt(text: str) -> bytes:
    """A route target as written (``ASN:nn`` or ``IPv4:nn``), as its 8-octet extended
    community (RFC 4360 §4, RFC 5668).  ValueError if it is not one."""
    admin, value = _admin_value(text, "route target")
    if admin.isdigit():
        asn = int(admin)
        if asn <= 0xFFFF and value <= 0xFFFFFFFF:
            return struct.pack("!HHI", _EC_RT_AS2, asn, value)
        if asn <= 0xFFFFFFFF and value <= 0xFFFF:
            return struct.pack("!HIH", _EC_RT_AS4, asn, value)
        raise ValueError(f"{text!r}: ASN or number out of range")
    try:
        address = ipaddress.IPv4Address(admin)
    except ValueError:
        raise ValueError(f"{text!r}: {admin!r} is neither an ASN nor an IPv4 address") from None
    if value > 0xFFFF:
        raise ValueError(f"{text!r}: the number after an address is 0..65535")
    return struct.pack("!H4sH", _EC_RT_IPV4, address.packed, value)


def _rt_local_value(community: bytes) -> int | None:
    """The local administrator of a route target community (None: not an RT)."""
    kind = int.from_bytes(community[:2])
    if kind == _EC_RT_AS2:
        return int.from_bytes(community[4:8])
    if kind in (_EC_RT_AS4, _EC_RT_IPV4):
        return int.from_bytes(community[6:8])
    return None


# -- extended communities ----------------------------------------------------------------


def encap_community(tunnel_type: int) -> bytes:
    """RFC 9012 §4.1 (as RFC 5512 §4.5 had it): type 0x03, sub-type 0x0c, 4 reserved
    octets, the tunnel type."""
    return struct.pack("!HIH", _EC_ENCAP, 0, tunnel_type)


def mac_mobility_community(seq: int, sticky: bool = False) -> bytes:
    """RFC 7432 §7.7: type 0x06, sub-type 0x00, flags (sticky), reserved, sequence."""
    return struct.pack("!HBBI", _EC_MAC_MOBILITY, 1 if sticky else 0, 0, seq)


def sclp_community(carrier_udp: bool, udp_port: int) -> bytes:
    """The SCLP marker (see :data:`SCLP_MARKER_TYPE`)."""
    return struct.pack(
        "!HBHBH",
        SCLP_MARKER_TYPE,
        1 if carrier_udp else 0,
        udp_port if carrier_udp else 0,
        SCLP_VERSION,
        0,
    )


# -- routes we send ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalVni:
    """What this VTEP advertises for one VNI: the RD, the RTs it exports and imports
    (``auto_import``: the RTs were derived, so any AS with this VNI is imported, as
    FRR does), and whether it also speaks SCLP on it (and how)."""

    vni: int
    rd: bytes
    export_rts: tuple[bytes, ...]
    import_rts: frozenset[bytes]
    auto_import: bool
    sclp: bytes | None = None  # the marker community, or None (plain VXLAN only)

    def imports(self, rts: Iterable[bytes]) -> bool:
        for rt in rts:
            if rt in self.import_rts:
                return True
            if self.auto_import and _rt_local_value(rt) == self.vni:
                return True
        return False


@dataclass(frozen=True, slots=True)
class Route:
    """One route to announce: its NLRI (route type, length, value), next hop and path
    attributes as ``(flags, code, value)`` — what the speaker is told, in hex."""

    nlri: bytes
    next_hop: str
    attributes: tuple[tuple[int, int, bytes], ...]

    def announce(self) -> str:
        attrs = " ".join(f"{code}:{flags}:{value.hex()}" for flags, code, value in self.attributes)
        return f"announce evpn {self.nlri.hex()} next-hop {self.next_hop} attributes {attrs}"

    def withdraw(self) -> str:
        return f"withdraw evpn {self.nlri.hex()} next-hop {self.next_hop}"


def _label(vni: int) -> bytes:
    """RFC 8365 §5.1.3: the VNI fills the 3-octet MPLS label field."""
    return vni.to_bytes(3)


def _ip_field(address: str) -> bytes:
    packed = ipaddress.ip_address(address).packed
    return bytes([len(packed) * 8]) + packed


def imet_nlri(rd: bytes, origin: str) -> bytes:
    """Route type 3 (RFC 7432 §7.3): RD, Ethernet tag 0, the originating IP."""
    value = rd + bytes(4) + _ip_field(origin)
    return bytes([ROUTE_IMET, len(value)]) + value


def mac_nlri(rd: bytes, mac: bytes, vni: int) -> bytes:
    """Route type 2 (RFC 7432 §7.2) without an IP: RD, ESI 0, Ethernet tag 0, the MAC,
    and the VNI as label 1."""
    value = rd + bytes(10) + bytes(4) + bytes([48]) + mac + bytes([0]) + _label(vni)
    return bytes([ROUTE_MAC_IP, len(value)]) + value


def _communities(*parts: Iterable[bytes]) -> tuple[int, int, bytes]:
    return (
        ATTR_FLAGS_OPTIONAL_TRANSITIVE,
        ATTR_EXT_COMMUNITIES,
        b"".join(b for p in parts for b in p),
    )


def imet_route(net: LocalVni, local: str) -> Route:
    pmsi = bytes([0, PMSI_INGRESS_REPLICATION]) + _label(net.vni)
    pmsi += ipaddress.ip_address(local).packed
    marker = (net.sclp,) if net.sclp is not None else ()
    return Route(
        imet_nlri(net.rd, local),
        local,
        (
            _communities(net.export_rts, (encap_community(ENCAP_VXLAN),), marker),
            (ATTR_FLAGS_OPTIONAL_TRANSITIVE, ATTR_PMSI, pmsi),
        ),
    )


def mac_route(net: LocalVni, local: str, mac: bytes, seq: int) -> Route:
    mobility = (mac_mobility_community(seq),) if seq else ()
    return Route(
        mac_nlri(net.rd, mac, net.vni),
        local,
        (_communities(net.export_rts, (encap_community(ENCAP_VXLAN),), mobility),),
    )


class Advertiser:
    """What this VTEP should advertise, and the commands that get the speaker there.

    :meth:`update` takes the VNIs and the MACs behind local ports now, plus the
    highest sequence number other VTEPs advertised per (VNI, MAC), and returns the
    speaker commands (announcements and withdrawals) that turn what was advertised
    into that.  A MAC keeps its sequence number while it stays local; one that
    appears here after another VTEP had it goes out with that number plus one.  One
    still local here that another VTEP advertises with a higher number has moved
    there (RFC 7432 §15.1): it is withdrawn and listed in :attr:`superseded`, for
    the caller to forget the stale local entry; when it is learned here again, it
    goes out with the other number plus one."""

    def __init__(self, local: str) -> None:
        self.local = local
        self.advertised: dict[bytes, Route] = {}  # by NLRI
        self._seq: dict[tuple[int, bytes], int] = {}
        self.superseded: set[tuple[int, bytes]] = set()

    def reset(self) -> None:
        """The speaker restarted: it holds nothing, announce everything again."""
        self.advertised.clear()

    def sequence(self, vni: int, mac: bytes) -> int | None:
        return self._seq.get((vni, mac))

    def update(
        self,
        vnis: Iterable[LocalVni],
        local_macs: Mapping[int, Iterable[bytes]],
        remote_seq: Mapping[tuple[int, bytes], int],
    ) -> list[str]:
        want: dict[bytes, Route] = {}
        seqs: dict[tuple[int, bytes], int] = {}
        superseded: set[tuple[int, bytes]] = set()
        for net in vnis:
            route = imet_route(net, self.local)
            want[route.nlri] = route
            for mac in sorted(local_macs.get(net.vni, ())):
                key = (net.vni, mac)
                seq = self._seq.get(key)
                remote = remote_seq.get(key)
                if seq is None:  # newly here
                    seq = 0 if remote is None else min(remote + 1, _MAX_SEQ)
                elif remote is not None and remote > seq:  # it moved away: not ours now
                    superseded.add(key)
                    continue
                seqs[key] = seq
                route = mac_route(net, self.local, mac, seq)
                want[route.nlri] = route
        self._seq = seqs
        self.superseded = superseded
        commands = [r.withdraw() for n, r in self.advertised.items() if n not in want]
        commands += [r.announce() for n, r in want.items() if self.advertised.get(n) != r]
        self.advertised = want
        return commands


# -- what the speaker tells us -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """A BGP session with ``neighbor`` went up or down."""

    neighbor: str
    up: bool


@dataclass(frozen=True, slots=True)
class RemoteRoute:
    """A type-2 or type-3 route a neighbor sent: where the VTEP is (``vtep``: the
    PMSI tunnel's address for type 3, else the next hop), the MAC (type 2), the VNI
    of the label, the RTs, and what its communities say."""

    kind: int
    rd: bytes
    vtep: str
    label_vni: int
    mac: bytes | None = None
    rts: frozenset[bytes] = frozenset()
    encaps: frozenset[int] = frozenset()
    sclp: bool = False
    seq: int = 0

    @property
    def key(self) -> tuple[int, bytes, bytes | None]:
        return (self.kind, self.rd, self.mac)

    @property
    def encap(self) -> Encap:
        return Encap.VXLAN_SCLP if self.sclp else Encap.VXLAN


@dataclass(frozen=True, slots=True)
class UpdateEvent:
    """Routes a neighbor announced, and the keys of those it withdrew."""

    neighbor: str
    announced: tuple[RemoteRoute, ...] = ()
    withdrawn: tuple[tuple[int, bytes, bytes | None], ...] = ()


_IP_IN_TEXT = re.compile(r"([0-9a-fA-F:.]+)$")


def _nlri_fields(raw: bytes) -> tuple[int, bytes, bytes | None, str | None, int]:
    """(route type, RD, MAC or None, IP or None, label VNI) of one EVPN NLRI (type,
    length, value).  SpeakerError for types other than 2 and 3 or bad lengths."""
    if len(raw) < 2 or len(raw) != 2 + raw[1]:
        raise SpeakerError(f"evpn nlri of {len(raw)} bytes does not match its length")
    kind, value = raw[0], raw[2:]
    if kind == ROUTE_IMET:
        if len(value) not in (17, 29):
            raise SpeakerError(f"type-3 route of {len(value)} bytes")
        ip = str(ipaddress.ip_address(value[13:]))
        return kind, value[:8], None, ip, 0
    if kind == ROUTE_MAC_IP:
        if len(value) < 33 or value[22] != 48:
            raise SpeakerError(f"type-2 route of {len(value)} bytes or a MAC length not 48")
        mac = value[23:29]
        iplen = value[29] // 8
        label = value[30 + iplen : 33 + iplen]
        if len(label) != 3:
            raise SpeakerError("type-2 route without a label")
        return kind, value[:8], mac, None, int.from_bytes(label)
    raise SpeakerError(f"route type {kind} is not supported")


def _communities_of(attribute: Mapping[str, Any]) -> list[bytes]:
    out = []
    for entry in attribute.get("extended-community", ()):
        value = entry.get("value") if isinstance(entry, dict) else entry
        if isinstance(value, int) and 0 <= value < 1 << 64:
            out.append(value.to_bytes(8))
    return out


def _pmsi(attribute: Mapping[str, Any]) -> tuple[str | None, int]:
    """(tunnel address, label) of ExaBGP's PMSI text
    ``pmsi:ingressreplication:FLAGS:LABEL(RAW):ADDRESS`` (None: no usable PMSI)."""
    text = attribute.get("pmsi")
    if not isinstance(text, str) or "ingressreplication" not in text.replace("-", ""):
        return None, 0
    match = _IP_IN_TEXT.search(text)
    raw = re.search(r"\((\d+)\)", text)
    try:
        address = str(ipaddress.ip_address(match.group(1))) if match else None
    except ValueError:
        address = None
    return address, int(raw.group(1)) if raw else 0


def _route(raw: bytes, next_hop: str | None, attribute: Mapping[str, Any]) -> RemoteRoute:
    kind, rd, mac, ip, label = _nlri_fields(raw)
    communities = _communities_of(attribute)
    rts = frozenset(c for c in communities if _rt_local_value(c) is not None)
    encaps = frozenset(
        int.from_bytes(c[6:8]) for c in communities if int.from_bytes(c[:2]) == _EC_ENCAP
    )
    sclp = any(int.from_bytes(c[:2]) == SCLP_MARKER_TYPE for c in communities)
    seq = max(
        (int.from_bytes(c[4:8]) for c in communities if int.from_bytes(c[:2]) == _EC_MAC_MOBILITY),
        default=0,
    )
    vtep = next_hop
    if kind == ROUTE_IMET:
        tunnel, pmsi_label = _pmsi(attribute)
        vtep = tunnel or ip or next_hop
        label = pmsi_label
    if vtep is None:
        raise SpeakerError("a route without a next hop")
    return RemoteRoute(kind, rd, vtep, label, mac, rts, encaps, sclp, seq)


def _raw_of(entry: Any) -> bytes | None:
    if not isinstance(entry, dict) or entry.get("code") not in (ROUTE_MAC_IP, ROUTE_IMET):
        return None
    raw = entry.get("raw")
    if not isinstance(raw, str):
        return None
    try:
        return bytes.fromhex(raw)  # the whole route: type, length, value
    except ValueError:
        raise SpeakerError(f"raw nlri {raw!r} is not hex") from None


def decode_message(line: str) -> SessionEvent | UpdateEvent | None:
    """One line of ExaBGP's JSON encoder: a session change, an EVPN update, or None
    (anything else: keepalives, other families, notifications).  SpeakerError for a
    line that is not ExaBGP's JSON."""
    if line.strip() in ("done", "error", ""):
        return None  # ExaBGP's answer to a command
    try:
        msg = json.loads(line)
    except json.JSONDecodeError:
        raise SpeakerError(f"not JSON: {line[:80]!r}") from None
    if not isinstance(msg, dict):
        raise SpeakerError(f"not a JSON object: {line[:80]!r}")
    neighbor = msg.get("neighbor")
    if not isinstance(neighbor, dict):
        return None
    address = neighbor.get("address", {})
    peer = address.get("peer") if isinstance(address, dict) else None
    if not isinstance(peer, str):
        return None
    kind = msg.get("type")
    if kind == "state":
        state = neighbor.get("state")
        if state == "up":
            return SessionEvent(peer, True)
        if state in ("down", "shutdown"):
            return SessionEvent(peer, False)
        return None
    if kind != "update":
        return None
    update = neighbor.get("message", {}).get("update", {})
    if not isinstance(update, dict):
        return None
    attribute = update.get("attribute", {})
    announced: list[RemoteRoute] = []
    for next_hop, entries in update.get("announce", {}).get("l2vpn evpn", {}).items():
        for entry in entries:
            raw = _raw_of(entry)
            if raw is not None:
                try:
                    announced.append(_route(raw, next_hop, attribute))
                except SpeakerError:
                    continue  # a route we do not take (counted by nobody: logged upstream)
    withdrawn = []
    for entry in update.get("withdraw", {}).get("l2vpn evpn", ()):
        raw = _raw_of(entry)
        if raw is not None:
            try:
                kind_, rd, mac, _ip, _label = _nlri_fields(raw)
            except SpeakerError:
                continue
            withdrawn.append((kind_, rd, mac))
    if not announced and not withdrawn:
        return None
    return UpdateEvent(peer, tuple(announced), tuple(withdrawn))


# -- what we learned -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EvpnView:
    """What the routes say, per VNI: the flooding peers and the encapsulation each
    advertised, the MACs behind them, and the highest MAC mobility sequence number
    advertised for each MAC (what our own advertisement has to beat)."""

    peers: dict[int, dict[str, Encap]] = field(default_factory=dict)
    macs: dict[int, dict[bytes, str]] = field(default_factory=dict)
    seqs: dict[tuple[int, bytes], int] = field(default_factory=dict)


@dataclass
class _Neighbor:
    up: bool = False
    down_since: float | None = None
    routes: dict[tuple[int, bytes, bytes | None], RemoteRoute] = field(default_factory=dict)
    # After the session came back: the routes it held before are stale until sent
    # again; those not sent again by ``stale_until`` go (what it withdrew meanwhile).
    stale_until: float | None = None
    fresh: set[tuple[int, bytes, bytes | None]] = field(default_factory=set)


class RemoteRib:
    """The routes each neighbor sent.  A neighbor whose session went down keeps its
    routes for ``hold_time`` seconds (the data path keeps forwarding on them), then
    they go; one that comes back up in time keeps them while it sends them again,
    and those it does not send again within another ``hold_time`` go then."""

    def __init__(self, hold_time: float, local: str) -> None:
        self.hold_time = hold_time
        self.local = local
        self.neighbors: dict[str, _Neighbor] = {}

    def apply(self, event: SessionEvent | UpdateEvent, now: float) -> bool:
        """Take one event; True if the routes changed."""
        nb = self.neighbors.setdefault(event.neighbor, _Neighbor())
        if isinstance(event, SessionEvent):
            if event.up:
                if not nb.up and nb.routes:
                    nb.stale_until, nb.fresh = now + self.hold_time, set()
                nb.up, nb.down_since = True, None
            elif nb.up or nb.down_since is None:
                nb.up, nb.down_since, nb.stale_until = False, now, None
            return False
        changed = False
        for key in event.withdrawn:
            changed |= nb.routes.pop(key, None) is not None
        for route in event.announced:
            if route.vtep == self.local:
                continue  # our own routes, reflected back
            if nb.stale_until is not None:
                nb.fresh.add(route.key)
            if nb.routes.get(route.key) != route:
                nb.routes[route.key] = route
                changed = True
        return changed

    def expire(self, now: float) -> list[str]:
        """Drop the routes of neighbors down for longer than the hold time, and the
        stale ones of neighbors that came back; returns those neighbors."""
        gone = []
        for address, nb in self.neighbors.items():
            if nb.down_since is not None and now - nb.down_since >= self.hold_time and nb.routes:
                nb.routes.clear()
                gone.append(address)
            elif nb.stale_until is not None and now >= nb.stale_until:
                stale = [key for key in nb.routes if key not in nb.fresh]
                for key in stale:
                    del nb.routes[key]
                nb.stale_until, nb.fresh = None, set()
                if stale:
                    gone.append(address)
        return gone

    def next_deadline(self) -> float | None:
        times = [
            nb.down_since + self.hold_time
            for nb in self.neighbors.values()
            if nb.down_since is not None and nb.routes
        ]
        times += [nb.stale_until for nb in self.neighbors.values() if nb.stale_until is not None]
        return min(times, default=None)

    def route_count(self, neighbor: str) -> int:
        nb = self.neighbors.get(neighbor)
        return len(nb.routes) if nb is not None else 0

    def view(self, vnis: Iterable[LocalVni]) -> EvpnView:
        """The peers and MACs per VNI that our import policy takes.  A VTEP that
        advertised the SCLP marker on a VNI gets VXLAN over SCLP there, else VXLAN.
        A MAC advertised by several VTEPs goes to the highest sequence number (then
        the lowest address)."""
        view = EvpnView()
        policies = list(vnis)
        routes = [r for nb in self.neighbors.values() for r in nb.routes.values()]
        best: dict[tuple[int, bytes], tuple[int, str]] = {}
        for net in policies:
            peers: dict[str, Encap] = {}
            for route in routes:
                if not net.imports(route.rts) and not (
                    not route.rts and route.label_vni == net.vni
                ):
                    continue
                if route.kind == ROUTE_IMET:
                    if peers.get(route.vtep) is not Encap.VXLAN_SCLP:
                        peers[route.vtep] = route.encap
                elif route.mac is not None:
                    key = (net.vni, route.mac)
                    rank = (route.seq, route.vtep)
                    old = best.get(key)
                    if old is None or rank[0] > old[0] or (rank[0] == old[0] and rank[1] < old[1]):
                        best[key] = rank
            view.peers[net.vni] = peers
            view.macs[net.vni] = {}
        for (vni, mac), (seq, vtep) in best.items():
            view.macs[vni][mac] = vtep
            view.seqs[(vni, mac)] = seq
        return view

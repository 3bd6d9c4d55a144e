"""The cluster registry's records and the view an endpoint derives from them (pure).

Nothing here does I/O or reads a clock: :func:`build_view` turns the keys under the
cluster prefix (as read from etcd and kept current by the watch in
:mod:`sclp.cluster.agent`) into a :class:`ClusterView` for one endpoint, ``me``.

Key layout under the prefix ``P`` (``"/sclp"`` by default; written without a trailing
slash, so the prefix ``"/"`` gives keys ``/members/...``), every key under the
writer's lease so that it vanishes when the writer stops keeping the lease alive:

``P/members/NAME``
    :meth:`Member.to_json` of endpoint ``NAME``: its underlay address, SCLP carrier
    and UDP port, the UDP ports of VXLAN and Geneve (absent in older records: the
    IANA ports), and the protocol of every VNI it serves.
``P/macs/VNI/NAME``
    a JSON list of the MACs (``"02:00:00:00:00:01"``) that endpoint ``NAME`` learned
    on its VM ports in network ``VNI``.  Absent when it has none.

Other keys under the prefix are ignored (room for later record kinds).

Decisions, each with the reason on its line in :attr:`ClusterView.conflicts`:

- a record that does not parse is ignored;
- two members announcing the same underlay address: the one registered later
  (higher create revision; by name on a tie) is ignored by everyone;
- a member on one of ``me``'s VNIs with another protocol, or for an SCLP protocol
  another carrier (or, with the UDP carrier, another UDP port), or for VXLAN or
  Geneve another UDP port, is not a peer on that VNI: no traffic is sent to it with
  an encapsulation it does not speak or to a port it does not listen on.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypedDict

CARRIERS = ("ip", "udp")
MAX_VNI = (1 << 24) - 1
# At most this many MACs are announced per VNI and endpoint (the rest are learned
# by flooding, as without a registry); keeps one record well under etcd's 1.5 MB.
MAX_MACS_PER_RECORD = 8192

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_PROTOCOL_RE = re.compile(r"^[a-z0-9-]{1,32}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# The IANA ports (sclp.wire.vxlan.VXLAN_PORT, sclp.wire.geneve.GENEVE_PORT; this
# package imports nothing outside itself): a record without vxlan_port/geneve_port
# comes from a version that always used them.
VXLAN_PORT = 4789
GENEVE_PORT = 6081


class AgentStatus(TypedDict):
    """What the cluster agent reports of itself (``sclp stats``' ``cluster``): connected
    to etcd (at ``endpoint``, a URL), the members and revision of its view, the last
    error (one line), its lease and how many mismatch lines the view has."""

    connected: bool
    endpoint: str | None
    members: int
    revision: int
    last_error: str | None
    lease_id: int | None
    conflicts: int


class AgentStatusUpdate(TypedDict, total=False):
    """Some fields of :class:`AgentStatus`, as the agent changes them."""

    connected: bool
    endpoint: str | None
    members: int
    revision: int
    last_error: str | None
    lease_id: int | None
    conflicts: int


def _short(value: object) -> str:
    """``repr(value)`` cut to 40 characters, for a reason line (never raises)."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 40 else text[:37] + "..."


def is_sclp(protocol: str) -> bool:
    """Is ``protocol`` carried by SCLP (so the carrier and its port must match)?"""
    return protocol.endswith("-sclp")


def base(prefix: str) -> str:
    """The prefix as the keys start with it: no trailing slash (``"/"`` -> ``""``)."""
    return prefix.rstrip("/")


def member_key(prefix: str, name: str) -> str:
    return f"{base(prefix)}/members/{name}"


def macs_key(prefix: str, vni: int, name: str) -> str:
    return f"{base(prefix)}/macs/{vni}/{name}"


def mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def encode_macs(macs: Iterable[bytes]) -> bytes:
    """The value of a ``macs`` key: the unicast 6-byte MACs, sorted, as JSON; at most
    :data:`MAX_MACS_PER_RECORD` (the lowest).  Raises ValueError for a MAC that is not
    6 bytes."""
    clean = set()
    for mac in macs:
        if len(mac) != 6:
            raise ValueError(f"a MAC is 6 bytes, not {len(mac)}")
        if not mac[0] & 1:
            clean.add(bytes(mac))
    chosen = sorted(clean)[:MAX_MACS_PER_RECORD]
    return json.dumps([mac_text(m) for m in chosen], separators=(",", ":")).encode()


def decode_macs(data: bytes) -> frozenset[bytes]:
    """The MACs of a ``macs`` value; multicast ones are dropped.  ValueError when the
    value is not a JSON list of MAC strings."""
    try:
        items = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON ({exc.__class__.__name__})") from None
    if not isinstance(items, list):
        raise ValueError("not a JSON list of MACs")
    macs = set()
    for item in items:
        if not isinstance(item, str) or not _MAC_RE.match(item.lower()):
            raise ValueError(f"{_short(item)} is not a MAC like 02:00:00:00:00:01")
        mac = bytes.fromhex(item.replace(":", ""))
        if not mac[0] & 1:
            macs.add(mac)
    return frozenset(macs)


@dataclass(frozen=True)
class Member:
    """One endpoint as it announces itself.  ``networks`` maps VNI -> protocol string
    (``"vxlan"``, ``"vxlan-sclp"``, ...); it is copied into a read-only mapping.
    ``vxlan_port``, ``geneve_port``: its ``underlay.vxlan_port`` and ``geneve_port``."""

    name: str
    address: str
    carrier: str
    sclp_udp_port: int
    networks: Mapping[int, str] = field(default_factory=dict)
    vxlan_port: int = VXLAN_PORT
    geneve_port: int = GENEVE_PORT

    def __post_init__(self) -> None:
        object.__setattr__(self, "networks", MappingProxyType(dict(sorted(self.networks.items()))))

    def __hash__(self) -> int:
        return hash(
            (
                self.name,
                self.address,
                self.carrier,
                self.sclp_udp_port,
                tuple(self.networks.items()),
                self.vxlan_port,
                self.geneve_port,
            )
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Member):
            return NotImplemented
        return (
            self.name == other.name
            and self.address == other.address
            and self.carrier == other.carrier
            and self.sclp_udp_port == other.sclp_udp_port
            and dict(self.networks) == dict(other.networks)
            and self.vxlan_port == other.vxlan_port
            and self.geneve_port == other.geneve_port
        )

    def validate(self) -> None:
        """Raise ValueError naming the first field that is not valid."""
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(f"name {_short(self.name)} is not 1-32 of A-Za-z0-9_.-")
        try:
            if not isinstance(self.address, str):
                raise ValueError
            ipaddress.ip_address(self.address)
        except ValueError:
            raise ValueError(f"address {_short(self.address)} is not an IP") from None
        if self.carrier not in CARRIERS:
            raise ValueError(f"carrier {_short(self.carrier)} is not ip or udp")
        for key in ("sclp_udp_port", "vxlan_port", "geneve_port"):
            port = getattr(self, key)
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise ValueError(f"{key} {_short(port)} is not 1..65535")
        for vni, protocol in self.networks.items():
            if isinstance(vni, bool) or not isinstance(vni, int) or not 0 < vni <= MAX_VNI:
                raise ValueError(f"vni {_short(vni)} is not 1..{MAX_VNI}")
            if not isinstance(protocol, str) or not _PROTOCOL_RE.match(protocol):
                raise ValueError(f"protocol {_short(protocol)} of vni {vni} is not valid")

    def to_json(self) -> bytes:
        self.validate()
        record = {
            "name": self.name,
            "address": self.address,
            "carrier": self.carrier,
            "sclp_udp_port": self.sclp_udp_port,
            "vxlan_port": self.vxlan_port,
            "geneve_port": self.geneve_port,
            "networks": {str(vni): p for vni, p in self.networks.items()},
        }
        return json.dumps(record, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Member:
        """Parse a member record; ValueError (with the reason) on anything malformed.
        Unknown fields are ignored, so later versions may add some."""
        try:
            record = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"not JSON ({exc.__class__.__name__})") from None
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        missing = [k for k in ("name", "address", "carrier", "sclp_udp_port") if k not in record]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        networks_in = record.get("networks", {})
        if not isinstance(networks_in, dict):
            raise ValueError("networks is not an object")
        networks: dict[int, str] = {}
        for vni_text, protocol in networks_in.items():
            if not re.fullmatch(r"[0-9]{1,8}", vni_text):
                raise ValueError(f"vni {vni_text[:20]!r} is not a number")
            networks[int(vni_text)] = protocol
        member = cls(
            name=record["name"],
            address=record["address"],
            carrier=record["carrier"],
            sclp_udp_port=record["sclp_udp_port"],
            networks=networks,
            vxlan_port=record.get("vxlan_port", VXLAN_PORT),
            geneve_port=record.get("geneve_port", GENEVE_PORT),
        )
        member.validate()
        return member


@dataclass(frozen=True)
class ClusterView:
    """What one endpoint makes of the registry at one revision.  See :func:`build_view`."""

    revision: int
    members: Mapping[str, Member]
    macs: Mapping[int, Mapping[bytes, str]]
    conflicts: tuple[str, ...]
    peers: Mapping[int, frozenset[str]]

    def same_state(self, other: ClusterView) -> bool:
        """Equal but for the revision (a write elsewhere under the prefix)."""
        return (
            dict(self.members) == dict(other.members)
            and {v: dict(m) for v, m in self.macs.items()}
            == {v: dict(m) for v, m in other.macs.items()}
            and self.conflicts == other.conflicts
            and dict(self.peers) == dict(other.peers)
        )


@dataclass(frozen=True)
class Records:
    """The parsed keys under a prefix: well-formed members with their create
    revisions, the announced MAC sets, and one line per record that did not parse."""

    members: Mapping[str, Member]
    created: Mapping[str, int]
    macs: Mapping[tuple[int, str], frozenset[bytes]]
    malformed: tuple[str, ...]


def parse_records(prefix: str, kvs: Mapping[str, tuple[bytes, int]]) -> Records:
    """Parse the keys under ``prefix`` (key -> (value, create revision)).  Never raises
    for any value; keys outside the layout are ignored."""
    members_at = f"{base(prefix)}/members/"
    macs_at = f"{base(prefix)}/macs/"
    members: dict[str, Member] = {}
    created: dict[str, int] = {}
    macs: dict[tuple[int, str], frozenset[bytes]] = {}
    malformed: list[str] = []
    for key in sorted(kvs):
        value, create_revision = kvs[key]
        shown = key[:120]
        if key.startswith(members_at):
            name = key[len(members_at) :]
            try:
                member = Member.from_json(value)
                if member.name != name:
                    raise ValueError(f"it names {member.name!r}")
            except ValueError as exc:
                malformed.append(f"member record {shown} ignored: {exc}")
                continue
            members[name] = member
            created[name] = create_revision
        elif key.startswith(macs_at):
            vni_text, _, name = key[len(macs_at) :].partition("/")
            try:
                if not re.fullmatch(r"[0-9]{1,8}", vni_text) or not 0 < int(vni_text) <= MAX_VNI:
                    raise ValueError(f"vni {vni_text[:20]!r} is not 1..{MAX_VNI}")
                if not _NAME_RE.match(name):
                    raise ValueError(f"name {name[:40]!r} is not valid")
                macs[int(vni_text), name] = decode_macs(value)
            except ValueError as exc:
                malformed.append(f"MAC record {shown} ignored: {exc}")
    return Records(members, created, macs, tuple(malformed))


def _address_key(address: str) -> str:
    return str(ipaddress.ip_address(address))


def _incompatibility(vni: int, mine: Member, theirs: Member) -> str | None:
    """Why ``theirs`` may not be ``mine``'s peer on ``vni`` (both serve it), or None."""
    ours, their = mine.networks[vni], theirs.networks[vni]
    if ours != their:
        return f"announces protocol {their} but {mine.name} uses {ours}"
    if is_sclp(ours):
        if theirs.carrier != mine.carrier:
            return f"uses SCLP carrier {theirs.carrier} but {mine.name} uses {mine.carrier}"
        if mine.carrier == "udp" and theirs.sclp_udp_port != mine.sclp_udp_port:
            return (
                f"uses SCLP UDP port {theirs.sclp_udp_port} "
                f"but {mine.name} uses {mine.sclp_udp_port}"
            )
    classic = {"vxlan": "vxlan_port", "geneve": "geneve_port"}.get(ours)
    if classic is not None and getattr(theirs, classic) != getattr(mine, classic):
        return (
            f"uses {ours} UDP port {getattr(theirs, classic)} "
            f"but {mine.name} uses {getattr(mine, classic)}"
        )
    return None


def duplicate_addresses(
    records: Records, me: Member | None = None
) -> tuple[frozenset[str], list[str]]:
    """Names of the members ignored because an earlier-registered member announces
    the same underlay address, and a line for each.  ``me`` (if given and not
    registered yet) counts as registered last."""
    everyone = dict(records.members)
    created = dict(records.created)
    if me is not None and (me.name not in everyone or everyone[me.name] != me):
        everyone[me.name] = me
        created[me.name] = 1 << 62
    by_address: dict[str, list[str]] = {}
    for name, member in everyone.items():
        by_address.setdefault(_address_key(member.address), []).append(name)
    ignored: set[str] = set()
    lines = []
    for address, names in sorted(by_address.items()):
        if len(names) < 2:
            continue
        first, *later = sorted(names, key=lambda n: (created[n], n))
        for name in later:
            ignored.add(name)
            lines.append(
                f"members {first} and {name} both announce underlay address {address}; "
                f"{name} (registered later) is ignored"
            )
    return frozenset(ignored), lines


def build_view(
    prefix: str, kvs: Mapping[str, tuple[bytes, int]], revision: int, me: Member
) -> ClusterView:
    """The view of endpoint ``me`` of the registry ``kvs`` (key -> (value, create
    revision), every key under ``prefix``) at ``revision``.

    ``peers[vni]``: the underlay addresses of the members that serve ``vni`` with
    ``me``'s protocol (and for SCLP ``me``'s carrier, and with the UDP carrier its
    port; for VXLAN and Geneve ``me``'s UDP port); never ``me`` or ``me``'s address,
    never a member ignored for a duplicate address.  If ``me`` itself is the one
    ignored, it has no peers.  ``macs[vni]``: the MACs those peers announce on ``vni``
    (a MAC announced by two of them is left out: flooding and learning find it).
    ``conflicts``: one stable line per record ignored and per mismatch with ``me``.
    Never raises for any keys or values.
    """
    records = parse_records(prefix, kvs)
    ignored, conflicts = duplicate_addresses(records, me)
    conflicts = list(records.malformed) + conflicts
    my_address = _address_key(me.address)
    peers: dict[int, frozenset[str]] = {}
    macs: dict[int, Mapping[bytes, str]] = {}
    for vni in sorted(me.networks):
        chosen: dict[str, str] = {}  # name -> address
        for name, member in sorted(records.members.items()):
            if name == me.name or vni not in member.networks:
                continue
            if name in ignored or me.name in ignored:
                continue
            address = _address_key(member.address)
            if address == my_address:
                continue
            why = _incompatibility(vni, me, member)
            if why is not None:
                conflicts.append(
                    f"vni {vni}: member {name} ({address}) {why}; not a peer on vni {vni}"
                )
                continue
            chosen[name] = address
        peers[vni] = frozenset(chosen.values())
        owners: dict[bytes, str | None] = {}
        for name, address in chosen.items():
            for mac in records.macs.get((vni, name), frozenset()):
                owners[mac] = address if owners.get(mac, address) == address else None
        macs[vni] = MappingProxyType({mac: a for mac, a in sorted(owners.items()) if a is not None})
    return ClusterView(
        revision=revision,
        members=MappingProxyType(dict(records.members)),
        macs=MappingProxyType(macs),
        conflicts=tuple(conflicts),
        peers=MappingProxyType(peers),
    )


def cluster_conflicts(records: Records) -> list[str]:
    """Every mismatch in the registry, seen from no endpoint in particular (for
    ``sclp cluster``): records ignored, duplicate addresses, and each pair of members
    that serve one VNI incompatibly."""
    _, lines = duplicate_addresses(records)
    lines = list(records.malformed) + lines
    names = sorted(records.members)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            ma, mb = records.members[a], records.members[b]
            for vni in sorted(set(ma.networks) & set(mb.networks)):
                why = _incompatibility(vni, ma, mb)
                if why is not None:
                    lines.append(f"vni {vni}: member {b} {why}")
    return lines


def describe(member: Member) -> dict[str, Any]:
    """A JSON-ready dict of a member (for ``sclp cluster --json``)."""
    return {
        "name": member.name,
        "address": member.address,
        "carrier": member.carrier,
        "sclp_udp_port": member.sclp_udp_port,
        "vxlan_port": member.vxlan_port,
        "geneve_port": member.geneve_port,
        "networks": {str(vni): p for vni, p in member.networks.items()},
    }

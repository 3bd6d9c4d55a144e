"""The endpoint's TOML configuration: loading, defaults and validation.

This file format is the user contract (see docs/config.md).  Every problem is
reported as one :class:`ConfigError` line that names the key, the line in the file
where it can be found, and what to write instead; nothing here raises anything
else for bad input.
"""

from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import math
import os
import re
import tomllib
import urllib.parse
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from sclp.bgp.model import parse_rd, parse_rt
from sclp.wire.geneve import GENEVE_PORT
from sclp.wire.sclp import SCLP_UDP_PORT, Carrier
from sclp.wire.vxlan import VXLAN_PORT


class Protocol(StrEnum):
    """A network's encapsulation, as written in the file.  Parsed once into this enum;
    the data path binds a tunnel type to it at start and never compares strings."""

    VXLAN = "vxlan"
    GENEVE = "geneve"
    NVGRE = "nvgre"
    STT = "stt"
    VXLAN_SCLP = "vxlan-sclp"
    GENEVE_SCLP = "geneve-sclp"

    @property
    def is_sclp(self) -> bool:
        return self in (Protocol.VXLAN_SCLP, Protocol.GENEVE_SCLP)


PROTOCOLS = tuple(p.value for p in Protocol)
SCLP_PROTOCOLS = tuple(p.value for p in Protocol if p.is_sclp)
CARRIERS = tuple(c.value for c in Carrier)
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
# An attach pattern: interface-name characters and fnmatch's * ? [ ] ! (no '/').
_PATTERN_RE = re.compile(r"^[A-Za-z0-9_.*?\[\]!-]{1,64}$")
IFNAMSIZ_CHARS = 15  # the longest Linux interface name
# A network namespace name as `ip netns` takes it: a file name under /run/netns.
_NETNS_RE = re.compile(r"^[^/\s\x00]{1,255}$")
_HOST_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?$")
_MAX_FILE_BYTES = 1 << 20  # a configuration is a few KB; more is the wrong file
_SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL

# The keys each table takes (for "did you mean" and "belongs in [table]" hints).
TABLE_KEYS: dict[str, tuple[str, ...]] = {
    "": (
        "name",
        "control_dir",
        "underlay",
        "limits",
        "tuning",
        "metrics",
        "cluster",
        "bgp",
        "network",
    ),
    "[underlay]": (
        "local",
        "mtu",
        "sclp_carrier",
        "sclp_udp_port",
        "vxlan_port",
        "geneve_port",
        "namespace",
        "faults",
    ),
    "[underlay.faults]": ("drop", "reorder", "reorder_depth", "duplicate", "corrupt", "seed"),
    "[limits]": (
        "reasm_timeout",
        "reasm_max_bytes",
        "reasm_max_entries",
        "fdb_aging",
        "fdb_max_entries",
    ),
    "[tuning]": ("rx_batch", "deliver_gso", "tx_ring", "rx_taps"),
    "[metrics]": ("listen",),
    "[cluster]": ("etcd", "prefix", "lease_ttl", "ca", "cert", "key"),
    "[[network]]": (
        "vni",
        "protocol",
        "tap",
        "attach",
        "namespace",
        "address",
        "mtu",
        "peers",
        "static",
        "rd",
        "route_targets",
    ),
    "[bgp]": ("asn", "router_id", "neighbors", "hold_time"),
}
_TOP_SCALARS = ("name", "control_dir")


class ConfigError(Exception):
    """A configuration problem, phrased as one line for the user."""


@dataclass(frozen=True, slots=True)
class Faults:
    """Fault injection on outgoing underlay packets (off unless a rate is set)."""

    drop: float = 0.0
    reorder: float = 0.0
    reorder_depth: int = 3
    duplicate: float = 0.0
    corrupt: float = 0.0
    seed: int = 1

    @property
    def enabled(self) -> bool:
        return any((self.drop, self.reorder, self.duplicate, self.corrupt))


@dataclass(frozen=True, slots=True)
class Underlay:
    local: str
    mtu: int | None = None
    sclp_carrier: Carrier = Carrier.IP
    sclp_udp_port: int = SCLP_UDP_PORT
    namespace: str | None = None
    faults: Faults = field(default_factory=Faults)
    # UDP destination ports of the classic tunnels; a Linux vxlan device made without
    # ``dstport`` (and flannel) uses 8472 instead of the IANA 4789.
    vxlan_port: int = VXLAN_PORT
    geneve_port: int = GENEVE_PORT


@dataclass(frozen=True, slots=True)
class Limits:
    reasm_timeout: float = 1.0
    reasm_max_bytes: int = 32 * 1024 * 1024
    reasm_max_entries: int = 1024
    fdb_aging: float = 300.0
    fdb_max_entries: int = 4096


@dataclass(frozen=True, slots=True)
class Tuning:
    """Data-path switches, for the two-level pre-reassembly ablation of the benchmark.

    ``rx_batch``: level 1 (coalescing): kernel UDP GRO in carrier mode, ``recvmmsg``
    batches in native mode.  ``deliver_gso``: level 2's payoff: a reassembled frame
    larger than the VM's MTU goes to the TAP as one GSO frame; off, it is cut into
    MSS-sized frames in software first.

    How native SCLP and STT meet the kernel (IPv4 underlay): ``tx_ring`` sends their
    segments through ``AF_PACKET`` TX rings (:mod:`sclp.io.txring`) instead of
    ``sendmmsg`` on a raw socket; ``rx_taps`` reads them with packet taps ahead of an
    ingress drop, through a ``PACKET_RX_RING`` (``"ring"``) or ``recvmmsg``
    (``"recvmmsg"``), or from the raw socket after IP input (``"off"``)."""

    rx_batch: bool = True
    deliver_gso: bool = True
    tx_ring: bool = True
    rx_taps: str = "ring"


RX_TAPS_MODES = ("ring", "recvmmsg", "off")


@dataclass(frozen=True, slots=True)
class Metrics:
    """The Prometheus endpoint (``[metrics]``): ``listen`` is ``(host, port)`` with the
    host an address literal (IPv6 without brackets), or ``None`` when it is off."""

    listen: tuple[str, int] | None = None

    @property
    def enabled(self) -> bool:
        return self.listen is not None


@dataclass(frozen=True, slots=True)
class Cluster:
    """The cluster registry (``[cluster]``, docs/cluster.md): etcd endpoints (URLs),
    the key prefix, the lease TTL in seconds, and optional TLS files.  ``None`` in
    :attr:`Config.cluster` when the table is absent: peers come from the file only."""

    etcd: tuple[str, ...]
    prefix: str = "/sclp"
    lease_ttl: int = 10
    ca: str | None = None
    cert: str | None = None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class BgpNeighbor:
    address: str
    asn: int


@dataclass(frozen=True, slots=True)
class Bgp:
    """BGP EVPN (``[bgp]``, docs/evpn.md): our AS, router ID, the neighbors, and the
    hold time (seconds) both for the sessions and for keeping a lost neighbor's routes.
    ``None`` in :attr:`Config.bgp` when the table is absent."""

    asn: int
    router_id: str
    neighbors: tuple[BgpNeighbor, ...]
    hold_time: int = 9


@dataclass(frozen=True, slots=True)
class StaticEntry:
    mac: bytes
    peer: str


@dataclass(frozen=True, slots=True)
class Network:
    vni: int
    protocol: Protocol
    tap: str | None  # the TAP this endpoint creates and owns, if any
    peers: tuple[str, ...]
    namespace: str | None = None
    address: str | None = None
    mtu: int | None = None
    static: tuple[StaticEntry, ...] = ()
    # Shell-style patterns of existing interfaces (a QEMU/libvirt TAP, a container's
    # veth) that become ports of this network when they appear (docs/vms.md).
    attach: tuple[str, ...] = ()
    # BGP EVPN: the RD and RTs of this VNI when not derived (docs/evpn.md).
    rd: str | None = None
    route_targets: tuple[str, ...] = ()

    @property
    def is_sclp(self) -> bool:
        return self.protocol.is_sclp

    def attaches(self, ifname: str) -> bool:
        """Does ``ifname`` match one of this network's ``attach`` patterns?"""
        return any(fnmatch.fnmatchcase(ifname, pattern) for pattern in self.attach)


@dataclass(frozen=True, slots=True)
class Config:
    name: str
    underlay: Underlay
    networks: tuple[Network, ...]
    limits: Limits = field(default_factory=Limits)
    control_dir: str = "/run/sclp"
    tuning: Tuning = field(default_factory=Tuning)
    metrics: Metrics = field(default_factory=Metrics)
    cluster: Cluster | None = None
    bgp: Bgp | None = None

    @property
    def control_socket(self) -> str:
        return f"{self.control_dir}/{self.name}.sock"


class _Reader:
    """Typed access to one TOML table, with errors that point at the key's line."""

    def __init__(
        self,
        table: dict[str, Any],
        where: str,
        lines: list[str],
        header: str = "",
        parent: tuple[_Reader, str] | None = None,
    ) -> None:
        self.table = table
        self.where = where
        self.lines = lines
        self.header = header  # e.g. "[underlay]" or "[[network]]#2": where to look for keys
        self.parent = parent  # (reader, key) holding this table: for inline tables
        self.used: set[str] = set()

    def line(self, key: str) -> int | None:
        """The line of ``key`` in this table, else of the line that holds the table
        (an inline table), else ``None``."""
        found = _line_of(self.lines, key, self.header)
        base = self.header.partition("#")[0].strip("[]")
        if found is None and not base.startswith("network"):  # a [table]: its header's line
            headers = (f"[{base}.{key}]",) if base else (f"[{key}]", f"[[{key}]]")
            found = next(
                (n for n, text in enumerate(self.lines, 1) if _header_of(text) in headers), None
            )
        if found is None and self.parent is not None:
            return self.parent[0].line(self.parent[1])
        return found

    def table_line(self) -> int | None:
        """The line of this table's header (or of the key holding it inline)."""
        name, _, nth = self.header.partition("#")
        seen = -1
        for number, text in enumerate(self.lines, 1):
            if _header_of(text) == name:
                seen += 1
                if not nth or seen == int(nth):
                    return number
        return self.parent[0].line(self.parent[1]) if self.parent is not None else None

    def fail(self, key: str, message: str) -> ConfigError:
        line = self.line(key)
        at = f" (line {line})" if line else ""
        return ConfigError(f"{self.where}{key}{at}: {message}")

    def get(
        self, key: str, kind: type | tuple[type, ...], default: Any = ..., hint: str = ""
    ) -> Any:
        self.used.add(key)
        if key not in self.table:
            if default is ...:
                raise self._missing(key, hint)
            return default
        value = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(key, f"expected {_kinds(kinds)}, got a boolean")
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds):
            raise self.fail(key, f"expected {_kinds(kinds)}, got {_type_name(value)}")
        if isinstance(value, str) and "\x00" in value:
            raise self.fail(key, f"{value!r} contains a NUL character; remove it")
        if isinstance(value, float) and not math.isfinite(value):
            example = default if isinstance(default, float) else 1.0
            raise self.fail(key, f"{value} is not a finite number; write one such as {example}")
        return value

    def _missing(self, key: str, hint: str) -> ConfigError:
        table = self.header.partition("#")[0]
        line = self.table_line() if table else None
        inside = f" from the {table} at line {line}" if line else ""
        typo = _close(key, [k for k in self.table if k not in TABLE_KEYS.get(table, ())])
        maybe = f" (is {typo!r} a misspelling of it?)" if typo else ""
        return ConfigError(f"{self.where}{key}: missing{inside}{maybe}; {hint or 'add it'}")

    def check_unknown(self) -> None:
        table = self.header.partition("#")[0]
        known = sorted(self.used | set(TABLE_KEYS.get(table, ())))
        for key in self.table:
            if key in self.used:
                continue
            close = _close(key, known)
            elsewhere = [t for t, keys in TABLE_KEYS.items() if key in keys and t != table]
            if close:
                fix = f"did you mean {close}?"
            elif key in TABLE_KEYS[""] and table:
                fix = (
                    f"{key} is a top-level key: it must come before the first [table] "
                    f"(written after {table}, TOML reads it as part of {table})"
                )
            elif elsewhere:
                fix = f"{key} belongs in {' or '.join(elsewhere)}; move it under that header"
            else:
                fix = "check the spelling; see docs/config.md"
            raise self.fail(key, f"unknown key; {fix}")


def _close(key: str, candidates: list[str]) -> str | None:
    matches = difflib.get_close_matches(key, candidates, n=1, cutoff=0.75)
    return matches[0] if matches else None


def _type_name(value: object) -> str:
    if isinstance(value, dict):
        return "a table"
    return "a list" if isinstance(value, list) else type(value).__name__


def _header_of(text: str) -> str | None:
    """``"[underlay]"`` or ``"[[network]]"`` if the line is a table header, else None."""
    match = _HEADER_RE.match(text)
    return match.group(1).replace(" ", "").replace("\t", "") if match else None


_HEADER_RE = re.compile(r'^\s*(\[\[?[\sA-Za-z0-9_."-]+\]\]?)\s*(#.*)?$')


def _kinds(kinds: tuple[type, ...]) -> str:
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
        bool: "true/false",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _line_of(lines: list[str], key: str, header: str = "") -> int | None:
    """The line where ``key = ...`` is written inside the table ``header``
    (``""`` for the top level, ``"[underlay]"``, or ``"[[network]]#N"`` for the
    N-th network); ``None`` if it is not written there (a default or inline table)."""
    name, _, nth = header.partition("#")
    wanted = int(nth or 0)
    current, seen = "", -1
    pattern = re.compile(rf"""^\s*(["']?){re.escape(key)}\1\s*[=.]""")
    for number, text in enumerate(lines, 1):
        found = _header_of(text)
        if found is not None:
            current = found
            if current == name:
                seen += 1
            continue
        if current == name and (not nth or seen == wanted) and pattern.match(text):
            return number
    return None


def _ip(reader: _Reader, key: str, value: object, role: str = "a peer") -> str:
    """A unicast IPv4/IPv6 address written as a string (an integer such as 5 would
    otherwise read as 0.0.0.5)."""
    if not isinstance(value, str):
        raise reader.fail(
            key, f'{value!r} is not an address string; write it in quotes, e.g. "10.0.0.2"'
        )
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise reader.fail(key, f"{value!r} is not an IPv4/IPv6 address") from None
    if (
        address.is_unspecified
        or address.is_multicast
        or address == ipaddress.IPv4Address("255.255.255.255")
    ):
        raise reader.fail(
            key, f"{value!r} is not a unicast address; give {role}'s own underlay address"
        )
    return str(address)


def _mtu(reader: _Reader, key: str, value: int | None, low: int, high: int) -> int | None:
    if value is not None and not low <= value <= high:
        raise reader.fail(key, f"{value} is out of range; use {low}..{high}")
    return value


def _int(reader: _Reader, key: str, default: int, low: int, high: int, unit: str = "") -> int:
    value: int = reader.get(key, int, default)
    if not low <= value <= high:
        raise reader.fail(key, f"{value}{unit} is out of range; use {low}..{high}{unit}")
    return value


def _seconds(reader: _Reader, key: str, default: float, low: float, high: float) -> float:
    value: float = reader.get(key, float, default)
    if not low <= value <= high:
        raise reader.fail(key, f"{value:g} s is out of range; use {low:g}..{high:g} s")
    return value


def _rate(reader: _Reader, key: str) -> float:
    value: float = reader.get(key, float, 0.0)
    if not 0.0 <= value <= 1.0:
        raise reader.fail(key, f"{value} is not a fraction; use 0.0..1.0 (0.01 = 1%)")
    return value


def _netns(reader: _Reader, key: str) -> str | None:
    value: str | None = reader.get(key, str, None)
    if value is not None and (not _NETNS_RE.match(value) or value in (".", "..")):
        raise reader.fail(
            key,
            f"{value!r} is not a network namespace name (as `ip netns list` shows them: "
            "no '/', spaces or empty name)",
        )
    return value


def _listen(reader: _Reader, key: str, value: str) -> tuple[str, int]:
    """``"127.0.0.1:9723"`` or ``"[::1]:9723"`` as ``(host, port)``."""
    fix = 'write "127.0.0.1:9723", "0.0.0.0:9723" or "[::1]:9723"'
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise reader.fail(key, f"{value!r} is not host:port; {fix}")
    if host.startswith("[") and host.endswith("]"):
        host, bracketed = host[1:-1], True
    else:
        bracketed = False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise reader.fail(key, f"{host!r} is not an IPv4/IPv6 address; {fix}") from None
    if address.version == 6 and not bracketed:
        raise reader.fail(key, f'{value!r}: put an IPv6 address in brackets, e.g. "[::1]:9723"')
    if address.version == 4 and bracketed:
        raise reader.fail(key, f"{value!r}: brackets are only for IPv6; {fix}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise reader.fail(key, f"{port_text!r} is not a TCP port; use 1..65535 (9723 is usual)")
    return str(address), int(port_text)


def etcd_url_problem(url: object) -> str | None:
    """Why ``url`` is not an etcd client URL, or ``None`` when it is one: scheme
    http or https, a host (a name, an IPv4 address, or an IPv6 address in brackets),
    an optional port 1..65535, and nothing else (no user, path, query or fragment)."""
    if not isinstance(url, str):
        return f"{url!r} is not a string"
    if not url or any(c.isspace() or not c.isprintable() for c in url):
        return f"{url!r} is empty or has spaces"
    netloc = url.partition("://")[2].partition("/")[0].rpartition("@")[2]
    if netloc.count(":") > 1 and not netloc.startswith("["):
        if _is_ipv6(netloc) or _is_ipv6(netloc.rpartition(":")[0]):
            return f"{url!r}: put an IPv6 address in brackets, e.g. http://[fd00::5]:2379"
        return f"{url!r}: {netloc!r} is not host:port (one ':' before the port)"
    if netloc.startswith("[") and not _is_ipv6(netloc[1:].partition("]")[0]):
        return f"{url!r}: {netloc[1:].partition(']')[0]!r} in brackets is not an IPv6 address"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        reason = "the port must be a number 1..65535" if "port" in str(exc).lower() else exc
        return f"{url!r}: {reason}"
    if parts.scheme not in ("http", "https"):
        return f"{url!r} does not start with http:// or https://"
    if "@" in parts.netloc:
        return f"{url!r} has a user name; give credentials as client certificates (cert, key)"
    if parts.path not in ("", "/") or parts.query or parts.fragment or url.endswith(("?", "#")):
        return f"{url!r} has a path, query or fragment; give scheme://host:port only"
    host = parts.hostname or ""
    if not host:
        return f"{url!r} has no host"
    if ":" in host or "[" in parts.netloc:
        if not parts.netloc.startswith("["):
            return f"{url!r}: put an IPv6 address in brackets, e.g. http://[fd00::5]:2379"
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{url!r}: {host!r} in brackets is not an IPv6 address"
    elif not _HOST_RE.match(host):
        return f"{url!r}: {host!r} is not a host name or address"
    if port is not None and not 1 <= port <= 65535:
        return f"{url!r}: the port must be 1..65535"
    return None


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def parse_config(text: str, source: str = "<config>") -> Config:
    """Parse and validate a configuration; raise :class:`ConfigError` on any problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    lines = text.splitlines()
    top = _Reader(data, "", lines)
    _check_misplaced(top)
    name = top.get("name", str, hint='add name = "host1" (names the control socket)')
    if not NAME_RE.match(name):
        raise top.fail("name", f"{name!r} must be 1-32 letters, digits, '.', '_' or '-'")
    control_dir = top.get("control_dir", str, "/run/sclp")
    if not os.path.isabs(control_dir):
        raise top.fail(
            "control_dir",
            f'{control_dir!r} is not an absolute path; write e.g. control_dir = "/run/sclp"',
        )
    socket_bytes = len(f"{control_dir}/{name}.sock".encode())
    if socket_bytes > _SOCKET_PATH_MAX:
        raise top.fail(
            "control_dir",
            f"the control socket {control_dir}/{name}.sock would be {socket_bytes} bytes, "
            f"more than a Unix socket path can hold ({_SOCKET_PATH_MAX}); use a shorter path",
        )

    u = _Reader(
        top.get("underlay", dict, hint='add an [underlay] table with local = "..."'),
        "underlay.",
        lines,
        "[underlay]",
        (top, "underlay"),
    )
    local = _ip(u, "local", u.get("local", str, hint='add local = "10.0.0.1"'), "this host")
    carrier = u.get("sclp_carrier", str, "ip")
    if carrier not in CARRIERS:
        raise u.fail("sclp_carrier", f'{carrier!r} is not a carrier; use "ip" or "udp"')
    port = u.get("sclp_udp_port", int, SCLP_UDP_PORT)
    if not 1 <= port <= 65535:
        raise u.fail("sclp_udp_port", f"{port} is not a UDP port; use 1..65535")
    vxlan_port = u.get("vxlan_port", int, VXLAN_PORT)
    geneve_port = u.get("geneve_port", int, GENEVE_PORT)
    for key, value, usual in (
        ("vxlan_port", vxlan_port, f"{VXLAN_PORT}, or 8472 for a kernel device without dstport"),
        ("geneve_port", geneve_port, f"{GENEVE_PORT}"),
    ):
        if not 1 <= value <= 65535:
            raise u.fail(key, f"{value} is not a UDP port; use 1..65535 ({usual})")
    underlay_mtu = _mtu(u, "mtu", u.get("mtu", int, None), 576, 65535)
    f = _Reader(
        u.get("faults", dict, {}), "underlay.faults.", lines, "[underlay.faults]", (u, "faults")
    )
    faults = Faults(
        drop=_rate(f, "drop"),
        reorder=_rate(f, "reorder"),
        reorder_depth=_int(f, "reorder_depth", 3, 1, 1000, " packets"),
        duplicate=_rate(f, "duplicate"),
        corrupt=_rate(f, "corrupt"),
        seed=_int(f, "seed", 1, 0, (1 << 63) - 1),
    )
    f.check_unknown()
    underlay = Underlay(
        local=local,
        mtu=underlay_mtu,
        sclp_carrier=Carrier(carrier),
        sclp_udp_port=port,
        namespace=_netns(u, "namespace"),
        faults=faults,
        vxlan_port=vxlan_port,
        geneve_port=geneve_port,
    )
    u.check_unknown()

    lim = _Reader(top.get("limits", dict, {}), "limits.", lines, "[limits]", (top, "limits"))
    limits = Limits(
        reasm_timeout=_seconds(lim, "reasm_timeout", 1.0, 0.01, 600.0),
        reasm_max_bytes=_int(lim, "reasm_max_bytes", 32 * 1024 * 1024, 65536, 1 << 36),
        reasm_max_entries=_int(lim, "reasm_max_entries", 1024, 1, 1 << 20),
        fdb_aging=_seconds(lim, "fdb_aging", 300.0, 1.0, 1_000_000.0),
        fdb_max_entries=_int(lim, "fdb_max_entries", 4096, 1, 1 << 24),
    )
    lim.check_unknown()

    t = _Reader(top.get("tuning", dict, {}), "tuning.", lines, "[tuning]", (top, "tuning"))
    rx_taps = t.get("rx_taps", str, "ring")
    if rx_taps not in RX_TAPS_MODES:
        raise t.fail("rx_taps", f'{rx_taps!r} is not a reader; use "ring", "recvmmsg" or "off"')
    tuning = Tuning(
        rx_batch=t.get("rx_batch", bool, True),
        deliver_gso=t.get("deliver_gso", bool, True),
        tx_ring=t.get("tx_ring", bool, True),
        rx_taps=rx_taps,
    )
    t.check_unknown()

    m = _Reader(top.get("metrics", dict, {}), "metrics.", lines, "[metrics]", (top, "metrics"))
    listen = m.get("listen", str, None)
    metrics = Metrics(listen=None if listen is None else _listen(m, "listen", listen))
    m.check_unknown()
    cluster = None
    if "cluster" in data:
        cluster = _cluster(
            _Reader(top.get("cluster", dict), "cluster.", lines, "[cluster]", (top, "cluster"))
        )

    if isinstance(data.get("network"), dict):
        raise top.fail(
            "network", "write [[network]] (double brackets) for each network, not [network]"
        )
    raw_networks = top.get("network", list, hint="add at least one [[network]] table")
    if not raw_networks:
        raise top.fail("network", "empty; add at least one [[network]] table")
    networks, readers = [], []
    for index, raw in enumerate(raw_networks):
        if not isinstance(raw, dict):
            raise top.fail(
                "network",
                f"network[{index}] is {_type_name(raw)}, not a table; "
                "write a [[network]] table for each network",
            )
        reader = _Reader(raw, f"network[{index}].", lines, f"[[network]]#{index}", (top, "network"))
        networks.append(_network(reader))
        readers.append(reader)
    bgp = None
    if "bgp" in data:
        bgp = _bgp(
            _Reader(top.get("bgp", dict), "bgp.", lines, "[bgp]", (top, "bgp")),
            underlay,
            networks,
        )
    top.check_unknown()
    _check_unique(networks, readers)
    _check_ports(u, underlay, networks)
    if underlay_mtu is not None:
        for net, reader in zip(networks, readers, strict=True):
            problem = vm_mtu_problem(net, local, underlay_mtu, Carrier(carrier))
            if problem:
                raise reader.fail("mtu", f"{problem}, or raise underlay.mtu")
    return Config(
        name=name,
        underlay=underlay,
        networks=tuple(networks),
        limits=limits,
        control_dir=control_dir,
        tuning=tuning,
        metrics=metrics,
        cluster=cluster,
        bgp=bgp,
    )


def vm_mtu_problem(
    network: Network, local: str, underlay_mtu: int, carrier: Carrier, device: str = ""
) -> str:
    """Why a classic tunnel's ``mtu`` is too large for ``underlay_mtu``, or ``""``.

    Up to the largest VM MTU the tunnel carries unfragmented (its overhead is the
    tunnel type's own, :mod:`sclp.endpoint.tunnels`) the outer packets need no
    fragmentation; above it, up to the underlay MTU itself, the sending kernel cuts
    the outer packet of a full-size frame in two (a VM MTU of 1500 on a 1500-byte
    underlay, which the benchmark measures); more than the underlay MTU is refused.
    SCLP and STT segment frames themselves and take any ``mtu``.  ``device``: the
    interface the underlay MTU was read from, if it was."""
    if network.mtu is None or network.mtu <= underlay_mtu:
        return ""
    from sclp.endpoint.tunnels import Underlay as TunnelUnderlay
    from sclp.endpoint.tunnels import largest_vm_mtu

    largest = largest_vm_mtu(network.protocol, TunnelUnderlay(local, underlay_mtu, carrier))
    if largest is None:
        return ""
    return (
        f"{network.mtu} is more than the underlay MTU {underlay_mtu}"
        f"{f' (of {device})' if device else ''}; use mtu = {largest} "
        f"(the most a {network.protocol.value} packet, {underlay_mtu - largest} bytes of "
        f"headers, carries unfragmented) or at most {underlay_mtu} (full-size frames then "
        "go in two fragments)"
    )


def _check_misplaced(top: _Reader) -> None:
    """A top-level key written after a [table] header lands inside that table:
    say so instead of "missing" (TOML has no way to go back to the top level)."""
    for key in _TOP_SCALARS:
        if key in top.table:
            continue
        for table_name, value in top.table.items():
            tables = value if isinstance(value, list) else [value]
            for index, table in enumerate(tables):
                header = f"[[{table_name}]]" if isinstance(value, list) else f"[{table_name}]"
                if not isinstance(table, dict) or key not in table:
                    continue
                if key in TABLE_KEYS.get(header, ()):
                    continue
                where = f"{table_name}[{index}]." if isinstance(value, list) else f"{table_name}."
                nth = f"#{index}" if isinstance(value, list) else ""
                reader = _Reader(table, where, top.lines, header + nth, (top, table_name))
                raise reader.fail(
                    key,
                    f"{key} must come before the first [table]: written after {header}, "
                    f"TOML reads it as part of {header}",
                )


_PREFIX_RE = re.compile(r"^/[A-Za-z0-9_./-]{0,100}$")


def cluster_prefix_problem(prefix: str) -> str | None:
    """Why ``prefix`` is not an etcd key prefix of the registry, or ``None``."""
    if not _PREFIX_RE.match(prefix.rstrip("/") or "/"):
        return f'{prefix!r} is not a key prefix like "/sclp"'
    return None


def _cluster(c: _Reader) -> Cluster:
    if not c.table:
        line = c.table_line()
        at = f" (line {line})" if line else ""
        raise ConfigError(f"cluster{at}: empty [cluster]; add etcd = [...] or remove the table")
    urls = c.get("etcd", list, hint='add etcd = ["http://127.0.0.1:2379"]')
    if not urls:
        raise c.fail("etcd", 'empty; add at least one, e.g. etcd = ["http://127.0.0.1:2379"]')
    for url in urls:
        problem = etcd_url_problem(url)
        if problem:
            raise c.fail("etcd", f'{problem}; write URLs like "http://10.0.0.5:2379"')
    prefix = c.get("prefix", str, "/sclp").rstrip("/") or "/"
    problem = cluster_prefix_problem(prefix)
    if problem:
        raise c.fail("prefix", problem)
    ttl = c.get("lease_ttl", int, 10)
    if not 2 <= ttl <= 3600:
        raise c.fail("lease_ttl", f"{ttl} s is out of range; use 2..3600")
    files = {key: c.get(key, str, None) for key in ("ca", "cert", "key")}
    if (files["cert"] is None) != (files["key"] is None):
        given, missing = ("key", "cert") if files["cert"] is None else ("cert", "key")
        raise c.fail(given, f"{missing} is missing; give both cert and key")
    for key, path in files.items():
        if path is not None:
            problem = readable_file_problem(path)
            if problem:
                raise c.fail(key, problem)
    if any(files.values()) and not all(u.startswith("https://") for u in urls):
        raise c.fail("etcd", "TLS files are given, so use https:// URLs")
    c.check_unknown()
    return Cluster(
        etcd=tuple(u.rstrip("/") for u in urls),
        prefix=prefix,
        lease_ttl=ttl,
        ca=files["ca"],
        cert=files["cert"],
        key=files["key"],
    )


def readable_file_problem(path: str) -> str | None:
    """Why ``path`` is not a file this process can read (one phrase), or ``None``."""
    if not path:
        return "empty path; give a file"
    try:
        if not os.path.exists(path):
            return f"{path} is not a readable file: it does not exist"
        if os.path.isdir(path):
            return f"{path} is not a readable file: it is a directory"
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            return f"{path} is not a readable file"
    except ValueError:  # a NUL character
        return f"{path!r} is not a file name"
    return None


def _asn(r: _Reader, key: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 0xFFFFFFFF:
        raise r.fail(key, f"{value!r} is not an AS number; use 1..4294967295 (64512.. private)")
    return value


def _bgp(b: _Reader, underlay: Underlay, networks: list[Network]) -> Bgp:
    if not b.table:
        line = b.table_line()
        at = f" (line {line})" if line else ""
        raise ConfigError(f"bgp{at}: empty [bgp]; add asn and neighbors or remove the table")
    asn = _asn(b, "asn", b.get("asn", int, hint="add asn = 65001 (this endpoint's AS)"))
    default_id = underlay.local if ipaddress.ip_address(underlay.local).version == 4 else None
    router_id = b.get("router_id", str, default_id)
    if router_id is None:
        raise ConfigError('bgp.router_id: missing; add router_id = "10.0.0.1" (an IPv4 address)')
    try:
        router_id = str(ipaddress.IPv4Address(router_id))
    except ValueError:
        raise b.fail("router_id", f"{router_id!r} is not an IPv4 address") from None
    raw = b.get("neighbors", list, hint='add neighbors = [{ address = "10.0.0.254", asn = 65000 }]')
    if not raw:
        raise b.fail(
            "neighbors", 'empty; add neighbors = [{ address = "10.0.0.254", asn = 65000 }]'
        )
    neighbors = []
    for entry in raw:
        if not isinstance(entry, dict) or set(entry) != {"address", "asn"}:
            raise b.fail("neighbors", 'entries look like { address = "10.0.0.254", asn = 65000 }')
        if not isinstance(entry["address"], str):
            raise b.fail("neighbors", f"{entry['address']!r} is not an address string")
        address = _ip(b, "neighbors", entry["address"])
        if address == underlay.local:
            raise b.fail("neighbors", f"{address} is this endpoint (underlay.local)")
        neighbors.append(BgpNeighbor(address, _asn(b, "neighbors", entry["asn"])))
    if len({n.address for n in neighbors}) != len(neighbors):
        raise b.fail("neighbors", "a neighbor address appears twice")
    hold = b.get("hold_time", int, 9)
    if not 3 <= hold <= 65535:
        raise b.fail("hold_time", f"{hold} s is out of range; use 3..65535 (BGP's minimum is 3)")
    b.check_unknown()
    if any(n.protocol is Protocol.VXLAN_SCLP for n in networks) and (
        underlay.sclp_carrier is Carrier.UDP and underlay.sclp_udp_port == underlay.vxlan_port
    ):
        raise ConfigError(
            f"underlay.sclp_udp_port: {underlay.sclp_udp_port} is also underlay.vxlan_port, "
            "which a vxlan-sclp network opens for its plain-VXLAN EVPN peers; change one"
        )
    return Bgp(asn=asn, router_id=router_id, neighbors=tuple(neighbors), hold_time=hold)


def _rd_rt(n: _Reader) -> tuple[str | None, tuple[str, ...]]:
    rd = n.get("rd", str, None)
    if rd is not None:
        try:
            parse_rd(rd)
        except ValueError as exc:
            raise n.fail("rd", f'{exc}; write rd = "10.0.0.1:42" or "65001:42"') from None
    targets = n.get("route_targets", list, [])
    for rt in targets:
        try:
            parse_rt(rt if isinstance(rt, str) else "")
        except ValueError:
            raise n.fail(
                "route_targets", f'{rt!r} is not a route target; write ["65000:42"]'
            ) from None
    return rd, tuple(targets)


def _network(n: _Reader) -> Network:
    vni = n.get("vni", int, hint="add vni = 42 (1..16777215)")
    if not 0 < vni < 1 << 24:
        raise n.fail("vni", f"{vni} does not fit in 24 bits; use 1..16777215")
    protocol = n.get("protocol", str, "vxlan-sclp")
    if protocol not in PROTOCOLS:
        raise n.fail(
            "protocol", f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}"
        )
    tap = n.get("tap", str, None)
    if tap is not None and (not _IFNAME_RE.match(tap) or tap in (".", "..")):
        raise n.fail(
            "tap", f"{tap!r} is not a valid interface name (1-15 characters, no spaces or '/')"
        )
    attach = tuple(_pattern(n, p) for p in n.get("attach", list, []))
    if tap is None and "attach" not in n.table:  # attach = []: ports from sclp-cni only
        raise n._missing(
            "tap",
            'add tap = "tap42" (a TAP the endpoint creates) '
            'or attach = ["vnet*"] (existing interfaces, docs/vms.md), or both; '
            "attach = [] if only containers join (sclp-cni, docs/containers.md)",
        )
    if tap is None and (n.table.get("namespace") or n.table.get("address")):
        key = "namespace" if n.table.get("namespace") else "address"
        raise n.fail(key, "applies to the network's own tap; add tap = ... or remove it")
    peers = tuple(_ip(n, "peers", p) for p in n.get("peers", list, []))
    address = n.get("address", str, None)
    if address is not None:
        try:
            ipaddress.ip_interface(address)
        except ValueError:
            raise n.fail(
                "address", f"{address!r} is not an address with prefix, e.g. 192.168.42.1/24"
            ) from None
        if "/" not in address:
            raise n.fail("address", f"{address!r} needs a prefix length, e.g. {address}/24")
    mtu = _mtu(n, "mtu", n.get("mtu", int, None), 576, 65535)
    static = []
    for entry in n.get("static", list, []):
        if not isinstance(entry, dict) or set(entry) != {"mac", "peer"}:
            raise n.fail(
                "static", 'entries look like {mac = "02:00:00:00:00:01", peer = "10.0.0.2"}'
            )
        static.append(StaticEntry(mac=_mac(n, entry["mac"]), peer=_ip(n, "static", entry["peer"])))
    macs = [entry.mac for entry in static]
    for mac in macs:
        if macs.count(mac) > 1:
            raise n.fail("static", f"{mac.hex(':')} appears twice; give each MAC one peer")
    network = Network(
        vni=vni,
        protocol=Protocol(protocol),
        tap=tap,
        peers=peers,
        namespace=_netns(n, "namespace"),
        address=address,
        mtu=mtu,
        static=tuple(static),
        attach=attach,
    )
    rd, route_targets = _rd_rt(n)
    if rd is not None or route_targets:
        network = replace(network, rd=rd, route_targets=route_targets)
    n.check_unknown()
    return network


def _pattern(n: _Reader, value: object) -> str:
    if not isinstance(value, str) or not _PATTERN_RE.match(value):
        raise n.fail(
            "attach",
            f"{value!r} is not an interface name or shell-style pattern; "
            'write attach = ["vnet*", "ct-web0"]',
        )
    shortest = shortest_match(value)
    if shortest > IFNAMSIZ_CHARS:
        raise n.fail(
            "attach",
            f"{value!r} matches only names of {shortest} or more characters, and an "
            f"interface name has at most {IFNAMSIZ_CHARS}; shorten the pattern",
        )
    if fnmatch.fnmatchcase("lo", value):
        raise n.fail(
            "attach",
            f"{value!r} matches lo, the host's loopback, so it would match host devices too; "
            'make it narrower, e.g. "vnet*"',
        )
    return value


def shortest_match(pattern: str) -> int:
    """The length of the shortest name the fnmatch ``pattern`` can match: ``*``
    counts 0, ``?`` and a ``[...]`` class 1, any other character 1 (an unclosed
    ``[`` is a literal, as fnmatch reads it)."""
    length, i = 0, 0
    while i < len(pattern):
        c = pattern[i]
        i += 1
        if c == "*":
            continue
        if c == "[":
            j = i + (1 if pattern[i : i + 1] == "!" else 0)
            j += 1 if pattern[j : j + 1] == "]" else 0
            close = pattern.find("]", j)
            if close >= 0:
                i = close + 1
        length += 1
    return length


def _mac(n: _Reader, value: object) -> bytes:
    text = value if isinstance(value, str) else ""
    if not re.fullmatch(r"([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}", text):
        raise n.fail("static", f"{value!r} is not a MAC address like 02:00:00:00:00:01")
    return bytes.fromhex(text.replace(":", ""))


def _check_unique(networks: list[Network], readers: list[_Reader]) -> None:
    seen_vni: set[int] = set()
    seen_tap: set[str] = set()
    for net, reader in zip(networks, readers, strict=True):
        if net.vni in seen_vni:
            raise reader.fail("vni", f"{net.vni} appears twice; each [[network]] needs its own VNI")
        if net.tap is not None and net.tap in seen_tap:
            raise reader.fail("tap", f"{net.tap!r} appears twice; give each network its own TAP")
        seen_vni.add(net.vni)
        if net.tap is not None:
            seen_tap.add(net.tap)


def _check_ports(u: _Reader, underlay: Underlay, networks: list[Network]) -> None:
    """The UDP ports the networks use (VXLAN, Geneve, the SCLP UDP carrier) must
    differ: each is one socket of this endpoint.  Blamed on the key written last."""
    protocols = {net.protocol for net in networks}
    used = []
    if Protocol.VXLAN in protocols:
        used.append(("vxlan_port", underlay.vxlan_port))
    if Protocol.GENEVE in protocols:
        used.append(("geneve_port", underlay.geneve_port))
    if underlay.sclp_carrier is Carrier.UDP and any(net.is_sclp for net in networks):
        used.append(("sclp_udp_port", underlay.sclp_udp_port))
    for i, (key, port) in enumerate(used):
        for other, other_port in used[:i]:
            if port != other_port:
                continue
            lines = {k: _line_of(u.lines, k, u.header) or 0 for k in (key, other)}
            blamed, kept = (key, other) if lines[key] >= lines[other] else (other, key)
            at = f"line {lines[kept]}" if lines[kept] else "its default"
            raise u.fail(
                blamed,
                f"{port} is also underlay.{kept} ({at}); each tunnel needs its own "
                "UDP port, so change one of them",
            )


def load_config(path: str | Path) -> Config:
    """Read and validate ``path``; :class:`ConfigError` names what is wrong."""
    fix = "give the endpoint's .toml file"
    if not str(path):
        raise ConfigError(f"the config file name is empty; {fix}")
    try:
        if Path(path).is_dir():
            raise ConfigError(f"cannot read config file {path}: it is a directory; {fix}")
        with open(path, "rb") as file:
            data = file.read(_MAX_FILE_BYTES + 1)
    except OSError as exc:
        hint = "; check its permissions" if isinstance(exc, PermissionError) else f"; {fix}"
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}{hint}") from None
    except ValueError:  # a NUL character in the name
        raise ConfigError(f"cannot read config file {path!r}: not a file name; {fix}") from None
    if len(data) > _MAX_FILE_BYTES:
        raise ConfigError(f"config file {path} is larger than {_MAX_FILE_BYTES >> 20} MiB; {fix}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"config file {path} (line {line}): byte {data[exc.start]:#04x} is not UTF-8 "
            "text; save the file as UTF-8 (TOML files are UTF-8)"
        ) from None
    return parse_config(text, str(path))

"""The endpoint's TOML configuration: loading, defaults and validation.

This file format is the user contract (see docs/config.md).  Every problem is
reported as one :class:`ConfigError` line that names the key, the line in the file
where it can be found, and what to write instead; nothing here raises anything
else for bad input.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

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
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
# An attach pattern: interface-name characters and fnmatch's * ? [ ] ! (no '/').
_PATTERN_RE = re.compile(r"^[A-Za-z0-9_.*?\[\]!-]{1,64}$")


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

    @property
    def control_socket(self) -> str:
        return f"{self.control_dir}/{self.name}.sock"


class _Reader:
    """Typed access to one TOML table, with errors that point at the key's line."""

    def __init__(
        self, table: dict[str, Any], where: str, lines: list[str], header: str = ""
    ) -> None:
        self.table = table
        self.where = where
        self.lines = lines
        self.header = header  # e.g. "[underlay]" or "[[network]]#2": where to look for keys
        self.used: set[str] = set()

    def fail(self, key: str, message: str) -> ConfigError:
        line = _line_of(self.lines, key, self.header)
        at = f" (line {line})" if line else ""
        return ConfigError(f"{self.where}{key}{at}: {message}")

    def get(
        self, key: str, kind: type | tuple[type, ...], default: Any = ..., hint: str = ""
    ) -> Any:
        self.used.add(key)
        if key not in self.table:
            if default is ...:
                raise ConfigError(f"{self.where}{key}: missing; {hint or 'add it'}")
            return default
        value = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(key, f"expected {_kinds(kinds)}, got a boolean")
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds):
            raise self.fail(key, f"expected {_kinds(kinds)}, got {type(value).__name__}")
        return value

    def check_unknown(self) -> None:
        for key in self.table:
            if key not in self.used:
                raise self.fail(key, "unknown key (check the spelling; see docs/config.md)")


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
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
    for number, text in enumerate(lines, 1):
        stripped = text.strip()
        if stripped.startswith("["):
            current = stripped.split("#")[0].strip().replace(" ", "")
            if current == name:
                seen += 1
            continue
        if current == name and (not nth or seen == wanted) and pattern.match(text):
            return number
    return None


def _ip(reader: _Reader, key: str, value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise reader.fail(key, f"{value!r} is not an IPv4/IPv6 address") from None


def _mtu(reader: _Reader, key: str, value: int | None, low: int, high: int) -> int | None:
    if value is not None and not low <= value <= high:
        raise reader.fail(key, f"{value} is out of range; use {low}..{high}")
    return value


def _rate(reader: _Reader, key: str) -> float:
    value: float = reader.get(key, float, 0.0)
    if not 0.0 <= value <= 1.0:
        raise reader.fail(key, f"{value} is not a fraction; use 0.0..1.0 (0.01 = 1%)")
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


def parse_config(text: str, source: str = "<config>") -> Config:
    """Parse and validate a configuration; raise :class:`ConfigError` on any problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    lines = text.splitlines()
    top = _Reader(data, "", lines)
    name = top.get("name", str, hint='add name = "host1" (names the control socket)')
    if not _NAME_RE.match(name):
        raise top.fail("name", f"{name!r} must be 1-32 letters, digits, '.', '_' or '-'")
    control_dir = top.get("control_dir", str, "/run/sclp")

    u = _Reader(
        top.get("underlay", dict, hint='add an [underlay] table with local = "..."'),
        "underlay.",
        lines,
        "[underlay]",
    )
    local = _ip(u, "local", u.get("local", str, hint='add local = "10.0.0.1"'))
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
    f = _Reader(u.get("faults", dict, {}), "underlay.faults.", lines, "[underlay.faults]")
    faults = Faults(
        drop=_rate(f, "drop"),
        reorder=_rate(f, "reorder"),
        reorder_depth=f.get("reorder_depth", int, 3),
        duplicate=_rate(f, "duplicate"),
        corrupt=_rate(f, "corrupt"),
        seed=f.get("seed", int, 1),
    )
    f.check_unknown()
    underlay = Underlay(
        local=local,
        mtu=underlay_mtu,
        sclp_carrier=Carrier(carrier),
        sclp_udp_port=port,
        namespace=u.get("namespace", str, None),
        faults=faults,
        vxlan_port=vxlan_port,
        geneve_port=geneve_port,
    )
    u.check_unknown()

    lim = _Reader(top.get("limits", dict, {}), "limits.", lines, "[limits]")
    limits = Limits(
        reasm_timeout=lim.get("reasm_timeout", float, 1.0),
        reasm_max_bytes=lim.get("reasm_max_bytes", int, 32 * 1024 * 1024),
        reasm_max_entries=lim.get("reasm_max_entries", int, 1024),
        fdb_aging=lim.get("fdb_aging", float, 300.0),
        fdb_max_entries=lim.get("fdb_max_entries", int, 4096),
    )
    for key in (
        "reasm_timeout",
        "reasm_max_bytes",
        "reasm_max_entries",
        "fdb_aging",
        "fdb_max_entries",
    ):
        if getattr(limits, key) <= 0:
            raise lim.fail(key, "must be positive")
    lim.check_unknown()

    t = _Reader(top.get("tuning", dict, {}), "tuning.", lines, "[tuning]")
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

    m = _Reader(top.get("metrics", dict, {}), "metrics.", lines, "[metrics]")
    listen = m.get("listen", str, None)
    metrics = Metrics(listen=None if listen is None else _listen(m, "listen", listen))
    m.check_unknown()
    cluster = _cluster(_Reader(top.get("cluster", dict, {}), "cluster.", lines, "[cluster]"))

    raw_networks = top.get("network", list, hint="add at least one [[network]] table")
    if not raw_networks:
        raise ConfigError("network: empty; add at least one [[network]] table")
    networks = []
    for index, raw in enumerate(raw_networks):
        if not isinstance(raw, dict):
            raise ConfigError(f"network[{index}]: expected a [[network]] table")
        networks.append(_network(_Reader(raw, f"network[{index}].", lines, f"[[network]]#{index}")))
    top.check_unknown()
    _check_unique(networks)
    _check_ports(u, underlay, networks)
    return Config(
        name=name,
        underlay=underlay,
        networks=tuple(networks),
        limits=limits,
        control_dir=control_dir,
        tuning=tuning,
        metrics=metrics,
        cluster=cluster,
    )


_PREFIX_RE = re.compile(r"^/[A-Za-z0-9_./-]{0,100}$")


def _cluster(c: _Reader) -> Cluster | None:
    if not c.table:
        return None
    urls = c.get("etcd", list, hint='add etcd = ["http://127.0.0.1:2379"]')
    if not urls:
        raise c.fail("etcd", 'empty; add at least one, e.g. etcd = ["http://127.0.0.1:2379"]')
    for url in urls:
        if not isinstance(url, str) or not re.fullmatch(r"https?://[^/\s]+(:\d+)?/?", url):
            raise c.fail("etcd", f'{url!r} is not an etcd URL like "http://10.0.0.5:2379"')
    prefix = c.get("prefix", str, "/sclp").rstrip("/") or "/"
    if not _PREFIX_RE.match(prefix):
        raise c.fail("prefix", f'{prefix!r} is not a key prefix like "/sclp"')
    ttl = c.get("lease_ttl", int, 10)
    if not 2 <= ttl <= 3600:
        raise c.fail("lease_ttl", f"{ttl} s is out of range; use 2..3600")
    files = {key: c.get(key, str, None) for key in ("ca", "cert", "key")}
    if (files["cert"] is None) != (files["key"] is None):
        raise c.fail("cert" if files["cert"] is None else "key", "give both cert and key")
    for key, path in files.items():
        if path is not None and not Path(path).is_file():
            raise c.fail(key, f"{path} is not a readable file")
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
    if tap is not None and not _IFNAME_RE.match(tap):
        raise n.fail(
            "tap", f"{tap!r} is not a valid interface name (1-15 characters, no spaces or '/')"
        )
    attach = tuple(_pattern(n, p) for p in n.get("attach", list, []))
    if tap is None and not attach:
        raise ConfigError(
            f'{n.where}tap: missing; add tap = "tap42" (a TAP the endpoint creates) '
            'or attach = ["vnet*"] (existing interfaces, docs/vms.md), or both'
        )
    if tap is None and (n.table.get("namespace") or n.table.get("address")):
        key = "namespace" if n.table.get("namespace") else "address"
        raise n.fail(key, "applies to the network's own tap; add tap = ... or remove it")
    peers_raw = n.get("peers", list, [])
    peers = tuple(_ip(n, "peers", p) if isinstance(p, str) else _bad_peer(n, p) for p in peers_raw)
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
    network = Network(
        vni=vni,
        protocol=Protocol(protocol),
        tap=tap,
        peers=peers,
        namespace=n.get("namespace", str, None),
        address=address,
        mtu=mtu,
        static=tuple(static),
        attach=attach,
    )
    n.check_unknown()
    return network


def _pattern(n: _Reader, value: object) -> str:
    if not isinstance(value, str) or not _PATTERN_RE.match(value):
        raise n.fail(
            "attach",
            f"{value!r} is not an interface name or shell-style pattern; "
            'write attach = ["vnet*", "ct-web0"]',
        )
    return value


def _bad_peer(n: _Reader, value: object) -> str:
    raise n.fail("peers", f'{value!r} is not an address string; write peers = ["10.0.0.2"]')


def _mac(n: _Reader, value: object) -> bytes:
    text = value if isinstance(value, str) else ""
    if not re.fullmatch(r"([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}", text):
        raise n.fail("static", f"{value!r} is not a MAC address like 02:00:00:00:00:01")
    return bytes.fromhex(text.replace(":", ""))


def _check_unique(networks: list[Network]) -> None:
    seen_vni: set[int] = set()
    seen_tap: set[str] = set()
    for index, net in enumerate(networks):
        if net.vni in seen_vni:
            raise ConfigError(
                f"network[{index}].vni: {net.vni} appears twice; each [[network]] needs its own VNI"
            )
        if net.tap is not None and net.tap in seen_tap:
            raise ConfigError(
                f"network[{index}].tap: {net.tap!r} appears twice; give each network its own TAP"
            )
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
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    return parse_config(text, str(path))

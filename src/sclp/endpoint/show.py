"""What a running endpoint knows, for ``sclp show fdb|peers|ports``.

The control socket's ``show fdb``, ``show peers`` and ``show ports`` requests are
answered from the event loop (:class:`~sclp.endpoint.control.ControlServer`), so every
function here runs between two batches of forwarding: it reads the data path, never
changes it, and builds rows as plain lists (``{"columns": [...], "rows": [[...]]}``),
the cheapest JSON to build and to dump for a table of many thousands of entries; the
FDB, which can be that long, is copied at once and sent in parts
(:func:`fdb_streamed`), so the loop forwards between them.  The
``sclp show`` command turns each row into an object with the column names as keys
(docs/operations.md, "Looking inside: sclp show").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from sclp.endpoint.control import Streamed
from sclp.endpoint.datapath import DataPath, VmPort
from sclp.endpoint.txerrors import TxErrors
from sclp.switch.fdb import Origin

FDB_COLUMNS: Final = ("vni", "mac", "port", "peer", "origin", "age_s")
PEER_COLUMNS: Final = (
    "vni",
    "address",
    "protocol",
    "carrier",
    "origin",
    "last_heard_s",
    "tx_frames",
    "tx_bytes",
    "rx_frames",
    "rx_bytes",
    "tx_refused",
    "tx_async_errors",
    "failing_since_s",
    "last_error",
)
PORT_COLUMNS: Final = (
    "vni",
    "name",
    "kind",
    "ifindex",
    "mtu",
    "tx_frames",
    "tx_bytes",
    "rx_frames",
    "rx_bytes",
)
PEER_ORIGINS: Final = ("static", "cluster", "evpn")
CHUNK_ROWS: Final = 1000  # FDB rows made into JSON per turn of the event loop
_ORIGIN_NAMES: Final = {o: o.value for o in Origin}
_UDP_CARRIED: Final = frozenset(("vxlan", "geneve"))


def handlers(
    name: str,
    datapath: Callable[[], DataPath],
    clock: Callable[[], float],
    discovered: Callable[[], dict[int, frozenset[str]]],
    evpn: Callable[[], Mapping[int, Mapping[str, Any]]] = dict,
    errors: Callable[[], TxErrors | None] = lambda: None,
) -> dict[str, Callable[[], object]]:
    """The control socket's ``show ...`` requests of endpoint ``name``, answered from
    the loop: each reads the data path once, as plain rows (the FDB's sent in parts, a
    turn of the loop each), after the endpoint's name and VNIs.  ``discovered``: the
    peers the cluster registry found per VNI."""

    def head(dp: DataPath) -> dict[str, Any]:
        return {"name": name, "vnis": sorted(dp.networks)}

    def show_fdb() -> Streamed:
        dp = datapath()
        return fdb_streamed(dp, clock(), head(dp))

    def show_peers() -> dict[str, Any]:
        dp = datapath()
        table = peers(dp, clock(), discovered(), evpn(), errors=errors())
        return {**head(dp), **table}

    def show_ports() -> dict[str, Any]:
        dp = datapath()
        table = ports(dp)
        return {**head(dp), **table}

    return {"show fdb": show_fdb, "show peers": show_peers, "show ports": show_ports}


def fdb(dp: DataPath, now: float) -> dict[str, Any]:
    """Every FDB entry of every VNI: (vni, mac, port name or None, peer address or
    None, origin, seconds since last seen or None)."""
    rows: list[list[Any]] = []
    for vni, ports, entries in _fdb_snapshot(dp, now):
        rows += _fdb_rows(vni, ports, entries)
    return {"columns": FDB_COLUMNS, "rows": rows}


def fdb_streamed(dp: DataPath, now: float, head: dict[str, Any]) -> Streamed:
    """:func:`fdb` as a :class:`~sclp.endpoint.control.Streamed` answer (``head``'s
    keys first): the entries are copied at once (a list of tuples), then turned into
    JSON :data:`CHUNK_ROWS` at a time, one chunk per turn of the loop."""
    snapshot = _fdb_snapshot(dp, now)

    def parts() -> Iterator[bytes]:
        start = json.dumps({**head, "columns": FDB_COLUMNS})
        yield (start[:-1] + ', "rows": [').encode()
        sep = ""
        for vni, ports, entries in snapshot:
            for i in range(0, len(entries), CHUNK_ROWS):
                rows = _fdb_rows(vni, ports, entries[i : i + CHUNK_ROWS])
                yield (sep + json.dumps(rows)[1:-1]).encode()
                sep = ", "
        yield b"]}"

    return Streamed(parts())


_Row = tuple[bytes, str | VmPort, Origin, float | None]  # Fdb.rows: mac, place, origin, age
_Snapshot = list[tuple[int, dict[str | VmPort, str], list[_Row]]]


def _fdb_snapshot(dp: DataPath, now: float) -> _Snapshot:
    return [
        (vni, {p: p.name for p in net.ports}, net.fdb.rows(now))
        for vni, net in sorted(dp.networks.items())
    ]


def _fdb_rows(
    vni: int,
    ports: dict[str | VmPort, str],
    entries: list[_Row],
) -> list[list[Any]]:
    names = _ORIGIN_NAMES
    rows: list[list[Any]] = []
    add = rows.append
    for mac, place, origin, age in entries:
        port = ports.get(place)
        add(
            [
                vni,
                mac.hex(":"),
                port,
                None if port is not None else place,
                names[origin],
                None if age is None else round(age, 3),
            ]
        )
    return rows


def peers(
    dp: DataPath,
    now: float,
    cluster: dict[int, frozenset[str]],
    evpn: Mapping[int, Mapping[str, Any]] | None = None,
    *,
    errors: TxErrors | None = None,
) -> dict[str, Any]:
    """Every peer of every VNI: the file's (``static``: its ``peers`` and the peers its
    static entries name), the cluster registry's (``cluster``) and BGP EVPN's
    (``evpn``; a peer both found is listed with the first of these), with the tunnel,
    when a frame was last taken from it, its frames and bytes each way, and what
    became of the packets sent to it (``errors``: per underlay address, so the same
    on each VNI's row): packets the kernel refused, errors reported later, since when
    sends to it fail (None: they do not) and the last error."""
    error_of = errors.peers if errors is not None else {}
    carrier = dp.underlay.carrier.value
    rows: list[list[Any]] = []
    for vni, net in sorted(dp.networks.items()):
        network = net.network
        protocol = net.protocol
        udp = "udp" if protocol in _UDP_CARRIED else "ip"
        how = carrier if network.protocol.is_sclp else udp
        found = cluster.get(vni, frozenset())
        routed = evpn.get(vni, {}) if evpn is not None else {}
        for address, pc in sorted(net.tx_counters.items(), key=lambda kv: str(kv[0])):
            origin = "static"
            if address not in network.peers:
                origin = "cluster" if address in found else "evpn" if address in routed else origin
            last = pc.last_rx
            plain = address in net.plain_peers  # VXLAN to a VXLAN-only EVPN peer
            pe = error_of.get(str(address))
            failing = pe.failing_since(now) if pe is not None else None
            rows.append(
                [
                    vni,
                    str(address),
                    "vxlan" if plain else protocol,
                    "udp" if plain else how,
                    origin,
                    None if last is None else round(max(0.0, now - last), 3),
                    pc.tx_frames,
                    pc.tx_bytes,
                    pc.rx_frames,
                    pc.rx_bytes,
                    pe.refused if pe is not None else 0,
                    pe.async_errors if pe is not None else 0,
                    None if failing is None else round(failing, 3),
                    pe.last if pe is not None else None,
                ]
            )
    return {"columns": PEER_COLUMNS, "rows": rows}


def ports(dp: DataPath) -> dict[str, Any]:
    """Every local port of every VNI: its interface name, ``tap`` (the endpoint's own)
    or ``attached``, its ifindex (None until known), its MTU and its frames and bytes
    each way."""
    rows: list[list[Any]] = []
    for vni, net in sorted(dp.networks.items()):
        port: VmPort
        for port in sorted(net.ports, key=lambda p: p.name):
            c = port.counters
            rows.append(
                [
                    vni,
                    port.name,
                    "tap" if port.owned else "attached",
                    port.ifindex or None,
                    net.vm_mtu,
                    c["tx_frames"],
                    c["tx_bytes"],
                    c["rx_frames"],
                    c["rx_bytes"],
                ]
            )
    return {"columns": PORT_COLUMNS, "rows": rows}

"""What a running endpoint reports of itself: ``sclp stats`` and ``sclp health``.

:func:`stats` wraps the data path's counters (:meth:`DataPath.stats
<sclp.endpoint.datapath.DataPath.stats>`) in the endpoint's own parts: its underlay,
the counts of the I/O around the data path, the kernel's peer filter, fault injection,
the cluster registry, the packet taps and TX rings (:class:`~sclp.endpoint.stats.
EndpointStats`, the JSON of ``sclp stats --json``).  :func:`health` says whether the
loop still turns and every descriptor is open.  Both only read; the loop calls
:func:`stats` for the snapshot the metrics thread serves, and :func:`health` is safe
from another thread (it reads plain fields).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from sclp.endpoint import provision, txerrors
from sclp.endpoint.bgp import EvpnLink
from sclp.endpoint.config import Config
from sclp.endpoint.datapath import COUNTER_NAMES, DataPath
from sclp.endpoint.faults import FaultInjector
from sclp.endpoint.registry import RegistryLink
from sclp.endpoint.runner import Runner
from sclp.endpoint.stats import (
    EndpointStats,
    HealthReport,
    RxTapStats,
    TxRingStats,
    sorted_counters,
)
from sclp.io.rxring import RxRing

__all__ = ["HEALTH_TICK_AGE", "Parts", "health", "health_report", "stats"]

HEALTH_TICK_AGE = 2.0  # a loop that has not ticked for this long is unhealthy


@dataclass(frozen=True, slots=True)
class Parts:
    """The endpoint's parts a report reads (None: not started, or not configured)."""

    cfg: Config
    dp: DataPath | None
    counters: Mapping[str, int]  # what the runner's sender and the registry count
    peer_filter: provision.PeerFilter | None
    underlay: provision.UnderlaySockets | None
    faults: FaultInjector | None
    registry: RegistryLink | None
    evpn: EvpnLink | None = None
    now: float = 0.0  # the endpoint's clock, for the ages in the BGP and error reports
    tx_errors: txerrors.TxErrors | None = None  # the sender's refused sends, ICMP errors


def stats(parts: Parts, uptime_s: float, kernel_max_age: float) -> EndpointStats:
    """What ``sclp stats`` shows (all zero before the endpoint started); the kernel's
    not-peer counter in it is at most ``kernel_max_age`` seconds old."""
    cfg, dp = parts.cfg, parts.dp
    # Dropped by the kernel's peer filter: never received, so not in rx_packets
    # (docs/security.md); nft runs only when the last read is older than allowed.
    pf = parts.peer_filter
    kernel_drops = pf.drops(kernel_max_age) if pf is not None else 0
    extra = dict(parts.counters)
    extra["drop_not_peer"] = extra.get("drop_not_peer", 0) + kernel_drops
    if dp is not None:
        report = dp.stats(extra)
        counters, vni, ports, peers = (
            report["counters"],
            report["vni"],
            report["ports"],
            report["peers"],
        )
    else:
        base = dict.fromkeys(COUNTER_NAMES, 0)
        for name, value in extra.items():
            base[name] = base.get(name, 0) + value
        counters, vni, ports, peers = sorted_counters(base), {}, {}, {}
    counters["tx_sent"] = txerrors.sent(counters)
    errors = parts.tx_errors if parts.tx_errors is not None else txerrors.TxErrors({})
    return {
        "name": cfg.name,
        "pid": os.getpid(),
        "uptime_s": round(uptime_s, 3),
        "underlay": {
            "local": cfg.underlay.local,
            "mtu": dp.underlay.mtu if dp is not None else None,
            "sclp_carrier": cfg.underlay.sclp_carrier.value,
            "sclp_udp_port": cfg.underlay.sclp_udp_port,
            "vxlan_port": cfg.underlay.vxlan_port,
            "geneve_port": cfg.underlay.geneve_port,
        },
        "counters": counters,
        "vni": vni,
        "ports": ports,
        "peers": peers,
        "faults": parts.faults.counters() if parts.faults else None,
        "cluster": parts.registry.status() if parts.registry is not None else None,
        "bgp": parts.evpn.status(parts.now) if parts.evpn is not None else None,
        "peer_filter": {"kernel": pf is not None, "kernel_drops": kernel_drops},
        "rx_taps": tap_stats(parts.underlay),
        "tx_rings": tx_ring_stats(parts.underlay),
        "tx_errors": errors.report(parts.now),
    }


def tap_stats(sockets: provision.UnderlaySockets | None) -> dict[str, RxTapStats]:
    """Per channel read by packet taps (STT, native SCLP): the devices, ``ring``
    or ``recvmmsg``, the packets the kernel dropped for want of a free ring frame
    (``tp_drops``) and those larger than a frame or slot (dropped)."""
    if sockets is None:
        return {}
    report: dict[str, RxTapStats] = {}
    for channel, taps in sockets.taps.items():
        rings = [tap for tap in taps if isinstance(tap, RxRing)]
        report[channel.value] = {
            "devices": sockets.tap_devices.get(channel, []),
            "kind": "ring" if rings else "recvmmsg",
            "ring_full_drops": sum(ring.read_drops() for ring in rings),
            "truncated": sum(tap.truncated for tap in taps),
        }
    return report


def tx_ring_stats(sockets: provision.UnderlaySockets | None) -> dict[str, TxRingStats]:
    """Per channel sent through TX rings (STT, native SCLP): the devices, the
    batches per path (``ring``, or why the raw socket sent one), how often the
    kernel said "later" (EAGAIN/ENOBUFS: queued frames wait for the next send) and
    frames it refused as malformed."""
    if sockets is None:
        return {}
    report: dict[str, TxRingStats] = {}
    for channel, sender in sockets.tx.items():
        rings = list(sender.rings.values())
        report[channel.value] = {
            "devices": sorted(ring.ifname for ring in rings),
            "batches": dict(sorted((p.name.lower(), n) for p, n in sender.paths.items())),
            "deferred": sum(ring.deferred for ring in rings),
            "wrong_format": sum(ring.wrong_format for ring in rings),
        }
    return report


def health(
    runner: Runner | None, tick_age: float, sockets: list[socket.socket], summary: str
) -> tuple[bool, str]:
    """Is the endpoint serving?  Its loop ticked within :data:`HEALTH_TICK_AGE`
    seconds (``tick_age``: since the last tick), and every VM port and underlay socket
    is open.  ``summary`` names its networks."""
    if runner is None:
        return False, "not started"
    if tick_age > HEALTH_TICK_AGE:
        return False, f"event loop stalled or stopped (last tick {tick_age:.1f} s ago)"
    readers = runner.port_readers()
    closed = [r.name for r in readers if r.closed]
    if closed:
        return False, f"port closed: {', '.join(closed)}"
    if any(sock.fileno() < 0 for sock in sockets):
        return False, "an underlay socket is closed"
    return True, (
        f"loop alive, {len(readers)} VM port(s) and {len(sockets)} underlay "
        f"socket(s) open, {summary}"
    )


def health_report(name: str, verdict: tuple[bool, str]) -> HealthReport:
    """``sclp health``'s answer for endpoint ``name``."""
    ok, detail = verdict
    state = "unhealthy" if not ok else txerrors.health_state(detail)
    return {"name": name, "ok": ok, "state": state, "detail": detail}

"""The shape of ``sclp stats --json``, typed from the counter to Prometheus.

One report crosses every layer above the data path: :meth:`DataPath.stats
<sclp.endpoint.datapath.DataPath.stats>` builds its counters, VNIs, ports and peers
(:class:`DataPathStats`), the endpoint adds its own parts (:class:`EndpointStats`,
built in :mod:`sclp.endpoint.report`), the control socket sends it as JSON, and
:mod:`sclp.endpoint.metrics`, ``sclp top`` and ``sclp stats`` read it.  These
``TypedDict`` s are that contract: mypy checks every key from the one that counts
to the one that renders, and the JSON is exactly the dicts (docs/config.md,
"Counters", says what each counter counts).

A counter map (:class:`Counters`) names every counter that may appear; a report
holds only those counted so far in a VNI (the endpoint's totals hold every one of
:data:`~sclp.endpoint.datapath.COUNTER_NAMES`).  Adding a counter means declaring it
here (``tests/endpoint/test_stats.py`` checks that every name the code counts is).
Nothing here does I/O: the data path imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, TypedDict, TypeGuard

from sclp.cluster.model import AgentStatus

__all__ = [
    "COUNTER_KEYS",
    "ClusterStats",
    "Counters",
    "DataPathStats",
    "EndpointStats",
    "HealthReport",
    "PeerFilterStats",
    "PortStats",
    "RxTapStats",
    "TxRingStats",
    "UnderlayStats",
    "VniStats",
    "sorted_counters",
]


class Counters(TypedDict, total=False):
    """Counter name → count: frames and bytes each way, underlay packets, the
    reassembly's state and one ``drop_<reason>`` per
    :class:`~sclp.wire.errors.DropReason`."""

    tx_frames: int
    rx_frames: int
    tx_local: int
    tx_filtered: int
    tx_flooded: int
    tx_split: int
    tx_packets: int
    rx_packets: int
    tx_bytes: int
    rx_bytes: int
    reasm_complete: int
    reasm_bytes_held: int
    reasm_entries: int
    cluster_conflicts: int
    drop_malformed: int
    drop_too_short: int
    drop_bad_checksum: int
    drop_bad_version: int
    drop_bad_tunnel_header: int
    drop_unknown_port: int
    drop_oversize: int
    drop_timeout: int
    drop_overlap: int
    drop_inconsistent_total: int
    drop_past_end: int
    drop_evicted: int
    drop_not_peer: int
    drop_unknown_vni: int
    drop_no_route: int
    drop_tx_busy: int
    drop_tx_error: int
    drop_tap_busy: int
    drop_tap_error: int
    drop_too_big: int
    # Path MTU inside the tunnel (DataPath._too_big): ICMP "too big" sent and held back
    # by the rate limit, inner IPv4 fragments made, GSO frames cut into smaller segments.
    icmp_too_big_sent: int
    icmp_too_big_limited: int
    tx_inner_fragments: int
    tx_resegmented: int
    # The sender's: packets that left, refusals, ICMP errors about packets that left
    # (sclp.endpoint.txerrors; one tx_async_<reason> per sclp.io.errqueue.REASONS).
    tx_sent: int
    drop_tx_neigh: int
    drop_tx_unreachable: int
    tx_errors_async: int
    tx_async_port_unreachable: int
    tx_async_protocol_unreachable: int
    tx_async_host_unreachable: int
    tx_async_net_unreachable: int
    tx_async_frag_needed: int
    tx_async_prohibited: int
    tx_async_ttl_exceeded: int
    tx_async_other: int


COUNTER_KEYS: Final = frozenset(Counters.__annotations__)


def _is_counters(values: Mapping[str, object]) -> TypeGuard[Counters]:
    """What :class:`Counters` promises: an int under each name (a ``TypedDict`` value
    may hold names its type does not declare, as a subtype's would)."""
    return all(type(value) is int for value in values.values())


def sorted_counters(values: Mapping[str, int]) -> Counters:
    """``values`` sorted by name, as a report's :class:`Counters`.  A name that
    :class:`Counters` does not declare still goes into the report (it never loses a
    counter, and the loop that builds it never fails for one);
    ``tests/endpoint/test_stats.py`` fails for it instead."""
    out = dict(sorted(values.items()))
    if not _is_counters(out):
        raise TypeError(f"a counter that is not an int: {out}")
    return out


class VniStats(Counters):
    """One VNI: its tunnel, the TAP it owns (None: attach only), its ports and peers,
    its VM MTU and FDB size, then the counters it has counted so far (by name)."""

    protocol: str
    tap: str | None
    ports: list[str]
    peers: list[str]
    vm_mtu: int
    fdb_entries: int


class PortStats(TypedDict):
    """One VM port (by interface name): its VNI, ``tap`` (owned) or ``attached``, and
    the frames and bytes read from it (``tx_*``) and written to it (``rx_*``)."""

    vni: int
    kind: str
    tx_frames: int
    tx_bytes: int
    rx_frames: int
    rx_bytes: int


class DataPathStats(TypedDict):
    """What :meth:`DataPath.stats <sclp.endpoint.datapath.DataPath.stats>` reports:
    the totals, per VNI (by VNI as a string: JSON object keys), per port, and how
    many peers each VNI has."""

    counters: Counters
    vni: dict[str, VniStats]
    ports: dict[str, PortStats]
    peers: dict[str, int]


class UnderlayStats(TypedDict):
    local: str
    mtu: int | None  # None before the endpoint started
    sclp_carrier: str
    sclp_udp_port: int
    vxlan_port: int
    geneve_port: int


class ClusterStats(AgentStatus):
    """The cluster agent's state and the registry's mismatch lines now."""

    conflicts_now: list[str]


class PeerFilterStats(TypedDict):
    kernel: bool  # the kernel drops non-peers (nftables), or user space does
    kernel_drops: int


class RxTapStats(TypedDict):
    """A channel read by packet taps: its devices, ``ring`` or ``recvmmsg``, packets
    the kernel dropped for want of a free ring frame, and those cut short."""

    devices: list[str]
    kind: str
    ring_full_drops: int
    truncated: int


class TxRingStats(TypedDict):
    """A channel sent through TX rings: its devices, batches per path, how often the
    kernel said "later", and frames it refused as malformed."""

    devices: list[str]
    batches: dict[str, int]
    deferred: int
    wrong_format: int


class EndpointStats(TypedDict):
    """``sclp stats --json``: the data path's report (:class:`DataPathStats`) inside
    the endpoint's own parts, in this order."""

    name: str
    pid: int
    uptime_s: float
    underlay: UnderlayStats
    counters: Counters
    vni: dict[str, VniStats]
    ports: dict[str, PortStats]
    peers: dict[str, int]
    faults: dict[str, int] | None  # None: fault injection off
    cluster: ClusterStats | None  # None: no [cluster]
    bgp: dict[str, Any] | None  # None: no [bgp]; sclp.endpoint.bgp.EvpnLink.status
    peer_filter: PeerFilterStats
    rx_taps: dict[str, RxTapStats]
    tx_rings: dict[str, TxRingStats]
    tx_errors: dict[str, Any]  # per peer with an error: sclp.endpoint.txerrors.TxErrors.report


class HealthReport(TypedDict):
    """``sclp health``: is the endpoint ``name`` serving, and one line why (not)."""

    name: str
    ok: bool
    state: str  # "ok", "degraded" (sends to some peers fail) or "unhealthy"
    detail: str

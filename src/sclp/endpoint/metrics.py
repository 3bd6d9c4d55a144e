"""Prometheus metrics and a health check for a running endpoint, served over HTTP.

:class:`MetricsServer` serves, from a daemon thread:

- ``/metrics``: the Prometheus text format (OpenMetrics when the scraper asks for
  it), rendered by ``prometheus_client`` from a registry of the server's own: a
  collector that turns the endpoint's last *published* stats (the dict of
  ``sclp stats --json``) into ``sclp_*`` families at scrape time, plus
  ``prometheus_client``'s process collector (``process_cpu_seconds_total``,
  ``process_resident_memory_bytes``, open files, ...).
- ``/healthz``: ``200 ok: <detail>``, ``200 degraded: <detail>`` (sends to some peers
  fail) or ``503 unhealthy: <detail>``.
- anything else: 404.

The collector only calls ``snapshot()``, which must return an immutable copy the
endpoint published earlier (or ``None`` before the first one): a scrape takes no
lock and never calls into the data path, which never waits for a scrape.

Families (every ``sclp_*`` one has the label ``endpoint``, the endpoint's name):

====================================  ========================================
``sclp_up``                           1 once a snapshot exists, else 0
``sclp_endpoint_info``                labels ``local``, ``carrier``
``sclp_uptime_seconds``               gauge
``sclp_underlay_mtu``                 gauge
``sclp_{tx,rx}_frames_total``         counters per ``vni``: frames read from /
                                      written to its VM ports
``sclp_{tx,rx}_bytes_total``          counters per ``vni``: their bytes
``sclp_{tx,rx}_packets_total``        counters per ``vni``: underlay packets
``sclp_tx_flooded_total``             counter per ``vni``: frames replicated to
                                      all peers (broadcast / unknown unicast)
``sclp_tx_local_total``               counter per ``vni``: frames switched to
                                      another local port
``sclp_port_{tx,rx}_{frames,bytes}``  counters per VM ``port`` (labels ``vni``,
                                      ``kind``: tap or attached)
``sclp_drops_total``                  counter per ``vni`` and ``reason``
``sclp_reassembly_complete_total``    counter: payloads reassembled
``sclp_reassembly_entries``           gauge: incomplete payloads held
``sclp_reassembly_bytes_held``        gauge: their bytes
``sclp_vni_info``                     per ``vni``: labels ``protocol``, ``tap``
``sclp_vm_mtu``                       gauge per ``vni``
``sclp_fdb_entries``                  gauge per ``vni``
``sclp_peers``                        gauge per ``vni`` (when the stats have
                                      ``peers``)
``sclp_cluster_{connected,members,...}`` gauges: the registry's state, with
                                      ``[cluster]`` (``revision``, ``conflicts``)
``sclp_tx_sent_total``                counter: underlay packets that left
``sclp_tx_async_errors_total``        counter per ``reason``: ICMP errors about
                                      packets sent
``sclp_peer_failing_seconds``         gauge per ``peer`` whose sends fail now
``sclp_faults_total``                 counter per ``kind`` (fault injection on)
====================================  ========================================

``vni=""`` on a counter family carries what the endpoint counts but cannot put on
one VNI (the stats' total minus the sum over the VNIs): packets from a non-peer or
for an unknown VNI, reassembly drops, underlay send errors, most ``rx_packets``.
Summing a family over ``vni`` gives the endpoint's total.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, cast
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from sclp.endpoint.stats import (
    ClusterStats,
    Counters,
    EndpointStats,
    PortStats,
    UnderlayStats,
    VniStats,
)

__all__ = ["Health", "MetricsServer", "Snapshot", "SnapshotCollector"]

log = logging.getLogger(__name__)

Snapshot = Callable[[], EndpointStats | None]
"""Returns the endpoint's last published stats (``sclp stats --json``) or ``None``."""
Health = Callable[[], tuple[bool, str]]
"""Returns ``(healthy, one-line detail)``."""

# Per-VNI counters: (key in the stats, family name without _total, help).
TRAFFIC: Final = (
    ("tx_frames", "sclp_tx_frames", "Frames read from the VNI's VM ports."),
    ("rx_frames", "sclp_rx_frames", "Frames written to the VNI's VM ports."),
    ("tx_bytes", "sclp_tx_bytes", "Bytes of the frames read from the VM ports."),
    ("rx_bytes", "sclp_rx_bytes", "Bytes of the frames written to the VM ports."),
    ("tx_packets", "sclp_tx_packets", "Underlay packets sent."),
    ("rx_packets", "sclp_rx_packets", "Underlay packets received (dropped ones included)."),
    ("tx_flooded", "sclp_tx_flooded", "Frames replicated to every peer of the VNI."),
    ("tx_local", "sclp_tx_local", "Frames switched to another local port of the VNI."),
)
PORT_TRAFFIC: Final = (
    ("tx_frames", "sclp_port_tx_frames", "Frames read from the VM port."),
    ("rx_frames", "sclp_port_rx_frames", "Frames written to the VM port."),
    ("tx_bytes", "sclp_port_tx_bytes", "Bytes read from the VM port."),
    ("rx_bytes", "sclp_port_rx_bytes", "Bytes written to the VM port."),
)
_DROP: Final = "drop_"
_ASYNC: Final = "tx_async_"
_HTTP_TIMEOUT: Final = 10.0  # a client that sends nothing for this long is dropped


class SnapshotCollector:
    """A ``prometheus_client`` collector reading ``snapshot()`` at scrape time."""

    def __init__(self, snapshot: Snapshot, name: str = "") -> None:
        self.snapshot = snapshot
        self.name = name
        self._warned = False

    def describe(self) -> Iterable[Metric]:
        return ()  # the families depend on the snapshot; nothing to check at register

    def collect(self) -> Iterator[Metric]:
        try:
            stats = self.snapshot()
            families = _families(stats, self.name) if stats is not None else []
        except Exception as exc:  # a scrape must never take the server down
            if not self._warned:
                log.warning("metrics: cannot read the endpoint's stats: %r", exc)
                self._warned = True
            stats, families = None, []
        up = GaugeMetricFamily(
            "sclp_up", "1 when the endpoint has published stats.", labels=["endpoint"]
        )
        endpoint = str(stats.get("name", self.name)) if stats is not None else self.name
        up.add_metric([endpoint], 1.0 if stats is not None else 0.0)
        yield up
        yield from families


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _families(stats: EndpointStats, default_name: str) -> list[Metric]:
    """Every ``sclp_*`` family (but ``sclp_up``) of one stats snapshot (a key it
    lacks, as from an older endpoint, gives no samples or zeros)."""
    ep = str(stats.get("name", default_name))
    totals: Counters = stats.get("counters") or {}
    vnis: dict[str, VniStats] = stats.get("vni") or {}
    underlay: UnderlayStats | None = stats.get("underlay")
    out: list[Metric] = []

    info = InfoMetricFamily(
        "sclp_endpoint", "The endpoint's underlay.", labels=["endpoint", "local", "carrier"]
    )
    local = underlay.get("local", "") if underlay else ""
    carrier = underlay.get("sclp_carrier", "") if underlay else ""
    info.add_metric([ep, str(local), str(carrier)], {})
    out.append(info)
    uptime = GaugeMetricFamily(
        "sclp_uptime_seconds", "Seconds since the endpoint started.", labels=["endpoint"]
    )
    uptime.add_metric([ep], _num(stats.get("uptime_s")))
    out.append(uptime)
    if underlay and underlay.get("mtu") is not None:
        mtu = GaugeMetricFamily("sclp_underlay_mtu", "Underlay path MTU.", labels=["endpoint"])
        mtu.add_metric([ep], _num(underlay.get("mtu")))
        out.append(mtu)

    for key, family, doc in TRAFFIC:
        counter = CounterMetricFamily(family, doc, labels=["endpoint", "vni"])
        per_vni = 0.0
        for vni, entry in vnis.items():
            value = _num(entry.get(key, 0))
            per_vni += value
            counter.add_metric([ep, vni], value)
        if key in totals:
            counter.add_metric([ep, ""], max(0.0, _num(totals.get(key)) - per_vni))
        out.append(counter)

    drops = CounterMetricFamily(
        "sclp_drops",
        'Packets or frames dropped, by reason; vni="" for the endpoint\'s own.',
        labels=["endpoint", "vni", "reason"],
    )
    by_reason: dict[str, float] = {}
    for vni, entry in vnis.items():
        for key, count in entry.items():
            if key.startswith(_DROP):
                drops.add_metric([ep, vni, key[len(_DROP) :]], _num(count))
                by_reason[key] = by_reason.get(key, 0.0) + _num(count)
    for key, count in totals.items():
        if key.startswith(_DROP):
            rest = max(0.0, _num(count) - by_reason.get(key, 0.0))
            drops.add_metric([ep, "", key[len(_DROP) :]], rest)
    out.append(drops)

    for key, family, doc, kind in (
        ("reasm_complete", "sclp_reassembly_complete", "Payloads reassembled.", "counter"),
        ("reasm_entries", "sclp_reassembly_entries", "Incomplete payloads held.", "gauge"),
        ("reasm_bytes_held", "sclp_reassembly_bytes_held", "Bytes held in them.", "gauge"),
    ):
        if key in totals:
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            metric = cls(family, doc, labels=["endpoint"])
            metric.add_metric([ep], _num(totals.get(key)))
            out.append(metric)

    vni_info = InfoMetricFamily(
        "sclp_vni",
        "A VNI's encapsulation and the TAP it owns.",
        labels=["endpoint", "vni", "protocol", "tap"],
    )
    vm_mtu = GaugeMetricFamily("sclp_vm_mtu", "VM-facing MTU.", labels=["endpoint", "vni"])
    fdb = GaugeMetricFamily("sclp_fdb_entries", "MAC table entries.", labels=["endpoint", "vni"])
    for vni, entry in vnis.items():
        vni_info.add_metric(
            [ep, vni, str(entry.get("protocol", "")), str(entry.get("tap") or "")], {}
        )
        vm_mtu.add_metric([ep, vni], _num(entry.get("vm_mtu")))
        fdb.add_metric([ep, vni], _num(entry.get("fdb_entries")))
    out += [vni_info, vm_mtu, fdb]
    peers_of: dict[str, int] | None = stats.get("peers")
    if peers_of is not None:
        peers = GaugeMetricFamily("sclp_peers", "Peers of the VNI.", labels=["endpoint", "vni"])
        for vni, count in peers_of.items():
            peers.add_metric([ep, str(vni)], _num(count))
        out.append(peers)

    ports: dict[str, PortStats] = stats.get("ports") or {}
    for key, family, doc in PORT_TRAFFIC:
        counter = CounterMetricFamily(family, doc, labels=["endpoint", "port", "vni", "kind"])
        for name, port in ports.items():
            labels = [ep, name, str(port.get("vni", "")), str(port.get("kind", ""))]
            counter.add_metric(labels, _num(port.get(key, 0)))
        out.append(counter)

    cluster: ClusterStats | None = stats.get("cluster")
    if cluster:
        for key, family, doc in (
            ("connected", "sclp_cluster_connected", "1 while the registry (etcd) answers."),
            ("members", "sclp_cluster_members", "Members in the registry's view."),
            ("revision", "sclp_cluster_revision", "The registry's last revision seen."),
            ("conflicts", "sclp_cluster_conflicts", "Mismatches in the view now."),
        ):
            gauge = GaugeMetricFamily(family, doc, labels=["endpoint"])
            raw = cluster.get(key)
            gauge.add_metric([ep], float(raw) if isinstance(raw, bool) else _num(raw))
            out.append(gauge)

    bgp: Mapping[str, Any] | None = stats.get("bgp")
    if bgp:
        session = GaugeMetricFamily(
            "sclp_bgp_session_up",
            "1 while the BGP session with the neighbor is established.",
            labels=["endpoint", "neighbor"],
        )
        received = GaugeMetricFamily(
            "sclp_bgp_routes_received",
            "EVPN routes held from the neighbor.",
            labels=["endpoint", "neighbor"],
        )
        for n in bgp.get("neighbors", ()):
            labels = [ep, str(n.get("address", ""))]
            session.add_metric(labels, 1.0 if n.get("state") == "established" else 0.0)
            received.add_metric(labels, _num(n.get("routes_received")))
        advertised = GaugeMetricFamily(
            "sclp_bgp_routes_advertised", "EVPN routes this VTEP advertises.", labels=["endpoint"]
        )
        advertised.add_metric([ep], _num(bgp.get("routes_advertised")))
        restarts = CounterMetricFamily(
            "sclp_bgp_speaker_restarts",
            "Times the BGP speaker (ExaBGP) was started again after it exited.",
            labels=["endpoint"],
        )
        restarts.add_metric([ep], _num((bgp.get("speaker") or {}).get("restarts")))
        out += [session, received, advertised, restarts]

    out += _send_errors(stats, ep, totals)

    faults: dict[str, int] | None = stats.get("faults")
    if faults:
        fault = CounterMetricFamily(
            "sclp_faults",
            "Fault injection on outgoing underlay packets, by kind.",
            labels=["endpoint", "kind"],
        )
        for key, value in faults.items():
            fault.add_metric([ep, key.removeprefix("fault_")], _num(value))
        out.append(fault)
    return out


def _send_errors(stats: Mapping[str, Any], ep: str, totals: Mapping[str, Any]) -> list[Metric]:
    """What became of the packets sent: ``tx_sent``, the errors reported later by
    reason (``tx_async_<reason>``), and the peers sends to which fail now."""
    out: list[Metric] = []
    if "tx_sent" in totals:
        sent = CounterMetricFamily(
            "sclp_tx_sent", "Underlay packets that left (refused ones not).", labels=["endpoint"]
        )
        sent.add_metric([ep], _num(totals["tx_sent"]))
        out.append(sent)
    reported = CounterMetricFamily(
        "sclp_tx_async_errors",
        "ICMP errors about underlay packets sent (they left; a router or the peer dropped "
        "them), by reason.",
        labels=["endpoint", "reason"],
    )
    for key, value in totals.items():
        if key.startswith(_ASYNC):
            reported.add_metric([ep, key[len(_ASYNC) :]], _num(value))
    out.append(reported)
    peers: Mapping[str, Mapping[str, Any]] = stats.get("tx_errors") or {}
    failing = GaugeMetricFamily(
        "sclp_peer_failing_seconds",
        "Seconds since sends to the peer started failing (listed only while they fail).",
        labels=["endpoint", "peer"],
    )
    for peer, entry in peers.items():
        since = entry.get("failing_since_s")
        if since is not None:
            failing.add_metric([ep, peer], _num(since))
    out.append(failing)
    return out


class _QuietHandler(WSGIRequestHandler):
    timeout = _HTTP_TIMEOUT  # socket timeout per connection: no stuck handler threads

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    block_on_close = False

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN (a DNS lookup that can hang);
        # the WSGI environment only needs the address as it is.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()


class _Server6(_Server):
    address_family = socket.AF_INET6


def _plain(
    start_response: StartResponse, status: str, body: str, extra: tuple[tuple[str, str], ...] = ()
) -> list[bytes]:
    data = (body + "\n").encode()
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(data))),
        *extra,
    ]
    start_response(status, headers)
    return [data]


class MetricsServer:
    """The HTTP server of ``[metrics]``; :meth:`start` it, :meth:`close` it."""

    def __init__(
        self, httpd: _Server, thread: threading.Thread, registry: CollectorRegistry
    ) -> None:
        self._httpd = httpd
        self._thread = thread
        self.registry = registry
        self.host: str = str(httpd.server_address[0])
        self.port: int = int(httpd.server_address[1])
        self._closed = False

    @classmethod
    def start(
        cls,
        listen: tuple[str, int],
        snapshot: Snapshot,
        health: Health,
        *,
        name: str = "",
    ) -> MetricsServer:
        """Bind ``listen`` (``(host, port)``, port 0 picks a free one: see :attr:`port`)
        and serve from a daemon thread.  ``name`` labels ``sclp_up`` before the first
        snapshot.  Raises :class:`OSError` when the address cannot be bound (port in
        use, address not on this host, no permission for a port below 1024): the
        caller turns it into a one-line error."""
        host, port = listen
        family, _, _, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        registry = CollectorRegistry()
        registry.register(SnapshotCollector(snapshot, name))
        ProcessCollector(registry=registry)
        server_cls = _Server6 if family == socket.AF_INET6 else _Server
        httpd = server_cls((str(sockaddr[0]), int(sockaddr[1])), _QuietHandler)  # may raise OSError
        httpd.set_app(_app(make_wsgi_app(registry), health))
        thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"sclp-metrics:{httpd.server_address[1]}",
            daemon=True,
        )
        thread.start()
        return cls(httpd, thread, registry)

    def close(self) -> None:
        """Stop serving and release the port (idempotent; waits at most ~1 s)."""
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=1.0)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _app(metrics_app: Callable[..., Any], health: Health) -> WSGIApplication:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return cast(Iterable[bytes], metrics_app(environ, start_response))
        if path == "/healthz":
            if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
                return _plain(
                    start_response, "405 Method Not Allowed", "use GET", (("Allow", "GET, HEAD"),)
                )
            try:
                ok, detail = health()
            except Exception as exc:
                ok, detail = False, f"health check failed: {exc!r}"
            if ok:  # "degraded: ..." (sends to some peers fail) is served, so 200
                state = "" if detail.startswith("degraded: ") else "ok: "
                return _plain(start_response, "200 OK", f"{state}{detail}")
            return _plain(start_response, "503 Service Unavailable", f"unhealthy: {detail}")
        return _plain(start_response, "404 Not Found", "not found; try /metrics or /healthz")

    return app

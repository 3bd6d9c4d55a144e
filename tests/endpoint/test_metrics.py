"""The metrics server over real HTTP on 127.0.0.1, with a fake stats snapshot (no root)."""

from __future__ import annotations

import copy
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sclp.endpoint.metrics import MetricsServer

pytestmark = pytest.mark.timeout(30)

TIMEOUT = 5.0

STATS: dict[str, Any] = {
    "name": "host1",
    "pid": 1234,
    "uptime_s": 12.5,
    "underlay": {"local": "10.0.0.1", "mtu": 1500, "sclp_carrier": "udp"},
    "counters": {
        "tx_frames": 30,
        "rx_frames": 20,
        "tx_packets": 300,
        "rx_packets": 250,
        "tx_bytes": 30000,
        "rx_bytes": 20000,
        "tx_flooded": 2,
        "reasm_complete": 19,
        "reasm_bytes_held": 4096,
        "reasm_entries": 3,
        "drop_not_peer": 7,  # 5 on VNI 42, 2 the endpoint's own
        "drop_timeout": 4,  # the reassembler's: no VNI
        "drop_oversize": 1,  # VNI 43
        "drop_tx_error": 0,
    },
    "vni": {
        "42": {
            "protocol": "vxlan-sclp",
            "tap": "tap42",
            "vm_mtu": 1500,
            "fdb_entries": 2,
            "tx_frames": 10,
            "tx_bytes": 10000,
            "tx_packets": 100,
            "rx_frames": 20,
            "rx_bytes": 20000,
            "tx_flooded": 2,
            "drop_not_peer": 5,
        },
        "43": {
            "protocol": "vxlan",
            "tap": "tap43",
            "vm_mtu": 1450,
            "fdb_entries": 0,
            "tx_frames": 20,
            "tx_bytes": 20000,
            "tx_packets": 200,
            "drop_oversize": 1,
        },
    },
    "ports": {
        "tap42": {"vni": 42, "kind": "tap", "tx_frames": 4, "tx_bytes": 4000},
        "vnet7": {"vni": 42, "kind": "attached", "tx_frames": 6, "rx_frames": 20},
    },
    "faults": None,
    "peers": {"42": 1, "43": 2},
}


class Fake:
    """What the endpoint hands the server: a published snapshot and a health verdict."""

    def __init__(self) -> None:
        self.stats: dict[str, Any] | None = None
        self.health: tuple[bool, str] = (True, "loop ticking")
        self.calls = 0

    def snapshot(self) -> dict[str, Any] | None:
        self.calls += 1
        return self.stats

    def check(self) -> tuple[bool, str]:
        return self.health


@pytest.fixture
def fake() -> Fake:
    return Fake()


@pytest.fixture
def server(fake: Fake) -> Iterator[MetricsServer]:
    srv = MetricsServer.start(("127.0.0.1", 0), fake.snapshot, fake.check, name="host1")
    try:
        yield srv
    finally:
        srv.close()


def get(server: MetricsServer, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{server.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def scrape(server: MetricsServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``{(sample name, labels): value}`` of one scrape, parsed by prometheus_client."""
    status, text = get(server, "/metrics")
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples[(name, frozenset({"endpoint": "host1", **labels}.items()))]


def names(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> set[str]:
    return {name for name, _ in samples}


def test_before_the_first_snapshot_only_up_zero(server: MetricsServer, fake: Fake) -> None:
    samples = scrape(server)
    assert value(samples, "sclp_up") == 0
    assert {n for n in names(samples) if n.startswith("sclp_")} == {"sclp_up"}
    assert "process_resident_memory_bytes" in names(samples)  # the process is still there


def test_per_vni_counters_and_gauges(server: MetricsServer, fake: Fake) -> None:
    fake.stats = copy.deepcopy(STATS)
    s = scrape(server)
    assert value(s, "sclp_up") == 1
    assert value(s, "sclp_tx_frames_total", vni="42") == 10
    assert value(s, "sclp_tx_frames_total", vni="43") == 20
    assert value(s, "sclp_tx_frames_total", vni="") == 0  # all on a VNI
    assert value(s, "sclp_rx_frames_total", vni="43") == 0  # absent key: 0, series kept
    assert value(s, "sclp_tx_bytes_total", vni="43") == 20000
    assert value(s, "sclp_rx_bytes_total", vni="42") == 20000
    assert value(s, "sclp_tx_packets_total", vni="42") == 100
    assert value(s, "sclp_rx_packets_total", vni="") == 250  # counted before the VNI is known
    assert value(s, "sclp_tx_flooded_total", vni="42") == 2
    assert value(s, "sclp_fdb_entries", vni="42") == 2
    assert value(s, "sclp_vm_mtu", vni="43") == 1450
    assert value(s, "sclp_peers", vni="43") == 2
    assert value(s, "sclp_reassembly_entries") == 3
    assert value(s, "sclp_reassembly_bytes_held") == 4096
    assert value(s, "sclp_reassembly_complete_total") == 19
    assert value(s, "sclp_underlay_mtu") == 1500
    assert value(s, "sclp_uptime_seconds") == 12.5
    assert value(s, "sclp_endpoint_info", local="10.0.0.1", carrier="udp") == 1
    assert value(s, "sclp_vni_info", vni="42", protocol="vxlan-sclp", tap="tap42") == 1
    assert "sclp_faults_total" not in names(s)  # fault injection off
    for process in ("process_resident_memory_bytes", "process_cpu_seconds_total"):
        assert process in names(s)


def test_per_port_counters_name_the_port_its_vni_and_kind(
    server: MetricsServer, fake: Fake
) -> None:
    fake.stats = copy.deepcopy(STATS)
    fake.stats["vni"]["43"]["tap"] = None  # a network with attached ports only
    fake.stats["cluster"] = {"connected": True, "members": 5, "revision": 77, "conflicts": 1}
    s = scrape(server)
    port = {"vni": "42", "kind": "attached", "port": "vnet7"}
    assert value(s, "sclp_port_tx_frames_total", **port) == 6
    assert value(s, "sclp_port_rx_frames_total", **port) == 20
    assert value(s, "sclp_port_rx_bytes_total", **port) == 0  # absent key: 0
    assert value(s, "sclp_port_tx_bytes_total", vni="42", kind="tap", port="tap42") == 4000
    assert value(s, "sclp_vni_info", vni="43", protocol="vxlan", tap="") == 1
    assert value(s, "sclp_cluster_connected") == 1 and value(s, "sclp_cluster_members") == 5
    assert value(s, "sclp_cluster_conflicts") == 1


def test_bgp_sessions_and_routes(server: MetricsServer, fake: Fake) -> None:
    fake.stats = copy.deepcopy(STATS)
    fake.stats["bgp"] = {
        "asn": 65001,
        "speaker": {"running": True, "pid": 9, "restarts": 2, "last_exit": "..."},
        "neighbors": [
            {"address": "10.0.0.254", "state": "established", "routes_received": 7},
            {"address": "10.0.0.253", "state": "down", "routes_received": 3},
        ],
        "routes_advertised": 4,
    }
    s = scrape(server)
    assert value(s, "sclp_bgp_session_up", neighbor="10.0.0.254") == 1
    assert value(s, "sclp_bgp_session_up", neighbor="10.0.0.253") == 0
    assert value(s, "sclp_bgp_routes_received", neighbor="10.0.0.253") == 3
    assert value(s, "sclp_bgp_routes_advertised") == 4
    assert value(s, "sclp_bgp_speaker_restarts_total") == 2
    fake.stats["bgp"] = None  # no [bgp]: no bgp families
    assert not {n for n in names(scrape(server)) if n.startswith("sclp_bgp")}


def test_drops_by_vni_and_reason_with_the_endpoint_wide_rest(
    server: MetricsServer, fake: Fake
) -> None:
    fake.stats = copy.deepcopy(STATS)
    s = scrape(server)
    drops = {
        (dict(labels)["vni"], dict(labels)["reason"]): v
        for (name, labels), v in s.items()
        if name == "sclp_drops_total"
    }
    assert drops == {
        ("42", "not_peer"): 5,
        ("43", "oversize"): 1,
        ("", "not_peer"): 2,  # 7 in total, 5 of them on VNI 42
        ("", "timeout"): 4,
        ("", "oversize"): 0,
        ("", "tx_error"): 0,
    }
    # Summing over vni gives the endpoint's totals.
    assert sum(v for (_, r), v in drops.items() if r == "not_peer") == 7


def test_numbers_follow_the_published_snapshot(server: MetricsServer, fake: Fake) -> None:
    fake.stats = copy.deepcopy(STATS)
    before = scrape(server)
    moved = copy.deepcopy(STATS)
    moved["counters"]["tx_frames"] += 5
    moved["vni"]["42"]["tx_frames"] += 5
    moved["counters"]["drop_timeout"] += 3
    moved["counters"]["reasm_entries"] = 0
    moved["vni"]["43"]["fdb_entries"] = 7
    moved["uptime_s"] = 13.0
    moved["faults"] = {"fault_packets": 9, "fault_dropped": 1}
    del moved["peers"]  # older endpoints publish no peers: the family is left out
    fake.stats = moved
    after = scrape(server)
    assert value(before, "sclp_tx_frames_total", vni="42") == 10
    assert value(after, "sclp_tx_frames_total", vni="42") == 15
    assert value(after, "sclp_drops_total", vni="", reason="timeout") == 7
    assert value(after, "sclp_reassembly_entries") == 0
    assert value(after, "sclp_fdb_entries", vni="43") == 7
    assert value(after, "sclp_uptime_seconds") == 13.0
    assert value(after, "sclp_faults_total", kind="dropped") == 1
    assert value(after, "sclp_faults_total", kind="packets") == 9
    assert "sclp_peers" not in names(after)
    # Back to no snapshot (e.g. a restarted publisher): up goes to 0, the data goes.
    fake.stats = None
    gone = scrape(server)
    assert value(gone, "sclp_up") == 0
    assert "sclp_tx_frames_total" not in names(gone)


def test_a_failing_snapshot_reads_as_down(fake: Fake) -> None:
    def broken() -> dict[str, Any] | None:
        raise RuntimeError("boom")

    srv = MetricsServer.start(("127.0.0.1", 0), broken, fake.check, name="host1")
    try:
        s = scrape(srv)
        assert value(s, "sclp_up") == 0
    finally:
        srv.close()


def test_healthz(server: MetricsServer, fake: Fake) -> None:
    assert get(server, "/healthz") == (200, "ok: loop ticking\n")
    fake.health = (False, "loop stalled for 3.0 s")
    assert get(server, "/healthz") == (503, "unhealthy: loop stalled for 3.0 s\n")


def test_a_degraded_endpoint_is_served_as_degraded(server: MetricsServer, fake: Fake) -> None:
    fake.health = (True, "degraded: sends to 1 peer(s) failing: 10.0.0.9 port_unreachable for 3 s")
    assert get(server, "/healthz") == (
        200,
        "degraded: sends to 1 peer(s) failing: 10.0.0.9 port_unreachable for 3 s\n",
    )


def test_send_errors_sent_packets_and_failing_peers(server: MetricsServer, fake: Fake) -> None:
    stats = copy.deepcopy(STATS)
    stats["counters"].update(
        tx_sent=290, tx_errors_async=4, tx_async_port_unreachable=3, tx_async_frag_needed=1
    )
    stats["tx_errors"] = {
        "10.0.0.9": {"refused": 0, "async_errors": 3, "failing_since_s": 2.5, "last_error": "x"},
        "10.0.0.7": {"refused": 10, "async_errors": 1, "failing_since_s": None, "last_error": "y"},
    }
    fake.stats = stats
    s = scrape(server)
    assert value(s, "sclp_tx_sent_total") == 290
    assert value(s, "sclp_tx_async_errors_total", reason="port_unreachable") == 3
    assert value(s, "sclp_tx_async_errors_total", reason="frag_needed") == 1
    failing = {
        dict(labels)["peer"]: v for (n, labels), v in s.items() if n == "sclp_peer_failing_seconds"
    }
    assert failing == {"10.0.0.9": 2.5}  # only peers failing now


def test_other_paths_are_404(server: MetricsServer, fake: Fake) -> None:
    for path in ("/", "/metricsx", "/healthz/", "/favicon.ico"):
        status, _ = get(server, path)
        assert status == 404, path
    assert fake.calls == 0  # no scrape happened


def test_a_second_server_on_the_same_port_fails(server: MetricsServer, fake: Fake) -> None:
    with pytest.raises(OSError):
        MetricsServer.start(("127.0.0.1", server.port), fake.snapshot, fake.check)
    assert get(server, "/healthz")[0] == 200  # the first one is unharmed


def test_an_address_not_on_this_host_fails(fake: Fake) -> None:
    with pytest.raises(OSError):  # 192.0.2.0/24 is TEST-NET-1, never local
        MetricsServer.start(("192.0.2.1", 0), fake.snapshot, fake.check)


def test_close_releases_the_port(fake: Fake) -> None:
    srv = MetricsServer.start(("127.0.0.1", 0), fake.snapshot, fake.check)
    port = srv.port
    srv.close()
    srv.close()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
    again = MetricsServer.start(("127.0.0.1", port), fake.snapshot, fake.check)
    again.close()


def test_ipv6_loopback(fake: Fake) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        srv = MetricsServer.start(("::1", 0), fake.snapshot, fake.check)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        url = f"http://[::1]:{srv.port}/healthz"
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            assert response.status == 200
    finally:
        srv.close()

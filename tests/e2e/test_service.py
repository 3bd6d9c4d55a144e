"""Running it as a service, end to end: real endpoints in namespaces, scraped over
HTTP with the Prometheus text parser, checked with ``sclp health``, told SIGHUP, and
started under a fake systemd ``NOTIFY_SOCKET`` that must hear READY=1, WATCHDOG=1
and STOPPING=1."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sclp.lab.testbed import Testbed

from .helpers import sclp_cli, shut_down

METRICS_PORT = 9723
WATCHDOG_USEC = 400_000  # the endpoint must send WATCHDOG=1 every 0.2 s


@pytest.fixture(scope="module")
def notify_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path_factory.mktemp("notify") / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield sock, path
    finally:
        sock.close()


@pytest.fixture(scope="module")
def testbed(notify_socket: tuple[socket.socket, str]) -> Iterator[Testbed]:
    _, path = notify_socket
    tb = Testbed(
        protocol="vxlan-sclp",
        carrier="udp",
        extra_config=f'[metrics]\nlisten = "127.0.0.1:{METRICS_PORT}"\n',
        env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": str(WATCHDOG_USEC)},
    )
    tb.build()
    try:
        yield tb
    finally:
        shut_down(tb)


def scrape(tb: Testbed, host: int, path: str = "/metrics") -> tuple[int, str]:
    """GET http://127.0.0.1:PORT/PATH inside host ``host``'s namespace, where the
    endpoint listens (it enters its underlay namespace before serving)."""
    code = (
        "import sys, urllib.request, urllib.error\n"
        "try:\n"
        f"    r = urllib.request.urlopen('http://127.0.0.1:{METRICS_PORT}{path}', timeout=5)\n"
        "    print(r.status); print(r.read().decode())\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code); print(e.read().decode())\n"
    )
    out = tb.run_in(tb.hosts[host], [sys.executable, "-c", code], timeout=20).stdout
    status, _, body = out.partition("\n")
    return int(status), body


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    for (sample, sample_labels), v in found.items():
        if sample == name and all((k, x) in sample_labels for k, x in labels.items()):
            return v
    raise AssertionError(f"{name} {labels} not in the scrape: {sorted({n for n, _ in found})}")


@pytest.mark.netns
@pytest.mark.timeout(120)
def test_metrics_are_scraped_and_move_with_traffic(testbed: Testbed) -> None:
    deadline = time.monotonic() + 10
    while True:  # the first snapshot is published within half a second of the start
        status, text = scrape(testbed, 0)
        if (status == 200 and "sclp_up 1.0" in text) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status == 200, text
    before = samples(text)
    assert value(before, "sclp_up") == 1
    assert value(before, "process_resident_memory_bytes") > 0
    assert value(before, "sclp_peers", vni="42") == 1
    assert value(before, "sclp_vm_mtu", vni="42") > 0

    testbed.iperf3(seconds=1)
    time.sleep(0.7)  # one more snapshot (every 0.5 s)
    status, text = scrape(testbed, 0)
    after = samples(text)
    sent = value(after, "sclp_tx_bytes_total", vni="42") - value(
        before, "sclp_tx_bytes_total", vni="42"
    )
    assert sent > 1_000_000, sent
    assert value(after, "sclp_tx_frames_total", vni="42") > value(
        before, "sclp_tx_frames_total", vni="42"
    )
    assert any(name == "sclp_drops_total" for name, _ in after)


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_healthz_and_sclp_health_say_it_serves(testbed: Testbed) -> None:
    status, body = scrape(testbed, 1, "/healthz")
    assert status == 200 and body.startswith("ok"), body
    result = sclp_cli("health", "--name", testbed.endpoint_name(1))
    assert result.returncode == 0, result
    assert result.stdout.startswith("ok: "), result.stdout
    missing = sclp_cli("health", "--name", "no-such-endpoint")
    assert missing.returncode == 1
    assert missing.stdout.startswith("unhealthy: no-such-endpoint"), missing.stdout


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_systemd_hears_ready_and_the_watchdog(
    testbed: Testbed, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, _ = notify_socket
    sock.settimeout(5.0)
    heard: list[str] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        sum("READY=1" in m for m in heard) < 2 or sum("WATCHDOG=1" in m for m in heard) < 4
    ):
        heard.append(sock.recv(4096).decode())
    assert sum("READY=1" in m for m in heard) >= 2, heard  # one per endpoint
    assert sum("WATCHDOG=1" in m for m in heard) >= 4, heard


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_sighup_rereads_the_file_and_keeps_forwarding(testbed: Testbed) -> None:
    proc = testbed.endpoints[0]
    os.kill(proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "SIGHUP" not in testbed.log_text(0) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "re-read, unchanged" in testbed.log_text(0), testbed.log_text(0)[-500:]
    assert proc.poll() is None
    assert testbed.stats(0)["name"] == testbed.endpoint_name(0)


@pytest.mark.timeout(30)
def test_the_unit_file_names_what_the_issue_needs() -> None:
    unit = (Path(__file__).parents[2] / "contrib" / "systemd" / "sclp@.service").read_text()
    for line in (
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=",
        "/etc/sclp/%i.toml",
        "ExecStart=/opt/sclp/bin/sclp run %i",
    ):
        assert line in unit, line
    assert "CAP_NET_ADMIN" in unit and "CAP_NET_RAW" in unit

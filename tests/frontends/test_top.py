"""sclp top: the rates between two stats answers, the table, and the polling loop
against a fake control server (no root)."""

from __future__ import annotations

import copy
import os
import select
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from sclp.endpoint.control import ControlServer, socket_path
from sclp.top import TOTAL, Row, human_gbps, human_rate, rates, render, run_top


def vni_counters(**values: int) -> dict[str, Any]:
    base: dict[str, Any] = {
        "protocol": "vxlan-sclp",
        "tap": "tap42",
        "vm_mtu": 1450,
        "fdb_entries": 2,
        "tx_frames": 0,
        "rx_frames": 0,
        "tx_bytes": 0,
        "rx_bytes": 0,
        "tx_packets": 0,
        "rx_packets": 0,
        "drop_no_route": 0,
        "drop_tap_busy": 0,
    }
    base.update(values)
    return base


def snapshot(uptime: float, vnis: dict[str, dict[str, Any]], **totals: int) -> dict[str, Any]:
    counters = {
        "tx_frames": 0,
        "rx_frames": 0,
        "tx_bytes": 0,
        "rx_bytes": 0,
        "tx_packets": 0,
        "rx_packets": 0,
        "reasm_entries": 0,
        "reasm_bytes_held": 0,
        "drop_no_route": 0,
        "drop_not_peer": 0,
        "drop_tap_busy": 0,
    }
    counters.update(totals)
    return {
        "name": "host1",
        "pid": 1234,
        "uptime_s": uptime,
        "underlay": {"local": "10.0.0.1", "mtu": 1500, "sclp_carrier": "udp"},
        "counters": counters,
        "vni": vnis,
        "faults": None,
    }


PREV = snapshot(
    10.0,
    {"42": vni_counters(tx_frames=100, rx_frames=50, tx_bytes=10**6, rx_bytes=5 * 10**5)},
    tx_frames=100,
    rx_frames=50,
    tx_bytes=10**6,
    rx_bytes=5 * 10**5,
    tx_packets=1000,
    rx_packets=400,
)
CUR = snapshot(
    12.0,
    {
        "42": vni_counters(
            tx_frames=2100,  # +2000 in 2 s
            rx_frames=1050,  # +1000
            tx_bytes=10**6 + 2 * 10**9,  # +2 GB: 8 Gbit/s
            rx_bytes=5 * 10**5 + 5 * 10**8,  # +0.5 GB: 2 Gbit/s
            tx_packets=90000,
            drop_no_route=6,
            drop_tap_busy=2,
            fdb_entries=3,
        )
    },
    tx_frames=2100,
    rx_frames=1050,
    tx_bytes=10**6 + 2 * 10**9,
    rx_bytes=5 * 10**5 + 5 * 10**8,
    tx_packets=91000,
    rx_packets=40400,
    drop_no_route=6,
    drop_not_peer=20,
    drop_tap_busy=2,
)


def by_vni(rows: list[Row]) -> dict[str, Row]:
    return {row.vni: row for row in rows}


def test_rates_exact_numbers() -> None:
    rows = rates(PREV, CUR, 2.0)
    assert [r.vni for r in rows] == ["42", TOTAL]
    vni = by_vni(rows)["42"]
    assert vni.protocol == "vxlan-sclp"
    assert vni.frames_out == 1000.0
    assert vni.frames_in == 500.0
    assert vni.gbps_out == pytest.approx(8.0)
    assert vni.gbps_in == pytest.approx(2.0)
    assert vni.packets_out == 45000.0
    assert vni.packets_in == 0.0
    assert vni.packets == 45000.0
    assert vni.drops == 4.0  # (6 + 2) / 2 s
    assert vni.top_drop == "no_route"
    assert vni.fdb_entries == 3
    total = by_vni(rows)[TOTAL]
    assert total.protocol == ""
    assert total.frames_out == 1000.0
    assert total.packets_out == 45000.0
    assert total.packets_in == 20000.0
    assert total.packets == 65000.0
    assert total.drops == 14.0  # (6 + 20 + 2) / 2 s: not_peer is charged to no VNI
    assert total.top_drop == "not_peer"
    assert total.fdb_entries == 3


def test_rates_without_drops_have_no_top_reason() -> None:
    rows = rates(PREV, copy.deepcopy(PREV) | {"uptime_s": 11.0}, 1.0)
    for row in rows:
        assert row.drops == 0.0
        assert row.top_drop is None
        assert row.frames_in == row.frames_out == row.gbps_in == row.packets == 0.0


def test_counters_going_backwards_give_zero_not_negative() -> None:
    # The endpoint restarted: uptime and every counter went back.
    restarted = snapshot(1.0, {"42": vni_counters(tx_frames=7, drop_no_route=1)}, tx_frames=7)
    for row in rates(CUR, restarted, 1.0):
        assert row.frames_out == 0.0
        assert row.drops == 0.0
        assert row.top_drop is None
    # Uptime moved on but one counter went back: that one is 0, the others count.
    odd = copy.deepcopy(CUR)
    odd["uptime_s"] = 13.0
    odd["vni"]["42"]["tx_frames"] = 5
    odd["vni"]["42"]["rx_frames"] = 1150
    row = by_vni(rates(CUR, odd, 1.0))["42"]
    assert row.frames_out == 0.0
    assert row.frames_in == 100.0
    # Restart detected by the uptime alone, even where counters happen to be larger.
    bigger = copy.deepcopy(CUR)
    bigger["uptime_s"] = 0.5
    bigger["vni"]["42"]["tx_frames"] = 10**6
    assert by_vni(rates(CUR, bigger, 1.0))["42"].frames_out == 0.0


def test_new_and_vanished_vnis() -> None:
    cur = copy.deepcopy(CUR)
    cur["vni"]["7"] = vni_counters(protocol="geneve", tx_frames=999, fdb_entries=1)
    rows = rates(PREV, cur, 2.0)
    assert [r.vni for r in rows] == ["7", "42", TOTAL]  # numeric order
    new = by_vni(rows)["7"]
    assert new.protocol == "geneve"
    assert new.frames_out == 0.0  # no baseline yet
    assert new.fdb_entries == 1
    assert by_vni(rows)[TOTAL].fdb_entries == 4
    # 42 went away: only the total remains.
    gone = copy.deepcopy(CUR)
    gone["vni"] = {}
    assert [r.vni for r in rates(PREV, gone, 2.0)] == [TOTAL]


def test_rates_with_no_elapsed_time_are_zero() -> None:
    for row in rates(PREV, CUR, 0.0):
        assert row.frames_out == 0.0
        assert row.drops == 0.0


def test_human_numbers() -> None:
    assert [human_rate(v) for v in (0, 0.4, 7, 999, 1234, 45000, 123456, 1.5e6, 2e9)] == [
        "0",
        "0",
        "7",
        "999",
        "1.23k",
        "45.0k",
        "123k",
        "1.50M",
        "2.00G",
    ]
    assert [human_gbps(v) for v in (0, 0.0001, 0.25, 7.3, 12.34, 150)] == [
        "0",
        "<0.001",
        "0.250",
        "7.30",
        "12.3",
        "150",
    ]


def text_of(renderable: Any) -> str:
    console = Console(record=True, width=140)
    console.print(renderable)
    return console.export_text()


def test_render_shows_the_cells() -> None:
    text = text_of(render(rates(PREV, CUR, 2.0), CUR, 1.0))
    for cell in (
        "host1",
        "10.0.0.1",
        "udp",
        "up 12s",
        "VNI",
        "protocol",
        "frames/s in",
        "Gbit/s out",
        "underlay pkt/s",
        "drops/s",
        "top drop",
        "FDB",
        "vxlan-sclp",
        "1.00k",  # frames/s out
        "500",  # frames/s in
        "8.00",  # Gbit/s out
        "2.00",  # Gbit/s in
        "45.0k",  # underlay, VNI 42
        "65.0k",  # underlay, total
        "no_route",
        "not_peer",
        TOTAL,
    ):
        assert cell in text, f"{cell!r} not in\n{text}"
    line = next(row for row in text.splitlines() if " 42 " in row)
    assert line.index("1.00k") < line.index("8.00") < line.index("45.0k") < line.index("no_route")


# -- run_top against a fake control server ----------------------------------------------


class FakeEndpoint:
    """A ControlServer whose ``stats`` advance by fixed amounts on every call, served
    from a thread."""

    def __init__(self, path: str) -> None:
        self.calls = 0
        self.server = ControlServer(path, {"stats": self.stats})
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def stats(self) -> dict[str, Any]:
        n = self.calls
        self.calls += 1
        vni = vni_counters(
            tx_frames=1000 * n,
            rx_frames=250 * n,
            tx_bytes=10**9 * n,  # 8 Gbit/s at one second per call
            rx_bytes=125 * 10**6 * n,  # 1 Gbit/s
            tx_packets=700_000 * n,
            drop_tap_busy=3 * n,
        )
        return snapshot(
            100.0 + n,  # the endpoint's clock: one second per call, exact rates
            {"42": vni},
            tx_frames=1000 * n,
            rx_frames=250 * n,
            tx_bytes=10**9 * n,
            rx_bytes=125 * 10**6 * n,
            tx_packets=700_000 * n,
            rx_packets=20_000 * n,
            drop_tap_busy=3 * n,
        )

    def _serve(self) -> None:
        while not self.stop.is_set():
            ready, _, _ = select.select([self.server.sock], [], [], 0.05)
            if ready:
                time.sleep(0.005)  # let the request line arrive: no watch callbacks here
                self.server.handle_ready()

    def __enter__(self) -> FakeEndpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.server.close()


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[FakeEndpoint]:
    with FakeEndpoint(socket_path("host1", str(tmp_path))) as fake:
        yield fake


@pytest.mark.timeout(20)
def test_run_top_prints_one_table_per_interval(tmp_path: Path, endpoint: FakeEndpoint) -> None:
    console = Console(record=True, width=140)
    started = time.monotonic()
    code = run_top("host1", control_dir=str(tmp_path), interval=0.2, iterations=2, console=console)
    elapsed = time.monotonic() - started
    assert code == 0
    assert 0.35 < elapsed < 5
    assert endpoint.calls == 3  # a baseline, then one per table
    text = console.export_text()
    assert text.count("sclp top: host1") == 2
    line = next(row for row in text.splitlines() if " 42 " in row)
    for cell in ("vxlan-sclp", "250", "1.00k", "1.00", "8.00", "700k", "3", "tap_busy", "2"):
        assert cell in line, f"{cell!r} not in {line!r}"
    total = next(row for row in text.splitlines() if TOTAL in row)
    assert "720k" in total


@pytest.mark.timeout(20)
def test_run_top_picks_the_only_endpoint(tmp_path: Path, endpoint: FakeEndpoint) -> None:
    console = Console(record=True, width=140)
    code = run_top(None, control_dir=str(tmp_path), interval=0.05, iterations=1, console=console)
    assert code == 0
    assert "sclp top: host1" in console.export_text()


def test_run_top_when_not_running(tmp_path: Path) -> None:
    console = Console(record=True, width=140)
    assert run_top("nope", control_dir=str(tmp_path), interval=0.05, iterations=1, console=console)
    text = console.export_text()
    assert text.startswith("sclp: error: no endpoint control socket at ")
    assert "nope.sock" in text
    assert len(text.strip().splitlines()) == 1


def test_run_top_needs_a_name_when_there_are_several(tmp_path: Path) -> None:
    servers = [ControlServer(socket_path(n, str(tmp_path)), {}) for n in ("b", "a")]
    try:
        console = Console(record=True, width=140)
        assert run_top(None, control_dir=str(tmp_path), iterations=1, console=console) == 1
        text = console.export_text().strip()
        assert text == "sclp: error: say which endpoint with --name NAME (found: a, b)"
    finally:
        for server in servers:
            server.close()
    console = Console(record=True, width=140)
    assert run_top(None, control_dir=str(tmp_path / "none"), iterations=1, console=console) == 1
    assert "found: none running" in console.export_text()


@pytest.mark.timeout(20)
def test_run_top_reports_an_endpoint_that_goes_away(tmp_path: Path) -> None:
    console = Console(record=True, width=140)
    fake = FakeEndpoint(socket_path("host1", str(tmp_path)))
    original = fake.stats

    def stats_then_stop() -> dict[str, Any]:
        answer = original()
        os.unlink(fake.server.path)  # the endpoint is gone after the baseline
        return answer

    fake.server.handlers["stats"] = stats_then_stop
    with fake:
        code = run_top(
            "host1", control_dir=str(tmp_path), interval=0.1, iterations=5, console=console
        )
    assert code == 1
    text = console.export_text()
    assert text.startswith("sclp: error: no endpoint control socket at ")
    assert "sclp top" not in text

"""``sclp bench`` figures without namespaces: the copy floor, the UDP rate search, the
per-GB arithmetic, the goal ratios, the tables, the process figures from /proc.

No speed thresholds: the goals are benchmark goals, reported by the run.
"""

from __future__ import annotations

import os
import resource
from typing import Any

import pytest

from sclp.lab.bench.configs import (
    BenchConfig,
)
from sclp.lab.bench.floor import COPY_BYTES, measure_copy_floor, vs_floor
from sclp.lab.bench.goals import GUEST_GOALS, add_bridge_ratios, compute_ratios
from sclp.lab.bench.machine import process_cpu_seconds, process_peak_rss_mb
from sclp.lab.bench.measure import summarise
from sclp.lab.bench.tables import (
    GUEST_TABLE_COLUMNS,
    TABLE_COLUMNS,
    copy_floor_text,
    table_columns,
    table_rows,
)
from sclp.lab.bench.udprate import RateBisection, RateSearch

GOAL_KEYS = {
    "sclp_udp_cpu_vs_copy_floor",
    "sclp_udp_cpu_vs_io_floor",
    "sclp_ip_vs_vxlan",
    "sclp_ip_vs_tinc",
    "stt_vs_sclp_ip",
    "sclp_udp_vs_vxlan_adjusted",
    "frames_per_gb_vxlan_vs_sclp_udp",
    "frames_per_gb_vxlan_vs_sclp_ip",
    "rss_mb_peak_max",
}
REPORTED_KEYS = {
    "sclp_ip_cpu_vs_copy_floor",
    "sclp_ip_cpu_vs_native_floor",
    "stt_cpu_vs_native_floor",
    "tinc_cpu_vs_copy_floor",
    "sclp_udp_vs_tinc",
    "sclp_udp_vs_kernel_vxlan",
    "sclp_ip_vs_kernel_vxlan",
    "vxlan_vs_kernel_vxlan_no_offloads",
}
RATIO_KEYS = GOAL_KEYS | REPORTED_KEYS


def test_copy_floor_is_four_64k_copies_measured_here() -> None:
    floor = measure_copy_floor(trials=3)
    assert len(floor.trials_s_per_gb) == 3 and floor.one_copy_s_per_gb > 0
    assert floor.floor_s_per_gb == pytest.approx(4 * floor.one_copy_s_per_gb)
    assert floor.one_copy_us == pytest.approx(floor.one_copy_s_per_gb * COPY_BYTES / 1e3)
    doc = floor.as_json()
    assert doc["copies_per_frame"] == 4 and doc["aliased_copy_us"] > 0
    assert doc["buffer_set_bytes"] > 1 << 20  # beyond a core's L2
    assert vs_floor(2.0, 0.5) == 4.0
    assert vs_floor(None, 0.5) is None and vs_floor(1.0, None) is None


def test_udp_rate_search_bisects_to_the_highest_rate_under_the_loss_limit() -> None:
    search = RateSearch(probe_seconds=1, probes=4)
    b = RateBisection(search)
    # Unlimited: 4 Gbit/s sent, 1 arrived (75 % lost): the first offer is 0.95 Gbit/s.
    offer = b.record(None, 4e9, 1e9, 75.0)
    assert offer == pytest.approx(0.95e9)
    offer = b.record(offer, 0.95e9, 0.95e9, 0.2)  # passes, nothing lost yet: grow by half
    assert offer == pytest.approx(1.425e9)
    assert offer is not None
    offer = b.record(offer, offer, 1.2e9, 50.0)  # fails: bisection from now on
    assert offer == pytest.approx((0.95e9 + 1.425e9) / 2)
    assert offer is not None
    offer = b.record(offer, offer, offer, 0.5)  # passes
    assert offer == pytest.approx((1.1875e9 + 1.425e9) / 2)
    assert b.record(offer, offer, offer * 0.9, 10.0) is None  # fails; the search is spent
    assert len(b.probes) == search.max_runs == 5
    doc = b.as_json()
    assert doc["found"] and not doc["unlimited"]
    assert doc["offered_gbps"] == pytest.approx(1.1875)
    # Growth stops at the sender's rate, and the search with it.
    capped = RateBisection(search)
    offer = capped.record(None, 1.2e9, 1e9, 30.0)
    offer = capped.record(offer, offer, offer, 0.0)
    assert offer == pytest.approx(1.2e9)
    assert capped.record(offer, offer, offer, 0.0) is None
    assert capped.as_json()["offered_gbps"] == pytest.approx(1.2)
    # Losing under the limit at an unlimited rate ends the search at once.
    fast = RateBisection(search)
    assert fast.record(None, 3e9, 2.99e9, 0.4) is None
    assert fast.as_json()["unlimited"] and fast.as_json()["offered_gbps"] is None
    # Every probe losing: two more probes, each halving, then no rate found (the
    # caller measures the lowest offer tried and reports its loss).
    lossy = RateBisection(RateSearch(probe_seconds=1, probes=2))
    offers = []
    offer = lossy.record(None, 2e9, 1e9, 50.0)
    while offer is not None:
        offers.append(offer)
        offer = lossy.record(offer, offer, offer / 2, 50.0)
    assert lossy.as_json()["found"] is False and lossy.best is None
    assert lossy.as_json()["offered_gbps"] == pytest.approx(min(offers) / 1e9)
    assert len(lossy.probes) == 3 + 2
    assert offers == sorted(offers, reverse=True) and offers[-1] == pytest.approx(offers[0] / 8)
    # ... and a probe passing among the extra ones ends the search with it.
    late = RateBisection(RateSearch(probe_seconds=1, probes=2))
    offer = late.record(None, 2e9, 1e9, 50.0)
    offer = late.record(offer, offer, offer / 2, 50.0)
    offer = late.record(offer, offer, offer / 2, 50.0)
    assert offer is not None
    late.record(offer, offer, offer, 0.0)
    assert late.as_json()["found"] and late.as_json()["offered_gbps"] == pytest.approx(offer / 1e9)


def _run(gbps: float, gigabytes: float, frames: int, cpu: float | None) -> dict[str, Any]:
    return {
        "gbps": gbps,
        "bytes_received": int(gigabytes * 1e9),
        "vm_rx_packets": frames,
        "endpoint_cpu_s": cpu,
        "retransmits": 2,
        "lost_percent": 5.0,
    }


def test_summary_divides_by_the_gigabytes_received() -> None:
    runs = [_run(3.0, 1.0, 1000, 2.0), _run(5.0, 3.0, 3000, 6.0), _run(4.0, 0.0, 0, 0.0)]
    r = summarise(BenchConfig("stt"), "tcp", runs, 1500, 40.5, None, copy_floor_s_per_gb=0.5)
    assert r["gbps_median"] == 4.0 and r["gbps_runs"] == [3.0, 5.0, 4.0]
    assert r["frames_per_gb_rx_vm"] == pytest.approx(1000.0)
    assert r["cpu_s_per_gb"] == pytest.approx(2.0)
    assert r["cpu_per_gb_vs_floor"] == pytest.approx(4.0)
    # Without I/O floors: no multiples of them.
    assert r["cpu_per_gb_vs_io_floor"] is None and r["cpu_per_gb_vs_native_floor"] is None
    assert r["retransmits"] == 6 and r["rss_mb_peak"] == 40.5 and "error" not in r
    ref = summarise(BenchConfig("veth"), "udp", runs[:1], 1500, None, None, 1200)
    assert ref["cpu_s_per_gb"] == pytest.approx(2.0)  # whatever was measured is kept
    assert ref["rss_mb_peak"] is None and ref["retransmits"] is None
    assert ref["loss_percent"] == 5.0 and ref["udp_datagram_bytes"] == 1200
    assert ref["cpu_per_gb_vs_floor"] is None  # no floor given
    assert ref["cpu_per_gb_vs_io_floor"] is None and ref["cpu_per_gb_vs_native_floor"] is None
    assert ref["udp_rate_search"] is None and ref["offered_gbps"] is None
    failed = summarise(BenchConfig("vxlan"), "tcp", [], 1450, None, "boom")
    assert failed["error"] == "boom" and failed["gbps_median"] is None
    assert failed["frames_per_gb_rx_vm"] is None and failed["retransmits"] is None


def _result(
    label: str,
    gbps: float,
    frames: float,
    rss: float | None = 50.0,
    vs_floor: float = 2.0,
    vs_io: float | None = None,
    vs_native: float | None = None,
) -> dict[str, Any]:
    return {
        "label": label,
        "transport": "tcp",
        "ablation": "no-level1" if "no-level" in label else None,
        "reference": label in ("kernel-vxlan", "kernel-vxlan/no-offloads", "tinc"),
        "gbps_median": gbps,
        "frames_per_gb_rx_vm": frames,
        "cpu_per_gb_vs_floor": vs_floor,
        "cpu_per_gb_vs_io_floor": vs_io,
        "cpu_per_gb_vs_native_floor": vs_native,
        "rss_mb_peak": rss,
    }


def test_ratios_follow_the_issue_goals() -> None:
    results = [
        _result("vxlan", 1.0, 50_000),
        _result("kernel-vxlan", 10.0, 20_000, None),
        _result("kernel-vxlan/no-offloads", 2.0, 20_000, None),
        _result("tinc", 1.0, 20_000, 500.0, vs_floor=9.0),  # a reference's RSS never counts
        _result("vxlan-sclp/udp", 6.5, 2_000, vs_floor=1.4, vs_io=0.35),
        _result("vxlan-sclp/ip", 3.0, 3_000, 160.0, vs_native=0.25),
        _result("vxlan-sclp/ip/no-level1", 100.0, 1),  # an ablation never counts
        _result("stt", 3.9, 3_000),
    ]
    ratios = compute_ratios(results)
    assert set(ratios) == RATIO_KEYS
    assert ratios["sclp_udp_cpu_vs_copy_floor"]["value"] == pytest.approx(1.4)
    assert ratios["sclp_udp_cpu_vs_copy_floor"]["goal"] == "<= 1.5"
    assert ratios["sclp_udp_cpu_vs_copy_floor"]["holds"] is True
    assert ratios["sclp_udp_cpu_vs_io_floor"]["value"] == pytest.approx(0.35)
    assert ratios["sclp_udp_cpu_vs_io_floor"]["goal"] == "<= 3"
    assert ratios["sclp_udp_cpu_vs_io_floor"]["holds"] is True
    assert ratios["sclp_ip_cpu_vs_native_floor"]["value"] == pytest.approx(0.25)
    assert ratios["sclp_udp_vs_vxlan_adjusted"]["value"] == pytest.approx(6.5)
    assert ratios["sclp_udp_vs_vxlan_adjusted"]["holds"] is True  # >= 6
    assert ratios["sclp_ip_vs_vxlan"]["holds"] is False  # 3.0 < 3.4
    assert ratios["sclp_ip_vs_tinc"]["value"] == pytest.approx(3.0)
    assert ratios["sclp_ip_vs_tinc"]["holds"] is True  # >= 2.5
    assert ratios["stt_vs_sclp_ip"]["value"] == pytest.approx(1.3)
    assert ratios["stt_vs_sclp_ip"]["holds"] is False  # above 1.25
    assert ratios["frames_per_gb_vxlan_vs_sclp_udp"]["value"] == pytest.approx(25.0)
    assert ratios["frames_per_gb_vxlan_vs_sclp_ip"]["holds"] is False  # 16.7
    # Reported figures: a value, no goal.
    for key in REPORTED_KEYS:
        assert ratios[key]["goal"] is None and ratios[key]["holds"] is None, key
    assert ratios["sclp_udp_vs_kernel_vxlan"]["value"] == pytest.approx(0.65)
    assert ratios["tinc_cpu_vs_copy_floor"]["value"] == pytest.approx(9.0)
    assert ratios["vxlan_vs_kernel_vxlan_no_offloads"]["value"] == pytest.approx(0.5)
    assert ratios["rss_mb_peak_max"] == {
        "value": 160.0,
        "goal": "< 150",
        "holds": False,
        "of": ratios["rss_mb_peak_max"]["of"],
    }
    # A side not measured, or a zero denominator, leaves the goal unknown.
    empty = compute_ratios([_result("vxlan", 0.0, 0, None), _result("stt", 1.0, 1, None)])
    assert all(entry["value"] is None and entry["holds"] is None for entry in empty.values())


def test_tables_show_the_floor_and_the_multiple() -> None:
    floor = measure_copy_floor(trials=1)
    r = summarise(
        BenchConfig("vxlan-sclp", "udp"),
        "tcp",
        [_run(3.0, 1.0, 1000, 2.0)],
        1500,
        40.0,
        None,
        copy_floor_s_per_gb=floor.floor_s_per_gb,
    )
    report = {"results": [r], "copy_floor": floor.as_json()}
    (row,) = table_rows(report)
    assert row[TABLE_COLUMNS.index("CPU × floor")] == f"{2.0 / floor.floor_s_per_gb:,.1f}"
    assert "four copies per frame" in copy_floor_text(report)
    assert copy_floor_text({"results": []}) == "Copy floor: not measured"


def test_own_process_figures_are_read_from_proc() -> None:
    """The figures are this process's, read from /proc: what the kernel reports through
    getrusage too (CPU time, peak RSS), and a peak no smaller than the RSS now."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    cpu = process_cpu_seconds(os.getpid())
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = before.ru_utime + before.ru_stime
    cpu_after = after.ru_utime + after.ru_stime
    assert cpu_before - 0.05 <= cpu <= cpu_after + 0.05  # /proc counts in 10 ms ticks
    peak = process_peak_rss_mb(os.getpid())
    assert peak == pytest.approx(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, rel=0.05
    )
    with open(f"/proc/{os.getpid()}/status") as f:
        rss_now = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    # VmHWM follows VmRSS lazily (the kernel batches RSS counters): within 1 MB.
    assert 20 < rss_now <= peak + 1 < 4096  # pytest, Hypothesis and NumPy are loaded


def test_bridge_ratios_and_the_guest_table() -> None:
    results = [
        {**_result("bridge", 0.5, 20_000), "reference": True},
        {**_result("vxlan", 0.2, 700_000), "vm_rx_bytes_per_frame": 1_400.0},
        {**_result("vxlan-sclp/udp", 0.4, 30_000), "vm_rx_bytes_per_frame": 33_000.0},
    ]
    add_bridge_ratios(results)
    assert [r["gbps_vs_bridge"] for r in results] == [1.0, 0.4, 0.8]
    ratios = compute_ratios(results, GUEST_GOALS)
    assert ratios["sclp_udp_vs_bridge"]["value"] == pytest.approx(0.8)
    assert ratios["frames_per_gb_vxlan_vs_sclp_udp"]["value"] == pytest.approx(70_000 / 3_000)
    assert ratios["sclp_ip_vs_bridge"]["value"] is None
    assert all(ratios[g.key]["goal"] is None for g in GUEST_GOALS)
    report = {"vms": "qemu", "options": {"transports": ["tcp"]}, "results": results}
    assert table_columns(report) == GUEST_TABLE_COLUMNS
    rows = table_rows(report)
    column = GUEST_TABLE_COLUMNS.index
    assert [row[column("× bridge")] for row in rows] == ["1.00", "0.40", "0.80"]
    assert rows[2][column("guest rx B/frame")] == "33,000"
    assert rows[0][column("note")] == "reference"
    with_udp = {**report, "options": {"transports": ["tcp", "udp"]}}
    assert "UDP loss %" in table_columns(with_udp)
    assert all(len(row) == len(table_columns(with_udp)) for row in table_rows(with_udp))
    # Without the bridge there is nothing to divide by.
    alone = [_result("vxlan", 0.2, 1)]
    add_bridge_ratios(alone)
    assert alone[0]["gbps_vs_bridge"] is None

"""``sclp bench``: the quick run end to end (JSON complete and sane, chart and page
written), and the pieces that need no namespaces: configuration selection, the
per-GB arithmetic, the goal ratios, the command line.

No speed thresholds: the goals are benchmark goals, reported by the run.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sclp.cli import build_parser
from sclp.lab.bench.configs import (
    QUICK_LABELS,
    REFERENCES,
    BenchConfig,
    all_configs,
    select_configs,
)
from sclp.lab.bench.goals import compute_ratios
from sclp.lab.bench.machine import process_cpu_seconds, process_peak_rss_mb
from sclp.lab.bench.measure import summarise
from sclp.lab.bench.options import UDP_DATAGRAM_BYTES, BenchOptions
from tests.e2e.helpers import child_commands, sclp_cli, wait_for

RESULT_KEYS = {
    "protocol",
    "carrier",
    "transport",
    "vm_mtu",
    "ablation",
    "gbps_median",
    "gbps_runs",
    "retransmits",
    "frames_per_gb_rx_vm",
    "cpu_s_per_gb",
    "rss_mb_peak",
}
MACHINE_KEYS = {"cpu_model", "nproc", "kernel", "python", "numpy", "date"}
RATIO_KEYS = {
    "sclp_udp_vs_vxlan_adjusted",
    "sclp_udp_vs_kernel_vxlan",
    "sclp_ip_vs_vxlan",
    "stt_vs_sclp_ip",
    "frames_per_gb_vxlan_vs_sclp_udp",
    "frames_per_gb_vxlan_vs_sclp_ip",
    "vxlan_vs_kernel_vxlan_no_offloads",
    "rss_mb_peak_max",
}
# Measurable by --quick (both sides are in it).
QUICK_RATIOS = {
    "sclp_udp_vs_vxlan_adjusted",
    "sclp_udp_vs_kernel_vxlan",
    "frames_per_gb_vxlan_vs_sclp_udp",
    "rss_mb_peak_max",
}


def _check_measured(r: dict[str, Any], repeat: int) -> None:
    where = f"{r['label']} {r['transport']}"
    assert len(r["gbps_runs"]) == repeat, where
    assert all(g > 0 for g in r["gbps_runs"]), where
    assert min(r["gbps_runs"]) <= r["gbps_median"] <= max(r["gbps_runs"]), where
    assert r["frames_per_gb_rx_vm"] > 0, where
    assert 1280 <= r["vm_mtu"] <= 65535, where
    for run in r["runs"]:
        assert run["bytes_received"] > 0 and run["vm_rx_packets"] > 0, where
    if r["transport"] == "tcp":
        assert isinstance(r["retransmits"], int) and r["retransmits"] >= 0, where
    else:
        assert r["retransmits"] is None, where
        assert 0 <= r["loss_percent"] <= 100, where
        assert r["udp_datagram_bytes"] == UDP_DATAGRAM_BYTES, where
    if r["protocol"] in REFERENCES:
        assert r["cpu_s_per_gb"] is None and r["rss_mb_peak"] is None, where
    else:
        assert r["cpu_s_per_gb"] > 0, where
        assert 1 < r["rss_mb_peak"] < 4096, where


@pytest.mark.netns
@pytest.mark.timeout(240)
def test_quick_bench_writes_complete_json_chart_and_page(tmp_path: Path) -> None:
    report_path, chart, page = tmp_path / "b.json", tmp_path / "b.png", tmp_path / "r.md"
    args = ["bench", "--quick", "--json", str(report_path), "--plot", str(chart)]
    result = sclp_cli(*args, "--markdown", str(page), timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sclp bench: VM1 → VM2" in result.stdout

    report = json.loads(report_path.read_text())
    assert report["interrupted"] is False
    assert set(report["machine"]) >= MACHINE_KEYS
    assert report["machine"]["nproc"] >= 1
    assert report["options"]["duration_s"] == 1 and report["options"]["repeat"] == 1

    results = report["results"]
    seen = [(r["label"], r["transport"]) for r in results]
    assert seen == [(label, t) for label in QUICK_LABELS for t in ("tcp", "udp")]
    for r in results:
        assert set(r) >= RESULT_KEYS, r["label"]
        assert r["carrier"] == ("udp" if r["protocol"].endswith("-sclp") else None)
        if "error" in r:
            assert r["error"] and r["gbps_median"] is None and r["gbps_runs"] == []
        else:
            _check_measured(r, repeat=1)
    # The references, a classic tunnel and SCLP must work; the ablation knob belongs
    # to the endpoint and may be refused, which is then a reported failure.
    for r in results:
        if r["ablation"] is None:
            assert "error" not in r, f"{r['label']} {r['transport']}: {r['error']}"
    assert {r["protocol"] for r in results} >= {"veth", "kernel-vxlan", "vxlan", "vxlan-sclp"}
    assert [r["ablation"] for r in results if r["ablation"]] == ["no-level2", "no-level2"]

    ratios = report["ratios"]
    assert set(ratios) == RATIO_KEYS
    for key, entry in ratios.items():
        assert {"value", "goal", "holds", "of"} <= set(entry), key
        if key in QUICK_RATIOS:
            assert entry["value"] > 0 and isinstance(entry["holds"], bool), key
        else:
            assert entry["value"] is None and entry["holds"] is None, key

    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert chart.stat().st_size > 10_000
    text = page.read_text()
    assert report["command"] in text and "![sclp bench chart](b.png)" in text
    assert "[b.json](b.json)" in text


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_sigterm_ends_the_run_with_partial_results(tmp_path: Path) -> None:
    report_path = tmp_path / "b.json"
    args = ["--protocols", "veth", "--transports", "tcp", "--duration", "2", "--repeat", "5"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sclp", "bench", *args, "--json", str(report_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        # Interrupt once the first run is measured: when the second run's iperf3
        # client has started (runs are sequential; the first is in the results then).
        clients: set[int] = set()

        def second_run_started() -> bool:
            clients.update(
                pid
                for pid, argv in child_commands(proc.pid).items()
                if argv[:2] == ["iperf3", "-c"]
            )
            return len(clients) >= 2

        wait_for(second_run_started, timeout=40.0, what="bench's second iperf3 run started")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in out
    report = json.loads(report_path.read_text())
    assert report["interrupted"] is True
    # Whatever was measured before the signal is kept, marked as partial.
    for r in report["results"]:
        assert r["label"] == "veth" and 1 <= len(r["gbps_runs"]) < 5
        assert r["error"].startswith("interrupted after")
    assert set(report["ratios"]) == RATIO_KEYS


# -- without namespaces ------------------------------------------------------------


def test_every_configuration_has_a_unique_label_that_selects_it() -> None:
    configs = all_configs()
    labels = [c.label for c in configs]
    assert len(set(labels)) == len(labels) == 18
    for c in configs:
        assert c in select_configs([c.label])
    assert {c.protocol for c in configs} == {
        "veth",
        "kernel-vxlan",
        "vxlan",
        "geneve",
        "nvgre",
        "stt",
        "vxlan-sclp",
        "geneve-sclp",
    }


def test_a_name_selects_its_variants_in_table_order() -> None:
    labels = [c.label for c in select_configs(["vxlan-sclp/udp", "vxlan", "kernel-vxlan"])]
    assert labels == [
        "kernel-vxlan",
        "kernel-vxlan/no-offloads",
        "vxlan/mtu1500",
        "vxlan",
        "vxlan-sclp/udp",
        "vxlan-sclp/udp/no-level1",
        "vxlan-sclp/udp/no-level2",
    ]
    assert [c.label for c in select_configs(["veth", "veth", " "])] == ["veth"]
    with pytest.raises(ValueError, match="unknown configuration 'vxlan-sclp/tcp'"):
        select_configs(["vxlan-sclp/tcp"])


def test_quick_configs_are_the_documented_few() -> None:
    assert [c.label for c in BenchOptions(quick=True).configs()] == list(QUICK_LABELS)
    assert BenchOptions(quick=True).seconds == 1 and BenchOptions(quick=True).repeats == 1
    assert BenchOptions().seconds == 10 and BenchOptions().repeats == 3
    assert BenchOptions(quick=True, duration=4).seconds == 4


def test_ablation_passes_the_tuning_table_to_the_endpoints() -> None:
    tb = BenchConfig("vxlan-sclp", "udp", ablation="no-level1").testbed()
    text = tb.config_text(0)
    assert "[tuning]\nrx_batch = false\n[underlay]" in text
    assert 'sclp_carrier = "udp"' in text
    level2 = BenchConfig("vxlan-sclp", "ip", ablation="no-level2").testbed()
    assert "[tuning]\ndeliver_gso = false\n" in level2.config_text(1)
    assert BenchConfig("kernel-vxlan", kernel_offloads=False).testbed().kernel_offloads is False


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
    r = summarise(BenchConfig("stt"), "tcp", runs, 1500, 40.5, None)
    assert r["gbps_median"] == 4.0 and r["gbps_runs"] == [3.0, 5.0, 4.0]
    assert r["frames_per_gb_rx_vm"] == pytest.approx(1000.0)
    assert r["cpu_s_per_gb"] == pytest.approx(2.0)
    assert r["retransmits"] == 6 and r["rss_mb_peak"] == 40.5 and "error" not in r
    ref = summarise(BenchConfig("veth"), "udp", runs[:1], 1500, None, None, 1200)
    assert ref["cpu_s_per_gb"] == pytest.approx(2.0)  # whatever was measured is kept
    assert ref["rss_mb_peak"] is None and ref["retransmits"] is None
    assert ref["loss_percent"] == 5.0 and ref["udp_datagram_bytes"] == 1200
    failed = summarise(BenchConfig("vxlan"), "tcp", [], 1450, None, "boom")
    assert failed["error"] == "boom" and failed["gbps_median"] is None
    assert failed["frames_per_gb_rx_vm"] is None and failed["retransmits"] is None


def _result(label: str, gbps: float, frames: float, rss: float | None = 50.0) -> dict[str, Any]:
    return {
        "label": label,
        "transport": "tcp",
        "ablation": "no-level1" if "no-level" in label else None,
        "gbps_median": gbps,
        "frames_per_gb_rx_vm": frames,
        "rss_mb_peak": rss,
    }


def test_ratios_follow_the_issue_goals() -> None:
    results = [
        _result("vxlan", 1.0, 50_000),
        _result("kernel-vxlan", 10.0, 20_000, None),
        _result("kernel-vxlan/no-offloads", 2.0, 20_000, None),
        _result("vxlan-sclp/udp", 4.5, 2_000),
        _result("vxlan-sclp/ip", 2.0, 3_000, 160.0),
        _result("vxlan-sclp/ip/no-level1", 100.0, 1),  # an ablation never counts
        _result("stt", 2.6, 3_000),
    ]
    ratios = compute_ratios(results)
    assert ratios["sclp_udp_vs_vxlan_adjusted"]["value"] == pytest.approx(4.5)
    assert ratios["sclp_udp_vs_vxlan_adjusted"]["holds"] is True
    assert ratios["sclp_udp_vs_kernel_vxlan"]["holds"] is False  # 0.45 < 0.5
    assert ratios["sclp_ip_vs_vxlan"]["holds"] is False  # 2.0 < 2.5
    assert ratios["stt_vs_sclp_ip"]["value"] == pytest.approx(1.3)
    assert ratios["stt_vs_sclp_ip"]["holds"] is False  # above 1.25
    assert ratios["frames_per_gb_vxlan_vs_sclp_udp"]["value"] == pytest.approx(25.0)
    assert ratios["frames_per_gb_vxlan_vs_sclp_ip"]["holds"] is False  # 16.7
    assert ratios["vxlan_vs_kernel_vxlan_no_offloads"]["value"] == pytest.approx(0.5)
    assert ratios["vxlan_vs_kernel_vxlan_no_offloads"]["holds"] is None
    assert ratios["rss_mb_peak_max"] == {
        "value": 160.0,
        "goal": "< 150",
        "holds": False,
        "of": ratios["rss_mb_peak_max"]["of"],
    }
    # A side not measured, or a zero denominator, leaves the goal unknown.
    empty = compute_ratios([_result("vxlan", 0.0, 0, None), _result("stt", 1.0, 1, None)])
    assert all(entry["value"] is None and entry["holds"] is None for entry in empty.values())


def test_command_line_reproduces_the_options() -> None:
    options = BenchOptions(
        protocols=("vxlan", "vxlan-sclp/udp"),
        duration=5,
        repeat=2,
        transports=("tcp",),
        json_path=Path("out dir/r.json"),
        markdown_path=Path("docs/results.md"),
    )
    args = build_parser().parse_args(shlex.split(options.command_line())[1:])
    assert options.command_line().startswith("sclp bench --protocols vxlan,vxlan-sclp/udp ")
    assert "'out dir/r.json'" in options.command_line()
    assert args.duration == 5 and args.repeat == 2 and args.transports == "tcp"
    assert options.chart_path == Path("docs/results.png")


def test_own_process_figures_are_read_from_proc() -> None:
    assert process_cpu_seconds(os.getpid()) > 0
    assert 1 < process_peak_rss_mb(os.getpid()) < 65536


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--protocols", "vxlan,bogus"], "unknown configuration 'bogus'"),
        (["--transports", "sctp"], "--transports"),
        (["--repeat", "0"], "--repeat: must be at least 1"),
        (["--udp-length", "9000"], "--udp-length"),
    ],
)
def test_bad_options_are_usage_errors(args: list[str], message: str) -> None:
    result = sclp_cli("bench", *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


# `python -c` with matplotlib made unimportable, then the `sclp` command line.
_WITHOUT_MATPLOTLIB = (
    "import sys; sys.modules['matplotlib'] = None; "
    "from sclp.cli import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--plot", "sclp: error: --plot needs matplotlib: pip install 'sclp[plot]'"),
        ("--markdown", "sclp: error: --markdown (for its chart) needs matplotlib: "),
    ],
)
def test_chart_without_matplotlib_fails_before_measuring(
    tmp_path: Path, flag: str, message: str
) -> None:
    out = tmp_path / ("x.png" if flag == "--plot" else "x.md")
    result = _python(_WITHOUT_MATPLOTLIB, "bench", "--quick", flag, str(out))
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert result.stdout == "" and not out.exists()


def test_the_product_never_loads_the_lab_or_matplotlib() -> None:
    code = """
import importlib, pkgutil, sys
import sclp.cli, sclp.endpoint
sclp.cli.build_parser()
for info in pkgutil.walk_packages(sclp.endpoint.__path__, "sclp.endpoint."):
    importlib.import_module(info.name)
loaded = [m for m in sys.modules if m.split(".")[0] == "matplotlib" or m.startswith("sclp.lab")]
print(sorted(loaded))
"""
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"

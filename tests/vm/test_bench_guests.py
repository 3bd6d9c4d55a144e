"""``sclp bench --vms qemu``: the benchmark with two real QEMU guests as the VMs.

The smallest meaningful run: the bridge reference and VXLAN over SCLP's UDP
carrier, 1 s of TCP each, end to end through the CLI.  What is checked is that the
output is sane and complete (keys, the accelerator and guest kernel named, positive
figures, the ratio to the bridge computed from this run's figures, the guests'
frames counted on both sides), never a speed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sclp.lab.guest import GuestImage
from tests.e2e.helpers import sclp_cli

GUEST_RESULT_KEYS = {
    "label",
    "transport",
    "vm_mtu",
    "gbps_median",
    "gbps_runs",
    "retransmits",
    "gbps_vs_bridge",
    "frames_per_gb_rx_vm",
    "vm_rx_bytes_per_frame",
    "endpoint_bytes_per_frame_to_vm",
    "cpu_s_per_gb",
    "cpu_per_gb_vs_floor",
    "rss_mb_peak",
    "accelerator",
    "guest_boot_s",
}


@pytest.mark.netns
@pytest.mark.timeout(300)
def test_quick_bench_with_guests_reports_tunnels_against_the_bridge(
    guest_image: GuestImage, tmp_path: Path
) -> None:
    report_path, page = tmp_path / "g.json", tmp_path / "g.md"
    args = ["bench", "--vms", "qemu", "--quick", "--protocols", "bridge,vxlan-sclp/udp"]
    result = sclp_cli(*args, "--json", str(report_path), "--markdown", str(page), timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())

    accel = report["accelerator"]
    assert report["vms"] == "qemu" and accel in ("kvm", "tcg")
    assert report["guest_kernel"] == guest_image.kernel_package
    assert report["command"].startswith("sclp bench --vms qemu --quick")
    assert report["options"]["transports"] == ["tcp"]
    assert f"accelerator {accel}" in result.stdout
    if accel == "tcg":
        assert "the guests' emulated CPUs are the bottleneck" in result.stdout
        assert report["caveat"] and report["caveat"] in page.read_text()

    results = report["results"]
    assert [(r["label"], r["transport"]) for r in results] == [
        ("bridge", "tcp"),
        ("vxlan-sclp/udp", "tcp"),
    ]
    bridge, sclp = results
    for r in results:
        assert "error" not in r, f"{r['label']}: {r['error']}"
        assert set(r) >= GUEST_RESULT_KEYS, r["label"]
        assert r["accelerator"] == accel
        assert len(r["guest_boot_s"]) == 2 and all(b > 0 for b in r["guest_boot_s"])
        assert len(r["gbps_runs"]) == 1 and r["gbps_median"] > 0
        assert r["frames_per_gb_rx_vm"] > 0 and r["vm_rx_bytes_per_frame"] > 0
        assert 1280 <= r["vm_mtu"] <= 65535

    # The bridge is the reference: no endpoint, nothing to count on its side.
    assert bridge["reference"] and bridge["gbps_vs_bridge"] == pytest.approx(1.0)
    assert bridge["cpu_s_per_gb"] is None and bridge["endpoint_bytes_per_frame_to_vm"] is None
    # The tunnel, against the bridge of the same run.
    assert sclp["gbps_vs_bridge"] == pytest.approx(sclp["gbps_median"] / bridge["gbps_median"])
    assert report["ratios"]["sclp_udp_vs_bridge"]["value"] == pytest.approx(sclp["gbps_vs_bridge"])
    assert report["ratios"]["sclp_udp_vs_bridge"]["goal"] is None
    floor = report["copy_floor_s_per_gb"]
    assert sclp["cpu_s_per_gb"] > 0
    assert sclp["cpu_per_gb_vs_floor"] == pytest.approx(sclp["cpu_s_per_gb"] / floor)
    # The guest counts the frames the endpoint hands it: both sides see about the
    # same bytes per frame (the guest also receives ARP and the iperf3 control
    # connection, the endpoint counts only the run's window the same way).
    run = sclp["runs"][0]
    assert run["endpoint_frames_to_vm"] > 0 and run["endpoint_bytes_to_vm"] > 0
    guest, endpoint = sclp["vm_rx_bytes_per_frame"], sclp["endpoint_bytes_per_frame_to_vm"]
    assert guest == pytest.approx(endpoint, rel=0.2), (guest, endpoint)

    text = page.read_text()
    assert "# Benchmark results with QEMU guests" in text
    assert "× bridge" in text and "guest rx B/frame" in text
    assert f"accelerator {accel}" in text

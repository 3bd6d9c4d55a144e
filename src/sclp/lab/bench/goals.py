"""The benchmark's goals: :class:`Goal` and the ratios a run is judged by.

Why apart: the goals are the project's claims (the UDP carrier's CPU per
GB against the copy floor and the I/O floor measured in the same run, native SCLP against our VXLAN
and tinc, STT beside native SCLP, VXLAN over SCLP against our VXLAN, frames per GB,
peak RSS); they are pure arithmetic on the results,
testable without namespaces, and changing a target touches only this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final


@dataclass(frozen=True, slots=True)
class Goal:
    key: str
    numerator: str  # configuration label
    denominator: str | None
    metric: str  # a results key, from the TCP entry without ablation
    low: float | None = None
    high: float | None = None
    strict_high: bool = False

    def describe(self) -> str:
        of = f"{self.numerator} / {self.denominator}" if self.denominator else self.numerator
        return f"{of}: TCP {self.metric}"

    def goal_text(self) -> str | None:
        if self.low is not None and self.high is not None:
            return f"{self.low:g}–{self.high:g}"
        if self.low is not None:
            return f">= {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.strict_high else '<='} {self.high:g}"
        return None

    def holds(self, value: float) -> bool | None:
        if self.low is None and self.high is None:
            return None
        if self.low is not None and value < self.low:
            return False
        if self.high is not None:
            return value < self.high if self.strict_high else value <= self.high
        return True


# "Our VXLAN" is VXLAN with the VM MTU adjusted (no fragmentation), the fairer and
# stronger baseline; vxlan/mtu1500 is in the table for the paper's other figure.
# The goals are the project's targets; ratios to the kernel's VXLAN are reported, not goals
# (they measure the machine's kernel as much as our code).
GOALS: Final = (
    Goal(
        "sclp_udp_cpu_vs_copy_floor",
        "vxlan-sclp/udp",
        None,
        "cpu_per_gb_vs_floor",
        high=1.5,
    ),
    # The reachable floor: the same I/O with no work per frame, measured in the run.
    Goal(
        "sclp_udp_cpu_vs_io_floor",
        "vxlan-sclp/udp",
        None,
        "cpu_per_gb_vs_io_floor",
        high=3.0,
    ),
    Goal("sclp_ip_vs_vxlan", "vxlan-sclp/ip", "vxlan", "gbps_median", low=3.4),
    Goal("sclp_ip_vs_tinc", "vxlan-sclp/ip", "tinc", "gbps_median", low=2.5),
    Goal("stt_vs_sclp_ip", "stt", "vxlan-sclp/ip", "gbps_median", low=0.8, high=1.25),
    Goal("sclp_udp_vs_vxlan_adjusted", "vxlan-sclp/udp", "vxlan", "gbps_median", low=6.0),
    Goal(
        "frames_per_gb_vxlan_vs_sclp_udp",
        "vxlan",
        "vxlan-sclp/udp",
        "frames_per_gb_rx_vm",
        low=20.0,
    ),
    Goal(
        "frames_per_gb_vxlan_vs_sclp_ip", "vxlan", "vxlan-sclp/ip", "frames_per_gb_rx_vm", low=20.0
    ),
    # Reported figures, no goal.
    Goal("sclp_ip_cpu_vs_copy_floor", "vxlan-sclp/ip", None, "cpu_per_gb_vs_floor"),
    Goal("sclp_ip_cpu_vs_native_floor", "vxlan-sclp/ip", None, "cpu_per_gb_vs_native_floor"),
    Goal("stt_cpu_vs_native_floor", "stt", None, "cpu_per_gb_vs_native_floor"),
    Goal("tinc_cpu_vs_copy_floor", "tinc", None, "cpu_per_gb_vs_floor"),
    Goal("sclp_udp_vs_tinc", "vxlan-sclp/udp", "tinc", "gbps_median"),
    Goal("sclp_udp_vs_kernel_vxlan", "vxlan-sclp/udp", "kernel-vxlan", "gbps_median"),
    Goal("sclp_ip_vs_kernel_vxlan", "vxlan-sclp/ip", "kernel-vxlan", "gbps_median"),
    # The fairness check (expected: about a quarter on this machine kind).
    Goal("vxlan_vs_kernel_vxlan_no_offloads", "vxlan", "kernel-vxlan/no-offloads", "gbps_median"),
)
# --vms qemu: under TCG the guests' emulated CPUs bound every figure, so the
# namespace goals cannot be judged; the run reports each tunnel against the bridge
# between the same guests (no tunnel at all) and the frame and CPU figures, no goals.
GUEST_GOALS: Final = (
    Goal("vxlan_vs_bridge", "vxlan", "bridge", "gbps_median"),
    Goal("sclp_ip_vs_bridge", "vxlan-sclp/ip", "bridge", "gbps_median"),
    Goal("sclp_udp_vs_bridge", "vxlan-sclp/udp", "bridge", "gbps_median"),
    Goal("sclp_udp_vs_vxlan_adjusted", "vxlan-sclp/udp", "vxlan", "gbps_median"),
    Goal("sclp_ip_vs_vxlan", "vxlan-sclp/ip", "vxlan", "gbps_median"),
    Goal("frames_per_gb_vxlan_vs_sclp_udp", "vxlan", "vxlan-sclp/udp", "frames_per_gb_rx_vm"),
    Goal("frames_per_gb_vxlan_vs_sclp_ip", "vxlan", "vxlan-sclp/ip", "frames_per_gb_rx_vm"),
    Goal("sclp_udp_cpu_vs_copy_floor", "vxlan-sclp/udp", None, "cpu_per_gb_vs_floor"),
    Goal("sclp_ip_cpu_vs_copy_floor", "vxlan-sclp/ip", None, "cpu_per_gb_vs_floor"),
    Goal("sclp_udp_cpu_vs_io_floor", "vxlan-sclp/udp", None, "cpu_per_gb_vs_io_floor"),
    Goal("sclp_ip_cpu_vs_native_floor", "vxlan-sclp/ip", None, "cpu_per_gb_vs_native_floor"),
)
BRIDGE: Final = "bridge"
RSS_LIMIT_MB: Final = 150.0


def _tcp_figure(results: Sequence[dict[str, Any]], label: str, metric: str) -> float | None:
    for r in results:
        if r["label"] == label and r["transport"] == "tcp" and r["ablation"] is None:
            value = r.get(metric)
            return float(value) if isinstance(value, int | float) else None
    return None


def add_bridge_ratios(results: Sequence[dict[str, Any]]) -> None:
    """Give every TCP result ``gbps_vs_bridge``: its median over the bridge
    reference's of the same run (None when the bridge was not measured)."""
    bridge = _tcp_figure(results, BRIDGE, "gbps_median")
    for r in results:
        if r["transport"] == "tcp":
            value = r.get("gbps_median")
            r["gbps_vs_bridge"] = value / bridge if value is not None and bridge else None


def compute_ratios(
    results: Sequence[dict[str, Any]], goals: Sequence[Goal] = GOALS
) -> dict[str, dict[str, Any]]:
    """The ``goals`` judged on one run: each entry holds ``value`` (None when a side
    was not measured), ``goal`` (text, None for the reported-only check), ``holds``
    (None when unknown or no goal) and ``of`` (what was divided)."""
    ratios: dict[str, dict[str, Any]] = {}
    for goal in goals:
        num = _tcp_figure(results, goal.numerator, goal.metric)
        den = _tcp_figure(results, goal.denominator, goal.metric) if goal.denominator else 1.0
        value = num / den if num is not None and den else None
        ratios[goal.key] = {
            "value": value,
            "goal": goal.goal_text(),
            "holds": goal.holds(value) if value is not None else None,
            "of": goal.describe(),
        }
    # Our endpoints only: tinc's daemons are a reference, not ours.
    rss = [
        r["rss_mb_peak"]
        for r in results
        if r.get("rss_mb_peak") is not None and not r.get("reference")
    ]
    peak = max(rss) if rss else None
    ratios["rss_mb_peak_max"] = {
        "value": peak,
        "goal": f"< {RSS_LIMIT_MB:g}",
        "holds": peak < RSS_LIMIT_MB if peak is not None else None,
        "of": "largest endpoint VmHWM of the run, MB (an absolute goal, not a ratio)",
    }
    return ratios

"""``sclp bench``: the paper's evaluation (issue 4), reproducible with one command.

Strategy: one :class:`~sclp.testbed.Testbed` per configuration (a protocol, a carrier,
a VM MTU, an ablation), built, pinged, measured with iperf3 VM1 → VM2 over TCP and
then UDP, ``--repeat`` times each, and torn down before the next one.  Around every
iperf3 run we read the figures that explain a throughput:

- the CPU time of both ``sclp run`` processes (utime + stime from ``/proc/PID/stat``),
  divided by the gigabytes iperf3 received: endpoint CPU seconds per GB;
- the receiving VM interface's ``rx_packets`` (netlink ``IFLA_STATS64``, the same
  counter as ``/sys/class/net/IF/statistics``): frames per GB the VM had to handle,
  the paper's "the VM handles fewer frames" effect;
- the endpoints' ``VmHWM`` from ``/proc/PID/status``: peak RSS.

The references run in the same topology and the same process: Linux's own VXLAN
(with its default offloads, and with TSO/GSO off on the sender's ``vx0``, the
per-packet kernel path) and a bare veth between the VMs (the local limit).  The
ablation passes ``[tuning]`` tables to the endpoints (level 1: kernel UDP GRO and
batched receive; level 2: handing the reassembled payload to the VM as one GSO
frame).  A configuration that fails — an endpoint refusing its configuration, a
tunnel that does not carry a ping, an iperf3 error — is recorded with its ``error``
and the run goes on; only Ctrl-C (or SIGTERM) stops it early, and even then the
figures measured so far are written.

Output: a rich table, and on request a JSON report (every raw figure, the machine
description, the goal ratios of issue 4), a PNG chart and a Markdown page.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sclp import __version__
from sclp.testbed import Testbed, TestbedError

SCHEMA_VERSION: Final = 1
GB: Final = 1e9  # bytes; "per GB" figures use decimal gigabytes, like Gbit/s
TRANSPORTS: Final = ("tcp", "udp")
REFERENCES: Final = ("veth", "kernel-vxlan")
CLASSIC: Final = ("vxlan", "geneve", "nvgre")
SCLP_PROTOCOLS: Final = ("vxlan-sclp", "geneve-sclp")
CARRIERS: Final = ("ip", "udp")
UNADJUSTED_MTU: Final = 1500

# The endpoint's [tuning] table for each ablation (inserted after `name = ...`).
ABLATIONS: Final = {
    "no-level1": "[tuning]\nrx_batch = false\n",  # no kernel UDP GRO, no batched receive
    "no-level2": "[tuning]\ndeliver_gso = false\n",  # reassembled frame -> MSS-sized frames
}

# 1400 B of UDP payload + 28 B of IPv4/UDP headers fits the smallest VM MTU measured
# (1450: VXLAN and Geneve adjusted to a 1500 B underlay), so no configuration
# fragments inside the VM and every datagram is one frame on every path.
UDP_DATAGRAM_BYTES: Final = 1400

DEFAULT_DURATION: Final = 10
DEFAULT_REPEAT: Final = 3
QUICK_DURATION: Final = 1
QUICK_REPEAT: Final = 1
QUICK_LABELS: Final = (
    "veth",
    "kernel-vxlan",
    "vxlan",
    "vxlan-sclp/udp",
    "vxlan-sclp/udp/no-level2",
)


# -- configurations ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """One testbed to measure.  ``vm_mtu=None`` is the endpoint's default (adjusted to
    avoid fragmentation for the classic tunnels); ``kernel_offloads`` only matters
    for ``kernel-vxlan``."""

    protocol: str
    carrier: str | None = None
    vm_mtu: int | None = None
    ablation: str | None = None
    kernel_offloads: bool = True

    @property
    def label(self) -> str:
        """The name used by ``--protocols``, the table and the chart:
        ``vxlan``, ``vxlan/mtu1500``, ``vxlan-sclp/udp``, ``vxlan-sclp/udp/no-level1``,
        ``kernel-vxlan/no-offloads``."""
        parts = [self.protocol]
        if self.carrier is not None:
            parts.append(self.carrier)
        if self.vm_mtu is not None:
            parts.append(f"mtu{self.vm_mtu}")
        if self.ablation is not None:
            parts.append(self.ablation)
        if not self.kernel_offloads:
            parts.append("no-offloads")
        return "/".join(parts)

    @property
    def is_reference(self) -> bool:
        return self.protocol in REFERENCES

    @property
    def has_endpoints(self) -> bool:
        return not self.is_reference

    def testbed(self) -> Testbed:
        return Testbed(
            protocol=self.protocol,
            carrier=self.carrier or "ip",
            vm_mtu=self.vm_mtu,
            extra_config=ABLATIONS[self.ablation] if self.ablation else "",
            kernel_offloads=self.kernel_offloads,
        )


def all_configs() -> list[BenchConfig]:
    """Every configuration of a full run, in table order: references, classic
    tunnels (VM MTU 1500 then adjusted), STT, SCLP per carrier, then the ablation."""
    configs = [
        BenchConfig("veth"),
        BenchConfig("kernel-vxlan"),
        BenchConfig("kernel-vxlan", kernel_offloads=False),
    ]
    for protocol in CLASSIC:
        configs += [BenchConfig(protocol, vm_mtu=UNADJUSTED_MTU), BenchConfig(protocol)]
    configs.append(BenchConfig("stt"))
    for protocol in SCLP_PROTOCOLS:
        configs += [BenchConfig(protocol, carrier) for carrier in CARRIERS]
    for carrier in CARRIERS:
        configs += [BenchConfig("vxlan-sclp", carrier, ablation=a) for a in ABLATIONS]
    return configs


def select_configs(names: Sequence[str]) -> list[BenchConfig]:
    """The configurations named by ``--protocols``, in table order.  A name selects
    the configuration with that label and every variant below it: ``vxlan`` is
    ``vxlan`` and ``vxlan/mtu1500``; ``vxlan-sclp/udp`` includes its ablations;
    ``kernel-vxlan`` both kernel references.  Raises ValueError naming an unknown
    name and the known labels."""
    configs = all_configs()
    chosen: set[BenchConfig] = set()
    for raw in names:
        name = raw.strip().strip("/")
        if not name:
            continue
        found = [c for c in configs if c.label == name or c.label.startswith(name + "/")]
        if not found:
            known = ", ".join(c.label for c in configs)
            raise ValueError(f"unknown configuration {raw!r}; known: {known}")
        chosen.update(found)
    return [c for c in configs if c in chosen]


def quick_configs() -> list[BenchConfig]:
    by_label = {c.label: c for c in all_configs()}
    return [by_label[label] for label in QUICK_LABELS]


# -- options -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """What ``sclp bench`` was asked to do; ``None`` duration/repeat: the defaults
    (10 s × 3, or 1 s × 1 with ``quick``)."""

    protocols: tuple[str, ...] | None = None
    duration: int | None = None
    repeat: int | None = None
    transports: tuple[str, ...] = TRANSPORTS
    udp_length: int = UDP_DATAGRAM_BYTES
    quick: bool = False
    json_path: Path | None = None
    plot_path: Path | None = None
    markdown_path: Path | None = None

    @property
    def seconds(self) -> int:
        if self.duration is not None:
            return self.duration
        return QUICK_DURATION if self.quick else DEFAULT_DURATION

    @property
    def repeats(self) -> int:
        if self.repeat is not None:
            return self.repeat
        return QUICK_REPEAT if self.quick else DEFAULT_REPEAT

    @property
    def chart_path(self) -> Path | None:
        """Where the chart goes: ``--plot``, or next to the Markdown page."""
        if self.plot_path is not None:
            return self.plot_path
        if self.markdown_path is not None:
            return self.markdown_path.with_suffix(".png")
        return None

    def configs(self) -> list[BenchConfig]:
        if self.protocols is not None:
            return select_configs(self.protocols)
        return quick_configs() if self.quick else all_configs()

    def command_line(self) -> str:
        """The ``sclp bench`` command that reproduces this run."""
        args = ["sclp", "bench"]
        if self.quick:
            args.append("--quick")
        if self.protocols is not None:
            args += ["--protocols", ",".join(self.protocols)]
        if self.duration is not None:
            args += ["--duration", str(self.duration)]
        if self.repeat is not None:
            args += ["--repeat", str(self.repeat)]
        if self.transports != TRANSPORTS:
            args += ["--transports", ",".join(self.transports)]
        if self.udp_length != UDP_DATAGRAM_BYTES:
            args += ["--udp-length", str(self.udp_length)]
        for flag, path in (
            ("--json", self.json_path),
            ("--plot", self.plot_path),
            ("--markdown", self.markdown_path),
        ):
            if path is not None:
                args += [flag, str(path)]
        return shlex.join(args)


# -- process and machine figures -----------------------------------------------------

_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name (field 2) may hold spaces and parentheses; cut after it.
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def process_peak_rss_mb(pid: int) -> float:
    """``VmHWM`` of process ``pid`` in MB (2^20 bytes)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise OSError(f"no VmHWM in /proc/{pid}/status")


def _first_line(args: list[str]) -> str | None:
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0] if lines else None


def machine_description() -> dict[str, Any]:
    """What the figures depend on: CPU, cores, kernel, Python, NumPy, iperf3, date,
    and the load average when the run started (a busy machine skews everything)."""
    import numpy

    cpu_model = platform.processor() or None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu_model": cpu_model,
        "nproc": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "sclp": __version__,
        "iperf3": _first_line(["iperf3", "--version"]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "loadavg_start": list(os.getloadavg()),
    }


# -- measuring -----------------------------------------------------------------------


def _endpoint_pids(tb: Testbed) -> list[int]:
    """The endpoints' process ids; TestbedError naming the first one that exited."""
    for i, proc in enumerate(tb.endpoints):
        code = proc.poll()
        if code is not None:
            tail = " | ".join(tb.log_text(i).strip().splitlines()[-2:])
            raise TestbedError(f"endpoint h{i + 1} exited (status {code}) during the run: {tail}")
    return [p.pid for p in tb.endpoints]


def _endpoint_cpu(tb: Testbed) -> float:
    pids = _endpoint_pids(tb)
    try:
        return sum(process_cpu_seconds(pid) for pid in pids)
    except OSError:
        _endpoint_pids(tb)  # names the endpoint that died
        raise


def measure_run(tb: Testbed, transport: str, seconds: int, udp_length: int) -> dict[str, Any]:
    """One iperf3 run VM1 → VM2 and the figures around it (one ``runs`` entry)."""
    udp = transport == "udp"
    cpu_before = _endpoint_cpu(tb) if tb.endpoints else None
    vm_before = tb.vm_link_counters(1)
    report = tb.iperf3(seconds, udp=udp, extra=["-l", str(udp_length)] if udp else None)
    cpu_after = _endpoint_cpu(tb) if tb.endpoints else None
    vm_after = tb.vm_link_counters(1)
    end = report["end"]
    received = end.get("sum_received") or end["sum"]
    sent = end.get("sum_sent") or end["sum"]
    cpu_util = end.get("cpu_utilization_percent", {})
    run: dict[str, Any] = {
        "seconds": float(received["seconds"]),
        "gbps": float(received["bits_per_second"]) / 1e9,
        "bytes_received": int(received["bytes"]),
        "bytes_sent": int(sent["bytes"]),
        "retransmits": None if udp else int(sent.get("retransmits", 0)),
        "lost_percent": float(received.get("lost_percent", 0.0)) if udp else None,
        "lost_packets": int(received.get("lost_packets", 0)) if udp else None,
        "packets": int(received.get("packets", 0)) if udp else None,
        "endpoint_cpu_s": None,
        "vm_rx_packets": vm_after["rx_packets"] - vm_before["rx_packets"],
        "vm_rx_bytes": vm_after["rx_bytes"] - vm_before["rx_bytes"],
        "vm_rx_dropped": vm_after["rx_dropped"] - vm_before["rx_dropped"],
        "iperf3_sender_cpu_percent": cpu_util.get("host_total"),
        "iperf3_receiver_cpu_percent": cpu_util.get("remote_total"),
    }
    if cpu_before is not None and cpu_after is not None:
        run["endpoint_cpu_s"] = cpu_after - cpu_before
    if run["bytes_received"] <= 0:
        raise TestbedError(f"iperf3 {transport}: VM2 received nothing")
    return run


def summarise(
    cfg: BenchConfig,
    transport: str,
    runs: list[dict[str, Any]],
    vm_mtu: int | None,
    rss_mb_peak: float | None,
    error: str | None,
    udp_length: int = UDP_DATAGRAM_BYTES,
) -> dict[str, Any]:
    """The ``results`` entry of one configuration and transport."""
    gbps = [r["gbps"] for r in runs]
    gigabytes = sum(r["bytes_received"] for r in runs) / GB
    frames = sum(r["vm_rx_packets"] for r in runs)
    cpu = [r["endpoint_cpu_s"] for r in runs if r["endpoint_cpu_s"] is not None]
    result: dict[str, Any] = {
        "label": cfg.label,
        "protocol": cfg.protocol,
        "carrier": cfg.carrier,
        "transport": transport,
        "vm_mtu": vm_mtu,
        "vm_mtu_default": cfg.vm_mtu is None,
        "ablation": cfg.ablation,
        "kernel_offloads": cfg.kernel_offloads if cfg.protocol == "kernel-vxlan" else None,
        "reference": cfg.is_reference,
        "gbps_median": statistics.median(gbps) if gbps else None,
        "gbps_runs": gbps,
        "retransmits": sum(r["retransmits"] for r in runs) if runs and transport == "tcp" else None,
        "frames_per_gb_rx_vm": frames / gigabytes if gigabytes > 0 else None,
        "cpu_s_per_gb": sum(cpu) / gigabytes if cpu and gigabytes > 0 else None,
        "rss_mb_peak": rss_mb_peak if cfg.has_endpoints else None,
        "runs": runs,
    }
    if transport == "udp":
        losses = [r["lost_percent"] for r in runs]
        result["loss_percent"] = statistics.median(losses) if losses else None
        result["udp_datagram_bytes"] = udp_length
    if error is not None:
        result["error"] = error
    return result


def _error_text(exc: Exception) -> str:
    return str(exc) if isinstance(exc, TestbedError) else f"{type(exc).__name__}: {exc}"


@dataclass
class _Measurement:
    runs: dict[str, list[dict[str, Any]]]
    errors: dict[str, str] = field(default_factory=dict)
    vm_mtu: int | None = None
    rss_mb_peak: float | None = None
    interrupted: bool = False


class BenchInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during :func:`measure_config`; ``results`` holds the
    transports it had measured at least once (a partial one carries ``error``)."""

    def __init__(self, results: list[dict[str, Any]]) -> None:
        super().__init__()
        self.results = results


def measure_config(
    cfg: BenchConfig,
    transports: Sequence[str],
    seconds: int,
    repeat: int,
    udp_length: int,
    progress: Callable[[str, int], None],
) -> list[dict[str, Any]]:
    """Build ``cfg``'s testbed, measure every transport ``repeat`` times, tear it
    down; one ``results`` entry per transport.  Never raises for a failing
    configuration (the entries carry ``error``); Ctrl-C becomes
    :class:`BenchInterrupted` with what was measured, after the testbed is removed.
    ``progress(what, 0)`` announces each iperf3 run, ``progress(what, 1)`` counts one
    done or skipped."""
    m = _Measurement(runs={t: [] for t in transports}, vm_mtu=cfg.vm_mtu)
    pending = {t: repeat for t in transports}

    def note_rss(tb: Testbed) -> None:
        for proc in tb.endpoints:
            try:
                rss = process_peak_rss_mb(proc.pid)
            except OSError:
                continue
            m.rss_mb_peak = max(m.rss_mb_peak or 0.0, rss)

    try:
        with cfg.testbed() as tb:
            m.vm_mtu = tb.vm_link_counters(1)["mtu"]
            if tb.ping(3).returncode != 0:
                raise TestbedError("VM1 cannot ping VM2 through the tunnel")
            for transport in transports:
                try:
                    while pending[transport]:
                        what = f"{cfg.label} {transport} {repeat - pending[transport] + 1}/{repeat}"
                        progress(what, 0)
                        pending[transport] -= 1
                        try:
                            run = measure_run(tb, transport, seconds, udp_length)
                        finally:
                            progress(what, 1)
                        m.runs[transport].append(run)
                        note_rss(tb)
                except Exception as exc:  # this transport failed; try the next one
                    m.errors[transport] = _error_text(exc)
                    _endpoint_pids(tb)  # an endpoint that died fails the rest too
            note_rss(tb)
    except Exception as exc:  # one configuration's failure is a result, not a crash
        for transport in transports:
            if len(m.runs[transport]) < repeat:
                m.errors.setdefault(transport, _error_text(exc))
    except KeyboardInterrupt:
        m.interrupted = True
        for transport in transports:
            done = len(m.runs[transport])
            if 0 < done < repeat:
                m.errors.setdefault(transport, f"interrupted after {done} of {repeat} runs")
    finally:
        for transport in transports:
            for _ in range(pending[transport]):
                progress(f"{cfg.label} {transport} (skipped)", 1)
    results = [
        summarise(cfg, t, m.runs[t], m.vm_mtu, m.rss_mb_peak, m.errors.get(t), udp_length)
        for t in transports
        if m.runs[t] or not m.interrupted
    ]
    if m.interrupted:
        raise BenchInterrupted(results)
    return results


# -- goal ratios (issue 4) -----------------------------------------------------------


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
GOALS: Final = (
    Goal("sclp_udp_vs_vxlan_adjusted", "vxlan-sclp/udp", "vxlan", "gbps_median", low=4.0),
    Goal("sclp_udp_vs_kernel_vxlan", "vxlan-sclp/udp", "kernel-vxlan", "gbps_median", low=0.5),
    Goal("sclp_ip_vs_vxlan", "vxlan-sclp/ip", "vxlan", "gbps_median", low=2.5),
    Goal("stt_vs_sclp_ip", "stt", "vxlan-sclp/ip", "gbps_median", low=0.8, high=1.25),
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
    # The fairness check: no goal, the figure is reported (issue: about 4.5 Gbit/s).
    Goal("vxlan_vs_kernel_vxlan_no_offloads", "vxlan", "kernel-vxlan/no-offloads", "gbps_median"),
)
RSS_LIMIT_MB: Final = 150.0


def _tcp_figure(results: Sequence[dict[str, Any]], label: str, metric: str) -> float | None:
    for r in results:
        if r["label"] == label and r["transport"] == "tcp" and r["ablation"] is None:
            value = r.get(metric)
            return float(value) if isinstance(value, int | float) else None
    return None


def compute_ratios(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Issue 4's goals from one run: each entry holds ``value`` (None when a side was
    not measured), ``goal`` (text, None for the reported-only check), ``holds`` (None
    when unknown or no goal) and ``of`` (what was divided)."""
    ratios: dict[str, dict[str, Any]] = {}
    for goal in GOALS:
        num = _tcp_figure(results, goal.numerator, goal.metric)
        den = _tcp_figure(results, goal.denominator, goal.metric) if goal.denominator else 1.0
        value = num / den if num is not None and den else None
        ratios[goal.key] = {
            "value": value,
            "goal": goal.goal_text(),
            "holds": goal.holds(value) if value is not None else None,
            "of": goal.describe(),
        }
    rss = [r["rss_mb_peak"] for r in results if r.get("rss_mb_peak") is not None]
    peak = max(rss) if rss else None
    ratios["rss_mb_peak_max"] = {
        "value": peak,
        "goal": f"< {RSS_LIMIT_MB:g}",
        "holds": peak < RSS_LIMIT_MB if peak is not None else None,
        "of": "largest endpoint VmHWM of the run, MB (an absolute goal, not a ratio)",
    }
    return ratios


# -- the run -------------------------------------------------------------------------


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_bench(options: BenchOptions, console: Console | None = None) -> dict[str, Any]:
    """Measure every configuration of ``options``; return the report (the JSON
    document).  A failing configuration is a result with ``error``; Ctrl-C/SIGTERM
    ends the run early with ``interrupted`` set.  Writes nothing."""
    console = console or Console(stderr=True)
    configs = options.configs()
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "command": options.command_line(),
        "options": {
            "duration_s": options.seconds,
            "repeat": options.repeats,
            "transports": list(options.transports),
            "udp_datagram_bytes": options.udp_length,
            "udp_bitrate": "unlimited (iperf3 -u -b 0)",
            "quick": options.quick,
            "configurations": [c.label for c in configs],
        },
        "machine": machine_description(),
        "units": {
            "gbps": "Gbit/s received by iperf3 in VM2 (1e9 bit/s)",
            "frames_per_gb_rx_vm": "rx_packets of VM2's interface per 1e9 bytes received",
            "cpu_s_per_gb": "utime+stime of both sclp run processes per 1e9 bytes received",
            "rss_mb_peak": "largest VmHWM of the two endpoints, 2^20 bytes",
            "retransmits": "TCP retransmits summed over the runs",
            "loss_percent": "median iperf3 UDP loss over the runs",
        },
        "results": [],
        "interrupted": False,
    }
    steps = len(configs) * len(options.transports) * options.repeats
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    progress = Progress(
        TextColumn("[bold]{task.description:<36}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} runs"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    try:
        with progress:
            task = progress.add_task("starting", total=steps)

            def advance(what: str, steps: int) -> None:
                progress.update(task, description=what, advance=steps)

            for cfg in configs:
                progress.update(task, description=f"{cfg.label}: building")
                results = measure_config(
                    cfg,
                    options.transports,
                    options.seconds,
                    options.repeats,
                    options.udp_length,
                    advance,
                )
                report["results"] += results
                for r in results:
                    if "error" in r:
                        progress.console.print(
                            f"[yellow]{cfg.label} {r['transport']} failed:[/] {r['error']}"
                        )
    except KeyboardInterrupt as exc:
        report["interrupted"] = True
        if isinstance(exc, BenchInterrupted):
            report["results"] += exc.results
    finally:
        signal.signal(signal.SIGTERM, previous)
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    report["ratios"] = compute_ratios(report["results"])
    return report


# -- presenting ----------------------------------------------------------------------


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, list):
        return " ".join(_fmt(v, digits) for v in value)
    return str(value)


TABLE_COLUMNS: Final = (
    "configuration",
    "VM MTU",
    "TCP Gbit/s",
    "TCP runs",
    "retr.",
    "UDP Gbit/s",
    "UDP loss %",
    "VM frames/GB",
    "CPU s/GB",
    "RSS MB",
    "note",
)


def _by_label(report: dict[str, Any]) -> Iterator[tuple[str, dict[str, dict[str, Any]]]]:
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for r in report["results"]:
        rows.setdefault(r["label"], {})[r["transport"]] = r
    yield from rows.items()


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per configuration (TCP and UDP side by side), as text."""
    rows = []
    for label, by_transport in _by_label(report):
        tcp, udp = by_transport.get("tcp", {}), by_transport.get("udp", {})
        first = tcp or udp
        errors = {f"{t}: {r['error']}" for t, r in by_transport.items() if "error" in r}
        note = "reference" if first.get("reference") else ""
        if errors:
            note = "FAILED " + "; ".join(sorted(errors))
        rows.append(
            [
                label,
                _fmt(first.get("vm_mtu")),
                _fmt(tcp.get("gbps_median")),
                " ".join(f"{g:.2f}" for g in tcp.get("gbps_runs", [])) or "–",
                _fmt(tcp.get("retransmits")),
                _fmt(udp.get("gbps_median")),
                _fmt(udp.get("loss_percent"), 1),
                _fmt(tcp.get("frames_per_gb_rx_vm"), 0),
                _fmt(tcp.get("cpu_s_per_gb")),
                _fmt(first.get("rss_mb_peak"), 0),
                note,
            ]
        )
    return rows


def ratio_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for key, entry in report["ratios"].items():
        holds = {True: "yes", False: "NO", None: "–"}[entry["holds"]]
        rows.append([key, _fmt(entry["value"]), entry["goal"] or "(reported)", holds, entry["of"]])
    return rows


def render_tables(report: dict[str, Any], console: Console) -> None:
    table = Table(*TABLE_COLUMNS, title="sclp bench: VM1 → VM2")
    for row in table_rows(report):
        style = "dim" if row[-1] == "reference" else ("red" if row[-1] else None)
        table.add_row(*row[:-1], row[-1][:60], style=style)
    console.print(table)
    goals = Table("goal", "value", "target", "holds", "of", title="issue 4 goals")
    for row in ratio_rows(report):
        goals.add_row(*row, style={"NO": "red", "yes": "green"}.get(row[3]))
    console.print(goals)
    if report["interrupted"]:
        console.print("[yellow]interrupted: the figures above are partial[/]")


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


# Chart order and grouping, like the paper's figure: references, the classic tunnels,
# then the segment-oriented ones.
_REFERENCE_COLORS: Final = ("#bbbbbb", "#888888")
_TUNNEL_COLORS: Final = ("#3a6ea5", "#e08a2c")


def write_plot(report: dict[str, Any], path: Path) -> None:
    """A PNG: TCP and UDP throughput per configuration (references grey and
    hatched), and the two-level pre-reassembly ablation (TCP)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = [(label, rows) for label, rows in _by_label(report) if "no-level" not in label]
    ablation = [(label, rows) for label, rows in _by_label(report) if "no-level" in label]
    sclp_bases = sorted({label.rsplit("/", 1)[0] for label, _ in ablation})
    fig, axes = plt.subplots(
        1,
        2 if sclp_bases else 1,
        figsize=(14 if sclp_bases else 11, 5),
        gridspec_kw={"width_ratios": [3, 1]} if sclp_bases else None,
        squeeze=False,
    )
    ax = axes[0][0]
    width = 0.4
    for t_index, transport in enumerate(("tcp", "udp")):
        for x, (_label, rows) in enumerate(main):
            r = rows.get(transport)
            if r is None:
                continue
            ref = bool(r["reference"])
            color = (_REFERENCE_COLORS if ref else _TUNNEL_COLORS)[t_index]
            pos = x + (t_index - 0.5) * width
            if r["gbps_median"] is None:
                ax.text(pos, 0, "failed", rotation=90, ha="center", va="bottom", fontsize=7)
                continue
            runs = r["gbps_runs"]
            bars = ax.bar(
                pos,
                r["gbps_median"],
                width,
                color=color,
                hatch="//" if ref else None,
                edgecolor="black",
                linewidth=0.5,
                yerr=[[r["gbps_median"] - min(runs)], [max(runs) - r["gbps_median"]]],
                capsize=2,
                label=f"{transport.upper()}{' (reference)' if ref else ''}",
            )
            ax.bar_label(bars, fmt="%.2g", padding=2, fontsize=7)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.set_ylim(top=ax.get_ylim()[1] * 1.15)  # room for the legend above the bars
    ax.legend(unique.values(), unique.keys(), fontsize=8, ncols=4, loc="upper left")
    ax.set_xticks(range(len(main)), [label for label, _ in main], rotation=45, ha="right")
    ax.set_ylabel("Gbit/s (median, bars: min–max)")
    ax.set_title("VM-to-VM throughput, iperf3")
    ax.grid(axis="y", alpha=0.3)
    if sclp_bases:
        ax2 = axes[0][1]
        variants = ("both levels", "no-level1", "no-level2")
        by_label = {label: rows for label, rows in _by_label(report)}
        w = 0.8 / len(variants)
        for v_index, variant in enumerate(variants):
            for x, base in enumerate(sclp_bases):
                label = base if variant == "both levels" else f"{base}/{variant}"
                r = by_label.get(label, {}).get("tcp")
                pos = x + (v_index - 1) * w
                if r is None or r["gbps_median"] is None:
                    note = "not run" if r is None else "failed"
                    ax2.text(pos, 0, note, rotation=90, ha="center", va="bottom", fontsize=7)
                    continue
                bars = ax2.bar(
                    pos,
                    r["gbps_median"],
                    w,
                    color=("#2e7d32", "#9ccc65", "#fbc02d")[v_index],
                    edgecolor="black",
                    linewidth=0.5,
                    label=variant,
                )
                ax2.bar_label(bars, fmt="%.2g", padding=2, fontsize=7)
        handles, labels = ax2.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        ax2.set_ylim(top=ax2.get_ylim()[1] * 1.2)
        ax2.legend(
            unique.values(),
            unique.keys(),
            fontsize=7,
            ncols=3,
            loc="upper left",
            columnspacing=0.8,
            handlelength=1.0,
        )
        ax2.set_xticks(range(len(sclp_bases)), sclp_bases, rotation=45, ha="right")
        ax2.set_ylabel("TCP Gbit/s (median)")
        ax2.set_title("pre-reassembly ablation")
        ax2.grid(axis="y", alpha=0.3)
    machine = report["machine"]
    fig.suptitle(
        f"sclp bench, {machine['cpu_model']} × {machine['nproc']}, "
        f"{report['options']['duration_s']} s × {report['options']['repeat']}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_report(
    report: dict[str, Any],
    chart: Path | None = None,
    raw_json: Path | None = None,
    relative_to: Path | None = None,
) -> str:
    """``docs/results.md``: the command, the machine, the table, the goals, the chart
    (paths written relative to ``relative_to``, the Markdown file's folder)."""

    def link(path: Path) -> str:
        if relative_to is None:
            return str(path)
        return os.path.relpath(path.resolve(), relative_to.resolve())

    machine = report["machine"]
    options = report["options"]
    parts = [
        "# Benchmark results",
        "",
        "The evaluation of issue 4 (the paper's figures) on this machine, produced by",
        "",
        f"    {report['command']}",
        "",
        f"iperf3 VM1 → VM2 for {options['duration_s']} s, {options['repeat']} run(s) per "
        f"transport and configuration; UDP with {options['udp_datagram_bytes']} B datagrams "
        f"at an unlimited rate (`iperf3 -u -b 0 -l {options['udp_datagram_bytes']}`). "
        "Frames/GB: packets counted on the receiving VM's interface per GB received; "
        "CPU s/GB: user + system time of both `sclp run` processes per GB received "
        "(kernel references: –); RSS: the endpoints' peak (VmHWM).",
        "",
        "## Machine",
        "",
        _md_table(["", ""], [[k, _fmt(v)] for k, v in machine.items()]),
        "",
        "## Results",
        "",
        _md_table(TABLE_COLUMNS, table_rows(report)),
        "",
        "## Goals (issue 4)",
        "",
        _md_table(["goal", "value", "target", "holds", "of"], ratio_rows(report)),
        "",
    ]
    if report["interrupted"]:
        parts += ["**The run was interrupted; the figures are partial.**", ""]
    if chart is not None:
        parts += ["## Chart", "", f"![sclp bench chart]({link(chart)})", ""]
    if raw_json is not None:
        parts += [f"Every raw figure: [{link(raw_json)}]({link(raw_json)}).", ""]
    return "\n".join(parts)


def bench(options: BenchOptions) -> int:
    """``sclp bench``: run, print the tables, write the requested files.  Exit status
    0 when the run completed (failed configurations are results, marked in the table
    and the JSON), 130 when interrupted."""
    progress_console = Console(stderr=True)
    report = run_bench(options, progress_console)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # a log file gets the whole table, unwrapped
    render_tables(report, console)
    if options.json_path is not None:
        write_json(report, options.json_path)
    chart = options.chart_path
    if chart is not None:
        write_plot(report, chart)
    if options.markdown_path is not None:
        md = options.markdown_path
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(markdown_report(report, chart, options.json_path, md.parent))
    return 130 if report["interrupted"] else 0

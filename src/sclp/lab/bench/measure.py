"""Measuring: one iperf3 run and the figures around it, one configuration's
testbed measured over every transport, and the per-configuration summary.

Around every iperf3 run VM1 → VM2 we read the figures that explain a throughput:
the CPU time of both ``sclp run`` processes per GB received, the receiving VM
interface's ``rx_packets`` per GB (the frames the VM had to handle) and the
endpoints' peak RSS.  With QEMU guests as the VMs (``--vms qemu``) the guest's own
NIC counts its frames, the receiving endpoint's port counters say what it handed
the guest, and each result names the accelerator and the guests' boot times.
Why apart: this is the only part that drives a live testbed;
a failing configuration becomes a result with ``error`` here, never a crash.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sclp.lab.bench.configs import BenchConfig
from sclp.lab.bench.floor import vs_floor
from sclp.lab.bench.machine import process_cpu_seconds, process_peak_rss_mb
from sclp.lab.bench.options import UDP_DATAGRAM_BYTES
from sclp.lab.bench.udprate import RateBisection, RateSearch
from sclp.lab.guest_testbed import GuestTestbed
from sclp.lab.testbed import VNI, Testbed, TestbedError

GB: Final = 1e9  # bytes; "per GB" figures use decimal gigabytes, like Gbit/s


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


def _port_to_vm(tb: Testbed) -> dict[str, int] | None:
    """The receiving endpoint's counters of its one port on the VNI (``rx_frames``,
    ``rx_bytes``: what it handed VM2); None without endpoints or with several ports."""
    if not tb.endpoints or tb.protocol == "tinc":
        return None
    ports = [p for p in tb.stats(1).get("ports", {}).values() if int(p.get("vni", VNI)) == VNI]
    if len(ports) != 1:
        return None
    return {"rx_frames": int(ports[0]["rx_frames"]), "rx_bytes": int(ports[0]["rx_bytes"])}


def measure_run(
    tb: Testbed, transport: str, seconds: int, udp_length: int, bitrate: float | None = None
) -> dict[str, Any]:
    """One iperf3 run VM1 → VM2 and the figures around it (one ``runs`` entry).
    ``bitrate``: the UDP rate offered, bit/s (None: unlimited, ``-b 0``)."""
    udp = transport == "udp"
    cpu_before = _endpoint_cpu(tb) if tb.endpoints else None
    vm_before = tb.vm_link_counters(1)
    port_before = _port_to_vm(tb)
    report = tb.iperf3(
        seconds,
        udp=udp,
        bitrate="0" if bitrate is None else str(round(bitrate)),
        extra=["-l", str(udp_length)] if udp else None,
    )
    cpu_after = _endpoint_cpu(tb) if tb.endpoints else None
    vm_after = tb.vm_link_counters(1)
    port_after = _port_to_vm(tb)
    end = report["end"]
    received = end.get("sum_received") or end["sum"]
    sent = end.get("sum_sent") or end["sum"]
    cpu_util = end.get("cpu_utilization_percent", {})
    run: dict[str, Any] = {
        "seconds": float(received["seconds"]),
        "gbps": float(received["bits_per_second"]) / 1e9,
        "bytes_received": int(received["bytes"]),
        "bytes_sent": int(sent["bytes"]),
        "sent_gbps": float(sent["bits_per_second"]) / 1e9,
        "offered_gbps": (bitrate / 1e9 if bitrate is not None else None) if udp else None,
        "retransmits": None if udp else int(sent.get("retransmits", 0)),
        "lost_percent": float(received.get("lost_percent", 0.0)) if udp else None,
        "lost_packets": int(received.get("lost_packets", 0)) if udp else None,
        "packets": int(received.get("packets", 0)) if udp else None,
        "endpoint_cpu_s": None,
        "vm_rx_packets": vm_after["rx_packets"] - vm_before["rx_packets"],
        "vm_rx_bytes": vm_after["rx_bytes"] - vm_before["rx_bytes"],
        "vm_rx_dropped": vm_after["rx_dropped"] - vm_before["rx_dropped"],
        "endpoint_frames_to_vm": None,
        "endpoint_bytes_to_vm": None,
        "iperf3_sender_cpu_percent": cpu_util.get("host_total"),
        "iperf3_receiver_cpu_percent": cpu_util.get("remote_total"),
    }
    if cpu_before is not None and cpu_after is not None:
        run["endpoint_cpu_s"] = cpu_after - cpu_before
    if port_before is not None and port_after is not None:
        run["endpoint_frames_to_vm"] = port_after["rx_frames"] - port_before["rx_frames"]
        run["endpoint_bytes_to_vm"] = port_after["rx_bytes"] - port_before["rx_bytes"]
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
    copy_floor_s_per_gb: float | None = None,
    rate_search: RateBisection | None = None,
    extra: dict[str, Any] | None = None,
    *,
    io_floor_s_per_gb: float | None = None,
    native_floor_s_per_gb: float | None = None,
) -> dict[str, Any]:
    """The ``results`` entry of one configuration and transport;
    ``cpu_per_gb_vs_floor`` is its ``cpu_s_per_gb`` over the run's four-copy floor
    (None without a floor or without endpoint CPU); a UDP entry carries its rate
    search (``udp_rate_search``, ``offered_gbps``: None for unlimited).
    ``vm_rx_bytes_per_frame``: bytes per frame on VM2's interface (a GSO frame
    handed over whole is one frame of up to 64 KB); ``endpoint_bytes_per_frame_to_vm``
    the same from the receiving endpoint's port counters.  ``cpu_per_gb_vs_io_floor``
    is ``cpu_s_per_gb`` over the UDP carrier's I/O floor, ``cpu_per_gb_vs_native_floor``
    (native-mode configurations only: carrier ip, STT) over the native one.  ``extra`` (the guests'
    accelerator and boot times) is added as it is."""
    gbps = [r["gbps"] for r in runs]
    gigabytes = sum(r["bytes_received"] for r in runs) / GB
    frames = sum(r["vm_rx_packets"] for r in runs)
    cpu = [r["endpoint_cpu_s"] for r in runs if r["endpoint_cpu_s"] is not None]
    cpu_s_per_gb = sum(cpu) / gigabytes if cpu and gigabytes > 0 else None
    vm_bytes = sum(r.get("vm_rx_bytes", 0) for r in runs)
    handed = [r for r in runs if r.get("endpoint_frames_to_vm")]
    port_frames = sum(r["endpoint_frames_to_vm"] for r in handed)
    port_bytes = sum(r["endpoint_bytes_to_vm"] for r in handed)
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
        "vm_rx_bytes_per_frame": vm_bytes / frames if frames > 0 else None,
        "endpoint_bytes_per_frame_to_vm": port_bytes / port_frames if port_frames else None,
        "cpu_s_per_gb": cpu_s_per_gb,
        "cpu_per_gb_vs_floor": vs_floor(cpu_s_per_gb, copy_floor_s_per_gb),
        "cpu_per_gb_vs_io_floor": vs_floor(cpu_s_per_gb, io_floor_s_per_gb),
        "cpu_per_gb_vs_native_floor": (
            vs_floor(cpu_s_per_gb, native_floor_s_per_gb) if cfg.is_native else None
        ),
        "rss_mb_peak": rss_mb_peak if cfg.has_endpoints else None,
        "runs": runs,
    }
    if transport == "udp":
        losses = [r["lost_percent"] for r in runs]
        result["loss_percent"] = statistics.median(losses) if losses else None
        result["udp_datagram_bytes"] = udp_length
        search = rate_search.as_json() if rate_search is not None else None
        result["udp_rate_search"] = search
        result["offered_gbps"] = search["offered_gbps"] if search is not None else None
    if extra:
        result.update(extra)
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
    searches: dict[str, RateBisection] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class BenchInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during :func:`measure_config`; ``results`` holds the
    transports it had measured at least once (a partial one carries ``error``)."""

    def __init__(self, results: list[dict[str, Any]]) -> None:
        super().__init__()
        self.results = results


def _search_udp_rate(
    tb: Testbed,
    label: str,
    search: RateSearch,
    udp_length: int,
    progress: Callable[[str, int], None],
    bisection: RateBisection,
) -> None:
    """The probes of :mod:`.udprate`'s search, recorded in ``bisection``; every
    probe is one progress step (a search that ends early counts the rest as done)."""
    offered: float | None = None
    done = 0
    try:
        while True:
            what = f"{label} udp rate {done + 1}/{search.max_runs}"
            progress(what, 0)
            try:
                run = measure_run(tb, "udp", search.probe_seconds, udp_length, offered)
            finally:
                progress(what, 1)
                done += 1
            offered = bisection.record(
                offered, run["sent_gbps"] * 1e9, run["gbps"] * 1e9, run["lost_percent"]
            )
            if offered is None:
                return
    finally:
        for _ in range(search.max_runs - done):
            progress(f"{label} udp rate (done)", 1)


def measure_config(
    cfg: BenchConfig,
    transports: Sequence[str],
    seconds: int,
    repeat: int,
    udp_length: int,
    progress: Callable[[str, int], None],
    search: RateSearch | None = None,
    copy_floor_s_per_gb: float | None = None,
    *,
    io_floor_s_per_gb: float | None = None,
    native_floor_s_per_gb: float | None = None,
) -> list[dict[str, Any]]:
    """Build ``cfg``'s testbed, measure every transport ``repeat`` times, tear it
    down; one ``results`` entry per transport.  With ``search``, UDP first searches
    the highest offered rate that loses under 1 % (:mod:`.udprate`) and its
    ``repeat`` runs offer that rate; without, they offer an unlimited rate.
    Never raises for a failing configuration (the entries carry ``error``); Ctrl-C
    becomes :class:`BenchInterrupted` with what was measured, after the testbed is
    removed.  ``progress(what, 0)`` announces each iperf3 run, ``progress(what, 1)``
    counts one done or skipped (:func:`steps_per_config` of them in all)."""
    m = _Measurement(runs={t: [] for t in transports}, vm_mtu=cfg.vm_mtu)
    pending = {t: repeat for t in transports}
    unsearched = search is not None and "udp" in transports

    def note_rss(tb: Testbed) -> None:
        for proc in tb.endpoints:
            try:
                rss = process_peak_rss_mb(proc.pid)
            except OSError:
                continue
            m.rss_mb_peak = max(m.rss_mb_peak or 0.0, rss)

    try:
        with cfg.testbed() as tb:
            if isinstance(tb, GuestTestbed):
                m.extra["accelerator"] = tb.accelerator
                m.extra["guest_boot_s"] = [g.boot_seconds for g in tb.guests]
            m.vm_mtu = tb.vm_link_counters(1)["mtu"]
            if tb.ping(3).returncode != 0:
                raise TestbedError("VM1 cannot ping VM2 through the tunnel")
            for transport in transports:
                try:
                    rate: float | None = None
                    if transport == "udp" and search is not None:
                        bisection = m.searches["udp"] = RateBisection(search)
                        unsearched = False
                        _search_udp_rate(tb, cfg.label, search, udp_length, progress, bisection)
                        note_rss(tb)
                        if bisection.best is None:
                            # Nothing lost under the limit: the lowest offer tried is
                            # measured and its loss reported as it is (found: false).
                            offers = [p["offered_gbps"] for p in bisection.probes]
                            tried = [o for o in offers if o is not None]
                            rate = min(tried) * 1e9 if tried else None
                        else:
                            best = bisection.best["offered_gbps"]
                            rate = best * 1e9 if best is not None else None
                    while pending[transport]:
                        what = f"{cfg.label} {transport} {repeat - pending[transport] + 1}/{repeat}"
                        progress(what, 0)
                        pending[transport] -= 1
                        try:
                            run = measure_run(tb, transport, seconds, udp_length, rate)
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
        if unsearched and search is not None:
            for _ in range(search.max_runs):
                progress(f"{cfg.label} udp rate (skipped)", 1)
    results = [
        summarise(
            cfg,
            t,
            m.runs[t],
            m.vm_mtu,
            m.rss_mb_peak,
            m.errors.get(t),
            udp_length,
            copy_floor_s_per_gb,
            m.searches.get(t),
            m.extra,
            io_floor_s_per_gb=io_floor_s_per_gb,
            native_floor_s_per_gb=native_floor_s_per_gb,
        )
        for t in transports
        if m.runs[t] or not m.interrupted
    ]
    if m.interrupted:
        raise BenchInterrupted(results)
    return results


def steps_per_config(transports: Sequence[str], repeat: int, search: RateSearch | None) -> int:
    """The progress steps :func:`measure_config` counts for one configuration."""
    steps = len(transports) * repeat
    if search is not None and "udp" in transports:
        steps += search.max_runs
    return steps

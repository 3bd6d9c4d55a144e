"""The run: every configuration measured in turn with a progress bar, then the
tables printed and the requested files written (``sclp bench`` itself).

Why apart: this is the orchestration (signals, progress, report document, exit
status); what is measured, judged and drawn lives in the sibling modules.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Any, Final

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from sclp.lab.bench.floor import measure_copy_floor
from sclp.lab.bench.goals import GUEST_GOALS, add_bridge_ratios, compute_ratios
from sclp.lab.bench.iofloor import measure_io_floors
from sclp.lab.bench.machine import machine_description
from sclp.lab.bench.measure import BenchInterrupted, measure_config, steps_per_config
from sclp.lab.bench.options import BenchOptions
from sclp.lab.bench.plot import write_plot
from sclp.lab.bench.report import markdown_report, write_json
from sclp.lab.bench.tables import render_tables

# 2: copy floor, cpu_per_gb_vs_floor, UDP rate search, tinc
# 3: --vms qemu (vms, accelerator, guest_kernel; gbps_vs_bridge), bytes per frame
# 4: I/O floors (io_floor_s_per_gb, native_floor_s_per_gb; cpu_per_gb_vs_io_floor and
#    cpu_per_gb_vs_native_floor per result)
SCHEMA_VERSION: Final = 4
TCG_CAVEAT: Final = (
    "Under TCG (QEMU's emulation, no KVM) the guests' emulated CPUs are the "
    "bottleneck: every figure is bound by them, so compare each tunnel with the bridge "
    "between the same guests in this run, not with the namespace bench."
)


class BenchSetupError(Exception):
    """The run cannot start (no QEMU, no guest image); one line saying what to do."""


def guest_setup(vms: str) -> dict[str, Any]:
    """What a ``--vms`` run needs before anything is built: QEMU and the built
    guest image; the accelerator the guests will run under (probed once per image
    and host kernel) and the guest's kernel.  Raises :class:`BenchSetupError`."""
    from sclp.lab.guest import accelerator, qemu_missing
    from sclp.lab.guest_image import cache_dir, load_image

    if vms != "qemu":
        raise BenchSetupError(f"--vms: only qemu is supported, not {vms!r}")
    missing = qemu_missing()
    if missing is not None:
        raise BenchSetupError(f"--vms qemu: {missing}")
    image = load_image()
    if image is None:
        raise BenchSetupError(
            f"--vms qemu: no guest image in {cache_dir()}: build it with `sclp guest build`"
        )
    accel, reason = accelerator(image)
    return {
        "vms": vms,
        "accelerator": accel,
        "accelerator_reason": reason,
        "guest_kernel": image.kernel_package,
    }


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_bench(options: BenchOptions, console: Console | None = None) -> dict[str, Any]:
    """Measure every configuration of ``options``; return the report (the JSON
    document).  A failing configuration is a result with ``error``; Ctrl-C/SIGTERM
    ends the run early with ``interrupted`` set.  Writes nothing.  Raises
    :class:`BenchSetupError` when ``--vms`` cannot run here."""
    console = console or Console(stderr=True)
    configs = options.configs()
    guests = guest_setup(options.vms) if options.vms else None
    search = options.udp_search if "udp" in options.transports else None
    # Before any testbed exists: the copy floor wants a quiet machine.
    floor = measure_copy_floor()
    io_floors = measure_io_floors()
    machine = machine_description()
    machine["copy_64k_us"] = floor.one_copy_us
    machine["copy_64k_us_4k_aliased"] = floor.as_json()["aliased_copy_us"]
    machine["copy_floor_s_per_gb"] = floor.floor_s_per_gb
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "command": options.command_line(),
        "vms": None,
        "options": {
            "duration_s": options.seconds,
            "repeat": options.repeats,
            "transports": list(options.transports),
            "udp_datagram_bytes": options.udp_length,
            "udp_bitrate": search.describe() if search is not None else None,
            "quick": options.quick,
            "configurations": [c.label for c in configs],
        },
        "machine": machine,
        "copy_floor_s_per_gb": floor.floor_s_per_gb,
        "copy_floor": floor.as_json(),
        "io_floor_s_per_gb": io_floors.io_floor_s_per_gb,
        "native_floor_s_per_gb": io_floors.native_floor_s_per_gb,
        "io_floor": io_floors.as_json(),
        "units": {
            "gbps": "Gbit/s received by iperf3 in VM2 (1e9 bit/s)",
            "frames_per_gb_rx_vm": "rx_packets of VM2's interface per 1e9 bytes received",
            "cpu_s_per_gb": "utime+stime of both endpoint processes (sclp run, or tincd) "
            "per 1e9 bytes received",
            "copy_floor_s_per_gb": "CPU s of four 64 KiB memory copies per 1e9 bytes, "
            "measured at the start of the run (see copy_floor.method)",
            "cpu_per_gb_vs_floor": "cpu_s_per_gb / copy_floor_s_per_gb",
            "io_floor_s_per_gb": "CPU s per 1e9 payload bytes of the UDP carrier's I/O with no "
            "work per frame (TAP read, UDP_SEGMENT send, UDP_GRO receive, TAP write), "
            "measured at the start of the run (see io_floor.method)",
            "native_floor_s_per_gb": "the same for the native mode: 45 packets per 64 KB "
            "frame through an AF_PACKET TX ring and a receive ring",
            "cpu_per_gb_vs_io_floor": "cpu_s_per_gb / io_floor_s_per_gb",
            "cpu_per_gb_vs_native_floor": "native-mode results (carrier ip, STT): "
            "cpu_s_per_gb / native_floor_s_per_gb",
            "rss_mb_peak": "largest VmHWM of the two endpoints, 2^20 bytes",
            "vm_rx_bytes_per_frame": "rx_bytes / rx_packets of VM2's interface (a GSO frame "
            "handed over whole is one packet of up to 64 KB)",
            "endpoint_bytes_per_frame_to_vm": "bytes per frame the receiving endpoint handed "
            "VM2 (its port counters)",
            "gbps_vs_bridge": "--vms: gbps_median over the bridge reference's in the same run",
            "retransmits": "TCP retransmits summed over the runs",
            "loss_percent": "median iperf3 UDP loss over the runs",
            "offered_gbps": "UDP rate offered by the runs (-b): the highest that lost under "
            "1 % in the search; null: unlimited",
        },
        "results": [],
        "interrupted": False,
    }
    if guests is not None:
        report.update(guests)
        report["caveat"] = TCG_CAVEAT if guests["accelerator"] == "tcg" else None
    steps = len(configs) * steps_per_config(options.transports, options.repeats, search)
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
                    search,
                    floor.floor_s_per_gb,
                    io_floor_s_per_gb=io_floors.io_floor_s_per_gb,
                    native_floor_s_per_gb=io_floors.native_floor_s_per_gb,
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
    if options.vms:
        add_bridge_ratios(report["results"])
        report["ratios"] = compute_ratios(report["results"], GUEST_GOALS)
    else:
        report["ratios"] = compute_ratios(report["results"])
    return report


def bench(options: BenchOptions) -> int:
    """``sclp bench``: run, print the tables, write the requested files.  Exit status
    0 when the run completed (failed configurations are results, marked in the table
    and the JSON), 130 when interrupted, 1 when it could not start (one line on
    stderr: QEMU or the guest image missing for ``--vms``)."""
    progress_console = Console(stderr=True)
    try:
        report = run_bench(options, progress_console)
    except BenchSetupError as exc:
        print(f"sclp: error: {exc}", file=sys.stderr)
        return 1
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

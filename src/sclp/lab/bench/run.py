"""The run: every configuration measured in turn with a progress bar, then the
tables printed and the requested files written (``sclp bench`` itself).

Why apart: this is the orchestration (signals, progress, report document, exit
status); what is measured, judged and drawn lives in the sibling modules.
"""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import Any, Final

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from sclp.lab.bench.goals import compute_ratios
from sclp.lab.bench.machine import machine_description
from sclp.lab.bench.measure import BenchInterrupted, measure_config
from sclp.lab.bench.options import BenchOptions
from sclp.lab.bench.plot import write_plot
from sclp.lab.bench.report import markdown_report, write_json
from sclp.lab.bench.tables import render_tables

SCHEMA_VERSION: Final = 1


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

"""The files a run writes besides the chart: the JSON report and the Markdown
results page (``docs/results.md``).

Why apart: both are plain text documents built from the report; they need neither
the testbed nor matplotlib.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sclp.lab.bench.tables import TABLE_COLUMNS, copy_floor_text, fmt, ratio_rows, table_rows


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


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
        "The paper's evaluation on this machine, produced by",
        "",
        f"    {report['command']}",
        "",
        f"iperf3 VM1 → VM2 for {options['duration_s']} s, {options['repeat']} run(s) per "
        f"transport and configuration; UDP with {options['udp_datagram_bytes']} B datagrams "
        f"(`-l {options['udp_datagram_bytes']}`) offered at the highest rate that lost under "
        "1 % in a short search per configuration "
        f"({options.get('udp_bitrate') or 'no search'}); the UDP loss column is what the "
        "runs at that rate lost. "
        "Frames/GB: packets counted on the receiving VM's interface per GB received; "
        "CPU s/GB: user + system time of both endpoint processes (`sclp run`, or `tincd` "
        "for tinc) per GB received (kernel references: –); CPU × floor: that over the "
        "cost of four 64 KiB memory copies per frame (TAP read, socket send, socket "
        "receive, TAP write) measured on this machine at the start of the run; RSS: the "
        "endpoints' peak (VmHWM). tinc is Debian's tinc 1.0 in switch mode without "
        "cipher or digest.",
        "",
        copy_floor_text(report) + ".",
        "",
        "## Machine",
        "",
        _md_table(["", ""], [[k, fmt(v)] for k, v in machine.items()]),
        "",
        "## Results",
        "",
        _md_table(TABLE_COLUMNS, table_rows(report)),
        "",
        "## Goals",
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

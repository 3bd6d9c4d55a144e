"""The results as rows of text and as the console tables.

Why apart: the same rows feed the console (rich) and the Markdown page, so the
formatting of every figure is decided once, here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

from rich.console import Console
from rich.table import Table


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, list):
        return " ".join(fmt(v, digits) for v in value)
    return str(value)


TABLE_COLUMNS: Final = (
    "configuration",
    "VM MTU",
    "TCP Gbit/s",
    "TCP runs",
    "retr.",
    "UDP Gbit/s <1% loss",
    "UDP loss %",
    "VM frames/GB",
    "CPU s/GB",
    "CPU × floor",
    "RSS MB",
    "note",
)


def by_label(report: dict[str, Any]) -> Iterator[tuple[str, dict[str, dict[str, Any]]]]:
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for r in report["results"]:
        rows.setdefault(r["label"], {})[r["transport"]] = r
    yield from rows.items()


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per configuration (TCP and UDP side by side), as text."""
    rows = []
    for label, by_transport in by_label(report):
        tcp, udp = by_transport.get("tcp", {}), by_transport.get("udp", {})
        first = tcp or udp
        errors = {f"{t}: {r['error']}" for t, r in by_transport.items() if "error" in r}
        note = "reference" if first.get("reference") else ""
        if errors:
            note = "FAILED " + "; ".join(sorted(errors))
        rows.append(
            [
                label,
                fmt(first.get("vm_mtu")),
                fmt(tcp.get("gbps_median")),
                " ".join(f"{g:.2f}" for g in tcp.get("gbps_runs", [])) or "–",
                fmt(tcp.get("retransmits")),
                fmt(udp.get("gbps_median")),
                fmt(udp.get("loss_percent"), 1),
                fmt(tcp.get("frames_per_gb_rx_vm"), 0),
                fmt(tcp.get("cpu_s_per_gb")),
                fmt(tcp.get("cpu_per_gb_vs_floor"), 1),
                fmt(first.get("rss_mb_peak"), 0),
                note,
            ]
        )
    return rows


def copy_floor_text(report: dict[str, Any]) -> str:
    """One line: the run's copy floor and what it is made of."""
    floor = report.get("copy_floor")
    if not floor:
        return "Copy floor: not measured"
    aliased = floor.get("aliased_copy_us")
    return (
        f"Copy floor: one 64 KiB copy {floor['one_copy_us']:.2f} µs "
        f"({floor['one_copy_gb_per_s']:.1f} GB/s"
        + (f"; 4K-aliased {aliased:.1f} µs" if aliased is not None else "")
        + f"), four copies per frame = {floor['floor_s_per_gb']:.3f} CPU s/GB; "
        "'CPU × floor' is CPU s/GB over that"
    )


def ratio_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for key, entry in report["ratios"].items():
        holds = {True: "yes", False: "NO", None: "–"}[entry["holds"]]
        rows.append([key, fmt(entry["value"]), entry["goal"] or "(reported)", holds, entry["of"]])
    return rows


def render_tables(report: dict[str, Any], console: Console) -> None:
    table = Table(*TABLE_COLUMNS, title="sclp bench: VM1 → VM2")
    for row in table_rows(report):
        style = "dim" if row[-1] == "reference" else ("red" if row[-1] else None)
        table.add_row(*row[:-1], row[-1][:60], style=style)
    console.print(table)
    console.print(copy_floor_text(report))
    goals = Table("goal", "value", "target", "holds", "of", title="goals")
    for row in ratio_rows(report):
        goals.add_row(*row, style={"NO": "red", "yes": "green"}.get(row[3]))
    console.print(goals)
    if report["interrupted"]:
        console.print("[yellow]interrupted: the figures above are partial[/]")

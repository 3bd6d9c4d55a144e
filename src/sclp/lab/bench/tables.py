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
# --vms qemu: the bridge ratio and the bytes per frame the guest received; UDP
# columns only when UDP was measured.
GUEST_TABLE_COLUMNS: Final = (
    "configuration",
    "VM MTU",
    "TCP Gbit/s",
    "TCP runs",
    "retr.",
    "× bridge",
    "guest rx B/frame",
    "endpoint B/frame to guest",
    "VM frames/GB",
    "CPU s/GB",
    "CPU × floor",
    "RSS MB",
    "note",
)
GUEST_UDP_COLUMNS: Final = ("UDP Gbit/s <1% loss", "UDP loss %")


def table_columns(report: dict[str, Any]) -> tuple[str, ...]:
    """The columns of :func:`table_rows` for this report."""
    if not report.get("vms"):
        return TABLE_COLUMNS
    if "udp" in report["options"]["transports"]:
        return (*GUEST_TABLE_COLUMNS[:6], *GUEST_UDP_COLUMNS, *GUEST_TABLE_COLUMNS[6:])
    return GUEST_TABLE_COLUMNS


def by_label(report: dict[str, Any]) -> Iterator[tuple[str, dict[str, dict[str, Any]]]]:
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for r in report["results"]:
        rows.setdefault(r["label"], {})[r["transport"]] = r
    yield from rows.items()


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per configuration (TCP and UDP side by side), as text, in the columns
    of :func:`table_columns`."""
    if report.get("vms"):
        return _guest_rows(report)
    rows = []
    for label, by_transport in by_label(report):
        tcp, udp = by_transport.get("tcp", {}), by_transport.get("udp", {})
        first = tcp or udp
        note = _note(by_transport, first)
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


def _note(by_transport: dict[str, Any], first: dict[str, Any]) -> str:
    """A row's note: its failures (per transport), else whether it is a reference."""
    errors = {f"{t}: {r['error']}" for t, r in by_transport.items() if "error" in r}
    if errors:
        return "FAILED " + "; ".join(sorted(errors))
    return "reference" if first.get("reference") else ""


def _guest_rows(report: dict[str, Any]) -> list[list[str]]:
    udp_measured = "udp" in report["options"]["transports"]
    rows = []
    for label, by_transport in by_label(report):
        tcp, udp = by_transport.get("tcp", {}), by_transport.get("udp", {})
        first = tcp or udp
        note = _note(by_transport, first)
        row = [
            label,
            fmt(first.get("vm_mtu")),
            fmt(tcp.get("gbps_median"), 3),
            " ".join(f"{g:.3f}" for g in tcp.get("gbps_runs", [])) or "–",
            fmt(tcp.get("retransmits")),
            fmt(tcp.get("gbps_vs_bridge")),
        ]
        if udp_measured:
            row += [fmt(udp.get("gbps_median"), 3), fmt(udp.get("loss_percent"), 1)]
        row += [
            fmt(tcp.get("vm_rx_bytes_per_frame"), 0),
            fmt(tcp.get("endpoint_bytes_per_frame_to_vm"), 0),
            fmt(tcp.get("frames_per_gb_rx_vm"), 0),
            fmt(tcp.get("cpu_s_per_gb")),
            fmt(tcp.get("cpu_per_gb_vs_floor"), 1),
            fmt(first.get("rss_mb_peak"), 0),
            note,
        ]
        rows.append(row)
    return rows


def guests_text(report: dict[str, Any]) -> str:
    """One line for a ``--vms`` run: the guests, their accelerator and kernel."""
    if not report.get("vms"):
        return ""
    accel = report.get("accelerator") or "?"
    why = f" ({report['accelerator_reason']})" if report.get("accelerator_reason") else ""
    return (
        f"VMs: two {report['vms'].upper()} guests with virtio-net NICs, accelerator "
        f"{accel}{why}, guest kernel {report.get('guest_kernel') or '?'}; one guest behind "
        "each endpoint, iperf3 inside the guests; reference: the guests' TAPs on a Linux "
        "bridge, no tunnel"
    )


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


def io_floor_text(report: dict[str, Any]) -> str:
    """One line: the run's I/O floors (the carriers' system calls with no work per
    frame), or that the run did not measure them (reports before schema 4)."""
    udp, native = report.get("io_floor_s_per_gb"), report.get("native_floor_s_per_gb")
    if udp is None and native is None:
        return "I/O floors: not measured in this run"
    copy = report.get("copy_floor_s_per_gb")

    def one(value: float | None) -> str:
        if value is None:
            return "not measured"
        times = f" ({value / copy:.1f} × the copy floor)" if copy else ""
        return f"{value:.3f} CPU s/GB{times}"

    return (
        f"I/O floors, the endpoints' I/O with no work per frame: UDP carrier {one(udp)}, "
        f"native mode {one(native)}"
    )


def ratio_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for key, entry in report["ratios"].items():
        holds = {True: "yes", False: "NO", None: "–"}[entry["holds"]]
        rows.append([key, fmt(entry["value"]), entry["goal"] or "(reported)", holds, entry["of"]])
    return rows


def render_tables(report: dict[str, Any], console: Console) -> None:
    title = "sclp bench: VM1 → VM2" + (f" ({report['vms']} guests)" if report.get("vms") else "")
    table = Table(*table_columns(report), title=title)
    for row in table_rows(report):
        style = "dim" if row[-1] == "reference" else ("red" if row[-1] else None)
        table.add_row(*row[:-1], row[-1][:60], style=style)
    console.print(table)
    if report.get("vms"):
        console.print(guests_text(report), markup=False, highlight=False)
        if report.get("caveat"):
            console.print(f"[yellow]{report['caveat']}[/]")
    console.print(copy_floor_text(report))
    console.print(io_floor_text(report))
    title = (
        "ratios (reported; the goals are the namespace bench's)" if report.get("vms") else "goals"
    )
    goals = Table("goal", "value", "target", "holds", "of", title=title)
    for row in ratio_rows(report):
        goals.add_row(*row, style={"NO": "red", "yes": "green"}.get(row[3]))
    console.print(goals)
    if report["interrupted"]:
        console.print("[yellow]interrupted: the figures above are partial[/]")

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
from typing import Any, Final

from sclp.lab.bench.tables import (
    copy_floor_text,
    fmt,
    guests_text,
    io_floor_text,
    ratio_rows,
    table_columns,
    table_rows,
)

# The page's "Method" section: how each column is measured and why.
METHOD: Final = """\
- **TCP Gbit/s**: what iperf3 in VM2 received, median of the runs; retr.: TCP
  retransmits summed over them.
- **UDP Gbit/s**: the runs offer the highest rate that lost under 1 % in a short search
  per configuration ({udp_search}). The search on `iperf3 -u -b RATE` starts at
  what arrived under overload, raises the offer by half while no probe loses, then
  bisects. An
  unlimited rate floods the sending VM's TAP queue and measures that queue (90 % loss),
  not the tunnel. The loss column is what the runs at the found rate lost, which can
  exceed the probe's on a busy machine.
- **VM frames/GB**: packets counted on the receiving VM's interface per GB received (a
  GSO frame is one).
- **CPU s/GB**: user + system time of both endpoint processes (`sclp run`, or `tincd`
  for tinc) per GB received; kernel references have none (–).
- **CPU × floor**: CPU s/GB over the *copy floor*, the cost of the four 64 KiB copies
  every frame needs however fast an endpoint is (TAP read and socket send on one host,
  socket receive and TAP write on the other), measured at the start of the run on this
  machine: median of 11 trials of `memoryview` copies over 8 MiB of buffers (more
  than a core's L2 cache), thread CPU time. Absolute Gbit/s belong to the machine;
  this multiple is what the endpoint's design decides. It is a floor, not a reachable
  target: the kernel's UDP GSO send and GRO receive over a veth alone, with no tunnel,
  cost 2–3 times it on this machine kind (`benchmarks/socket_floor.py`). The
  destination is placed 2 KiB
  from the source modulo 4 KiB: a copy whose destination lies a few bytes after its
  source modulo 4 KiB (4K aliasing) runs about ten times slower on this CPU; that
  figure is in the machine table (`copy_64k_us_4k_aliased`).
- **I/O floors** (JSON `io_floor_s_per_gb`, `native_floor_s_per_gb`; per result
  `cpu_per_gb_vs_io_floor`, `cpu_per_gb_vs_native_floor`): the reachable floor,
  measured at the start of the run with the project's own I/O adapters in two
  namespaces it builds and removes. One thread circulates 64 KB TCP GSO frames: TAP
  read, `UDP_SEGMENT` send over a veth, `UDP_GRO` receive, TAP write (the two TAPs
  joined by a bridge), nothing else per frame, about a second; its CPU time per GB is
  both endpoints' kernel and system-call work. The native floor does the same with 45
  packets per frame through an `AF_PACKET` TX ring and a receive ring ahead of an nft
  ingress drop, no Python per packet. An endpoint's CPU over its floor is the cost of
  its per-frame work. Runs before this measurement was added say "not measured".
- **RSS MB**: the endpoints' peak (VmHWM); the goal counts our endpoints only.
- **tinc**: Debian's tinc 1.0 in switch mode, `Cipher = none`, `Digest = none`, path MTU
  fixed (discovery off), 16 MiB socket buffers asked for like our endpoints; each
  `tincd` in its host namespace with its own pid file, its TAP bridged to the VM's veth
  like the kernel VXLAN's. A C tunnel that moves one packet per system call.
- **Native SCLP and STT** run with the default `[tuning]`: segments leave through
  `AF_PACKET` TX rings and arrive through receive rings ahead of an ingress drop, so
  neither side walks the kernel's IP output or input per segment; the receiver places
  a whole receive batch with one call. Where their time goes, and what each step
  changed: [performance.md](performance.md).
- **Goals** are the project's targets, each with its bound in the Goals table below
  (defined in `sclp.lab.bench.goals`); ratios to the kernel's VXLAN are reported, not
  goals (they measure the machine's kernel as much as our code).
- **Real guests** (`sclp bench --vms qemu`): the same comparison with two QEMU guests
  (virtio-net, the test guest of `sclp guest build`, KVM when it boots them, else TCG;
  the run names the accelerator) as the VMs, one behind each endpoint, which adopts
  QEMU's TAP by pattern; iperf3 runs inside the guests, TCP only unless `--transports`
  asks for UDP. Two fresh guests per configuration, booted with that configuration's
  VM MTU. Under TCG the guests' emulated CPUs bound every figure, so each tunnel is
  reported against a reference in the same run: both guests' TAPs on a Linux bridge,
  no tunnel (`× bridge`). Guest rx B/frame: bytes per frame on the receiving guest's
  NIC (GSO frames handed over whole are up to 64 KB); the receiving endpoint's port
  counters give the same from its side. No kernel VXLAN, veth or tinc reference and
  no ablations there; default set: bridge, vxlan, vxlan-sclp/ip, vxlan-sclp/udp.
  One run's figures: [vms.md](vms.md#benchmark-with-real-guests)."""


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
    guests = [guests_text(report), ""] if report.get("vms") else []
    if report.get("caveat"):
        guests += [f"**{report['caveat']}**", ""]
    compiled = machine.get("compiled", "none")
    if compiled != "none":  # a wheel built with SCLP_MYPYC=1 ran the endpoints
        guests.insert(
            0,
            f"The endpoints ran a wheel built with `SCLP_MYPYC=1`: {compiled} of the "
            "per-frame path compiled (the quick start's editable install is pure Python; "
            "performance.md compares the two).\n",
        )
    parts = [
        "# Benchmark results" + (" with QEMU guests" if report.get("vms") else ""),
        "",
        "The paper's evaluation on this machine, produced by",
        "",
        f"    {report['command']}",
        "",
        f"iperf3 VM1 → VM2 for {options['duration_s']} s, {options['repeat']} run(s) per "
        "transport and configuration"
        + (
            f", UDP with {options['udp_datagram_bytes']} B datagrams "
            f"(`-l {options['udp_datagram_bytes']}`). "
            if "udp" in options["transports"]
            else ", TCP only. "
        )
        + copy_floor_text(report)
        + ". "
        + io_floor_text(report)
        + ".",
        "",
        *guests,
        "## Method",
        "",
        METHOD.format(udp_search=options.get("udp_bitrate") or "no search"),
        "",
        "## Machine",
        "",
        _md_table(["", ""], [[k, fmt(v, 3)] for k, v in machine.items()]),
        "",
        "## Results",
        "",
        _md_table(table_columns(report), table_rows(report)),
        "",
        "## Ratios (reported, no goals)" if report.get("vms") else "## Goals",
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

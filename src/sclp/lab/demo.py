"""``sclp demo``: two VMs (namespaces) on two hosts, joined by VXLAN over SCLP.

Builds the testbed, pings VM2 from VM1, runs iperf3 between them, prints the
throughput and the endpoints' key counters, and tears everything down — also on
Ctrl-C or failure.  Exits non-zero if any step failed.
"""

from __future__ import annotations

import signal
from types import FrameType

from rich.console import Console
from rich.table import Table

from sclp.lab.testbed import OVERLAY, Testbed, TestbedError

KEY_COUNTERS = (
    "tx_frames",
    "tx_packets",
    "rx_packets",
    "rx_frames",
    "reasm_complete",
    "reasm_bytes_held",
    "drop_bad_checksum",
    "drop_timeout",
    "drop_not_peer",
)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_demo(protocol: str = "vxlan-sclp", carrier: str = "ip", seconds: int = 5) -> int:
    console = Console()
    signal.signal(signal.SIGTERM, _on_sigterm)
    what = protocol + (f" ({carrier} carrier)" if protocol.endswith("-sclp") else "")
    ok = True
    try:
        with console.status(f"building the testbed: 2 hosts, 2 VMs, {what}"):
            tb = Testbed(protocol, carrier)
            tb.__enter__()
        try:
            console.print(
                f"[bold]testbed[/] {tb.vms[0]} ({OVERLAY[0]}) ⇄ {tb.hosts[0]} ═ {what} ═ "
                f"{tb.hosts[1]} ⇄ {tb.vms[1]} ({OVERLAY[1]})"
            )
            ping = tb.ping(3)
            summary = [line for line in ping.stdout.splitlines() if "packet loss" in line]
            console.print(f"[bold]ping[/] {summary[0] if summary else ping.stderr.strip()}")
            if ping.returncode != 0:
                ok = False
                raise TestbedError("ping VM1 -> VM2 failed")
            with console.status(f"iperf3 TCP VM1 -> VM2 for {seconds} s"):
                report = tb.iperf3(seconds)
            end = report["end"]
            gbps = end["sum_received"]["bits_per_second"] / 1e9
            retr = end["sum_sent"].get("retransmits", 0)
            console.print(f"[bold]iperf3[/] {gbps:.2f} Gbit/s VM1 -> VM2, {retr} retransmits")
            table = Table(
                "counter", "host1 (sender)", "host2 (receiver)", title="endpoint counters"
            )
            s1, s2 = tb.stats(0)["counters"], tb.stats(1)["counters"]
            for key in KEY_COUNTERS:
                table.add_row(key, str(s1.get(key, 0)), str(s2.get(key, 0)))
            console.print(table)
            if s2.get("rx_packets") and s2.get("rx_frames"):
                console.print(
                    f"receiving VM got {s2['rx_frames']} frames for {s2['rx_packets']} underlay "
                    f"packets ({s2['rx_packets'] / s2['rx_frames']:.1f} packets per frame)"
                )
        finally:
            with console.status("tearing down"):
                codes = tb.stop_endpoints()
                tb.close()
            if any(codes):
                console.print(f"[red]an endpoint exited with status {codes}[/]")
                ok = False
    except TestbedError as exc:
        console.print(f"[red]sclp demo failed:[/] {exc}")
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; testbed removed[/]")
        return 130
    console.print("[green]demo OK[/]: testbed removed" if ok else "[red]demo FAILED[/]")
    return 0 if ok else 1

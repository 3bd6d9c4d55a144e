"""``sclp demo``: two VMs (namespaces) on two hosts, joined by VXLAN over SCLP; with
``--hosts N``, N hosts that find each other through etcd.

Builds the testbed, pings VM2 from VM1, runs iperf3 between them, prints the
throughput and the endpoints' key counters, and tears everything down — also on
Ctrl-C or failure.  Exits non-zero if any step failed.
"""

from __future__ import annotations

import signal
import time
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


def run_cluster_demo(hosts: int, protocol: str = "vxlan-sclp", carrier: str = "ip") -> int:
    """``sclp demo --hosts N``: N hosts that find each other through a single-node etcd
    (Debian's etcd-server, in its own namespace), a VM on each, no ``peers`` in any
    file; shows the time to full mesh and all-pairs connectivity, then tears down."""
    from sclp.lab.cluster import ClusterLab, LabError, vm_address

    console = Console()
    signal.signal(signal.SIGTERM, _on_sigterm)
    what = protocol + (f" ({carrier} carrier)" if protocol.endswith("-sclp") else "")
    try:
        lab = ClusterLab(hosts=0, protocol=protocol, carrier=carrier)
        with console.status(f"starting etcd and {hosts} hosts, {what}"):
            lab.__enter__()
        try:
            start = time.monotonic()
            for _ in range(hosts):
                lab.add_host()
            meshed = lab.wait_full_mesh(30.0)
            console.print(
                f"[bold]cluster[/] {hosts} hosts registered in etcd "
                f"({', '.join(lab.etcd_urls)}); every host had every other as a peer "
                f"{time.monotonic() - start:.1f} s after the first started "
                f"({meshed:.2f} s after the last)"
            )
            table = Table("host", "underlay", "VM", "peers on vni 42", title="members")
            for host in lab.members:
                peers = sorted(lab.peers(host))
                table.add_row(host.name, host.address, vm_address(host.index), ", ".join(peers))
            console.print(table)
            with console.status("ping every VM from every VM"):
                results = lab.all_pairs()
            grid = Table("from \\ to", *(f"vm{h.index}" for h in lab.members), title="ping")
            for a in lab.members:
                cells = [
                    "-"
                    if a is b
                    else ("[green]ok[/]" if results[a.index, b.index] else "[red]no[/]")
                    for b in lab.members
                ]
                grid.add_row(f"vm{a.index}", *cells)
            console.print(grid)
            ok = all(results.values())
        finally:
            with console.status("tearing down"):
                codes = lab.stop_endpoints()
                lab.close()
        if any(codes):
            console.print(f"[red]an endpoint exited with status {codes}[/]")
            ok = False
    except LabError as exc:
        console.print(f"[red]sclp demo failed:[/] {exc}")
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; lab removed[/]")
        return 130
    console.print("[green]demo OK[/]: lab removed" if ok else "[red]demo FAILED[/]")
    return 0 if ok else 1

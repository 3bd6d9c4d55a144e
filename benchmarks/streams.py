"""Does a second worker have anything to gain here?  1, 2 and 4 parallel iperf3
streams through each tunnel, with the endpoints' CPU and the whole machine's.

The endpoint is one Python process with one loop.  Spreading flows over workers
(a multi-queue TAP, ``IFF_MULTI_QUEUE``, one queue per worker) only pays when there is
idle CPU for the extra workers.  This script measures, on the machine at hand, how
the throughput of the two-VM testbed (:class:`sclp.lab.testbed.Testbed`) moves with
``iperf3 -P N`` and how busy the machine's CPUs are meanwhile (``/proc/stat``): if
the CPUs are already saturated with one stream, more workers cannot help here, and the
figure says what the endpoints cost per GB instead.  Figures for the machine at hand,
never thresholds.  Needs root (namespaces).

    sudo python benchmarks/streams.py                       # a table
    sudo python benchmarks/streams.py --json FILE --seconds 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from sclp.lab.testbed import Testbed

CONFIGS = {
    "kernel-vxlan": ("kernel-vxlan", "ip"),
    "vxlan": ("vxlan", "ip"),
    "vxlan-sclp/ip": ("vxlan-sclp", "ip"),
    "vxlan-sclp/udp": ("vxlan-sclp", "udp"),
}


def _cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(name: str, streams: int, seconds: float) -> dict[str, Any]:
    protocol, carrier = CONFIGS[name]
    with Testbed(protocol=protocol, carrier=carrier) as tb:
        pids = [p.pid for p in tb.endpoints]
        cpu0 = sum(_process_cpu(p) for p in pids)
        busy0, total0 = _cpu_busy()
        t0 = time.monotonic()
        report = tb.iperf3(seconds=seconds, extra=["-P", str(streams)])
        wall = time.monotonic() - t0
        busy1, total1 = _cpu_busy()
        cpu1 = sum(_process_cpu(p) for p in pids)
    received = report["end"]["sum_received"]
    gigabytes = received["bytes"] / 1e9
    return {
        "config": name,
        "streams": streams,
        "gbps": received["bits_per_second"] / 1e9,
        "endpoint_cpu_s_per_gb": (cpu1 - cpu0) / gigabytes if pids else None,
        "endpoint_cpu_percent": 100 * (cpu1 - cpu0) / wall if pids else None,
        "machine_busy_percent": 100 * (busy1 - busy0) / max(1, total1 - total0),
        "cpus": os.cpu_count(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma list")
    parser.add_argument("--streams", default="1,2,4", help="comma list of -P values")
    parser.add_argument("--seconds", type=float, default=6.0, help="per iperf3 run")
    parser.add_argument("--json", metavar="FILE", help="write the rows as JSON")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("streams.py needs root (network namespaces); run it with sudo", file=sys.stderr)
        return 1
    rows = []
    for name in args.configs.split(","):
        if name not in CONFIGS:
            print(f"unknown config {name!r}; choose from {', '.join(CONFIGS)}", file=sys.stderr)
            return 2
        for streams in (int(s) for s in args.streams.split(",")):
            row = measure(name, streams, args.seconds)
            rows.append(row)
            cpu = row["endpoint_cpu_percent"]
            print(
                f"{name:16} -P {streams}: {row['gbps']:6.2f} Gbit/s, "
                f"endpoints {'-' if cpu is None else f'{cpu:5.0f} %'} CPU, "
                f"machine {row['machine_busy_percent']:5.1f} % busy of {row['cpus']} CPUs",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

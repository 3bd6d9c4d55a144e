"""Endpoint cost of the Prometheus exporter: vxlan-sclp/udp testbeds, 6 s iperf3 runs,
alternating without and with ``[metrics]`` (scraped every INTERVAL seconds when on,
default 0.25), three pairs; prints each run and the medians.  Run as root:
``.venv/bin/python benchmarks/metrics_overhead.py [INTERVAL]``."""

from __future__ import annotations

import statistics
import sys
import threading

from sclp.lab.bench.machine import process_cpu_seconds
from sclp.lab.testbed import Testbed

PORT = 9723
INTERVAL = float(sys.argv[1]) if len(sys.argv) > 1 else 0.25
SCRAPER = (
    "import time, urllib.request\n"
    f"for _ in range({int(7 / INTERVAL)}):\n"
    f"    urllib.request.urlopen('http://127.0.0.1:{PORT}/metrics', timeout=5).read()\n"
    f"    time.sleep({INTERVAL})\n"
)


def one_run(metrics: bool) -> tuple[float, float]:
    """(Gbit/s, endpoint CPU seconds per GB received) of one iperf3 run."""
    extra = f'[metrics]\nlisten = "127.0.0.1:{PORT}"\n' if metrics else ""
    tb = Testbed(protocol="vxlan-sclp", carrier="udp", extra_config=extra)
    tb.build()
    try:
        scraper = None
        if metrics:
            host = tb.hosts[0]
            scraper = threading.Thread(
                target=tb.run_in,
                args=(host, [sys.executable, "-c", SCRAPER]),
                kwargs={"timeout": 30},
            )
        cpu_before = sum(process_cpu_seconds(p.pid) for p in tb.endpoints)
        if scraper is not None:
            scraper.start()
        report = tb.iperf3(seconds=6)
        cpu = sum(process_cpu_seconds(p.pid) for p in tb.endpoints) - cpu_before
        if scraper is not None:
            scraper.join()
        received = report["end"]["sum_received"]
        return received["bits_per_second"] / 1e9, cpu / (received["bytes"] / 1e9)
    finally:
        tb.stop_endpoints()
        tb.close()


def main() -> None:
    runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(3):
        for metrics in (False, True):
            runs[metrics].append(one_run(metrics))
            gbps, cpu = runs[metrics][-1]
            print(f"metrics {'on ' if metrics else 'off'}: {gbps:.3f} Gbit/s, {cpu:.2f} CPU s/GB")
    for metrics, results in runs.items():
        gbps = statistics.median(g for g, _ in results)
        cpu = statistics.median(c for _, c in results)
        print(
            f"median metrics {'on ' if metrics else 'off'}: {gbps:.3f} Gbit/s, {cpu:.2f} CPU s/GB"
        )
    pairs = [on[0] / off[0] for on, off in zip(runs[True], runs[False], strict=True)]
    print("on/off per pair:", ", ".join(f"{r:.2f}" for r in pairs))


if __name__ == "__main__":
    main()

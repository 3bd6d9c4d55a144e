"""Soak: the chaos test's disturbances (sclp.lab.chaos) at a low rate for a long time.

A paced TCP transfer (``--rate`` bytes/s) runs from VM 1 to VM 2 of a testbed for
``--duration`` seconds (default 30 minutes) while, every ``--every`` seconds on
average (drawn from ``--seed``), one disturbance happens: SIGHUP (unchanged, a peer
added or removed, a network added or removed), a port attached and detached, the
underlay link down for a second, the receiving endpoint restarted, a burst of
spoofed-peer or non-peer packets; ``stats`` and ``show ...`` are queried fifty times a
second throughout.  Reports, as a table and with ``--json FILE`` as JSON: the
throughput received per ``--window`` seconds, both endpoints' RSS over time, every
counter that moved (per endpoint; endpoint 2's since its last restart), the
disturbances, and whether the transfer arrived byte-exact.  Run as root::

    sudo .venv/bin/python benchmarks/soak.py --duration 180 --protocol vxlan-sclp
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import threading
import time
from typing import Any

from sclp.lab.chaos import Chaos, ChaosTestbed, Querier, Transfer, leftovers, log_problems, rss_kib

DISTURBANCES = (
    "sighup_unchanged",
    "sighup_peer",
    "sighup_network",
    "attach_detach",
    "link_flap",
    "restart_receiver",
    "spoofed_burst",
    "non_peer_burst",
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=1800.0, help="seconds (default 1800)")
    ap.add_argument("--protocol", default="vxlan-sclp")
    ap.add_argument("--carrier", default="udp", choices=("ip", "udp"))
    ap.add_argument("--rate", type=float, default=5e6, help="transfer pace, bytes/s")
    ap.add_argument("--every", type=float, default=10.0, help="mean seconds between disturbances")
    ap.add_argument("--window", type=float, default=10.0, help="throughput window, seconds")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--json", default=None, help="write the report here")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    rng = random.Random(seed)
    print(f"soak: {args.protocol}/{args.carrier}, {args.duration:g} s, seed {seed}", flush=True)

    tb = ChaosTestbed(protocol=args.protocol, carrier=args.carrier)
    report: dict[str, Any] = {"seed": seed, "args": vars(args)}
    try:
        with tb:
            chaos = Chaos(tb, rng, args.protocol, args.carrier, log=lambda s: print(s, flush=True))
            rss: list[tuple[float, int, int]] = []
            stop = threading.Event()
            t0 = time.monotonic()

            def sample_rss() -> None:
                while not stop.wait(5.0):
                    with contextlib.suppress(OSError, ValueError):  # endpoint 2 restarting
                        pids = [p.pid for p in tb.endpoints]
                        t = round(time.monotonic() - t0, 1)
                        rss.append((t, rss_kib(pids[0]), rss_kib(pids[1])))

            sampler = threading.Thread(target=sample_rss, daemon=True)
            querier = Querier(chaos.sockets())
            transfer = Transfer(int(args.rate * args.duration), args.rate, *tb.vms)
            querier.start()
            sampler.start()
            try:
                todo: list[str] = []
                while time.monotonic() - t0 < args.duration - args.every:
                    time.sleep(rng.expovariate(1.0 / args.every))  # the next moment
                    if not todo:  # every kind once per round, in a seeded order
                        todo = rng.sample(DISTURBANCES, len(DISTURBANCES))
                    name = todo.pop()
                    if name == "sighup_peer":
                        chaos.sighup_peer(not chaos._extra_peer)
                    elif name == "sighup_network":
                        chaos.sighup_network(not chaos._extra_network)
                    else:
                        chaos.do(name)
                sent, received = transfer.wait(timeout=args.duration + 300)
            finally:
                stop.set()
                querier.stop()
                transfer.close()
            logs = [tb.logs(0), tb.logs(1)]
        report.update(
            byte_exact=received == sent,
            sent_bytes=sent[0],
            disturbances=[e.what for e in chaos.events],
            throughput_mbit=_windows(transfer.progress, t0, args.window),
            rss_kib=rss,
            counters_moved={
                str(i + 1): {
                    k: querier.latest[i][k] - querier.first[i].get(k, 0)
                    for k in sorted(querier.latest[i])
                    if querier.latest[i][k] != querier.first[i].get(k, 0)
                }
                for i in querier.latest
            },
            counters_backwards=querier.backwards,
            queries=querier.answers,
            query_errors=querier.errors,
            log_problems=[log_problems(text) for text in logs],
        )
    finally:
        tb.close()
    report["leftovers"] = leftovers(tb)
    _print(report)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=1)
    ok = report.get("byte_exact") and not report["leftovers"] and not report["counters_backwards"]
    return 0 if ok else 1


def _windows(progress: list[tuple[float, int]], t0: float, window: float) -> list[list[float]]:
    """[seconds from the start, Mbit/s received in the window ending then]."""
    out: list[list[float]] = []
    last_t, last_n = t0, 0
    for t, n in progress:
        if t - last_t >= window:
            out.append([round(t - t0, 1), round((n - last_n) * 8 / (t - last_t) / 1e6, 2)])
            last_t, last_n = t, n
    return out


def _print(report: dict[str, Any]) -> None:
    print(f"\nbyte-exact: {report.get('byte_exact')}, sent {report.get('sent_bytes')} bytes")
    print(f"disturbances: {len(report.get('disturbances', []))}")
    tp = [mbit for _, mbit in report.get("throughput_mbit", [])]
    if tp:
        print(f"throughput Mbit/s per window: min {min(tp)} max {max(tp)}; {tp}")
    rss = report.get("rss_kib", [])
    if rss:
        print(f"RSS KiB endpoint 1: {rss[0][1]} -> {rss[-1][1]} (max {max(r[1] for r in rss)})")
        print(f"RSS KiB endpoint 2: {rss[0][2]} -> {rss[-1][2]} (max {max(r[2] for r in rss)})")
    for ep, moved in report.get("counters_moved", {}).items():
        print(f"counters moved, endpoint {ep}: {moved}")
    print(f"queries {report.get('queries')}, without answer {report.get('query_errors')}")
    print(f"counters backwards: {report.get('counters_backwards')}")
    print(f"log problems: {report.get('log_problems')}; leftovers: {report['leftovers']}")


if __name__ == "__main__":
    sys.exit(main())

"""How the cluster grows: N endpoints that find each other through etcd
(:class:`sclp.lab.cluster.ClusterLab`), for several N, each in a fresh lab.

For every N the script

1. starts N hosts (one after the other, each once the previous answers on its control
   socket, as a rolling start; ``--start parallel``: all at once) and times the full
   mesh (every endpoint has every other as a peer on VNI 42) from the first host's
   start and from the last's;
2. pings around a ring (VM *i* to VM *i + 1*), so that every endpoint learns its VM's
   MAC and publishes it, and waits for the N MAC keys in etcd;
3. reads what the registry costs etcd (keys under the prefix, the bytes of their keys
   and values, the backend's db size) and, over a quiet 10 s window, every endpoint's
   RSS (VmRSS) and CPU (utime + stime from /proc/<pid>/stat, per second of window),
   etcd's own, and the gRPC messages etcd received and sent (its /metrics);
4. starts one more host and times until all N + 1 have each other (and until its
   member key is in etcd);
5. kills one host with SIGKILL and times until its lease expired in etcd and until no
   endpoint has it as a peer any more; the bound is the lease TTL, the slack what went
   beyond it (negative: earlier; the lease was last refreshed up to TTL/3 before the
   kill).

Convergence is polled over the control sockets (eight at a time); a host counts as
converged at the first poll that finds its peer set complete (peer sets only grow
during a start or a join, only shrink after a death), and the whole mesh is checked
once more at the end.  The poll resolution (the longest sweep) is reported.  Every
wait has a deadline; the lab is a context manager, so namespaces, endpoints and etcd
go on any error, SIGINT or SIGTERM.

Figures travel with their machine: on a 2-core machine the N endpoints, etcd and this
script share the cores (the load average before and after each N is in the JSON).
All hosts also share one kernel, whose IPv4 neighbour table is shared by every
namespace (``net.ipv4.neigh.default.gc_thresh3``, 1024 entries by default): N hosts
on one underlay that all talk to each other need about N × (N − 1) entries, so from
N ≈ 32 on, sends to new neighbours fail (ENOBUFS, which a UDP socket swallows: the
datagram is lost, the send "succeeded") and a ring ping's first ARP may go
unanswered.  How often the table was full during each N is reported next to the
pings.  Needs root.

    sudo .venv/bin/python benchmarks/cluster_scale.py --hosts 4,8,16,32 --json scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from sclp.cluster.agent import VIEW_INTERVAL
from sclp.cluster.model import Member, build_view, encode_macs, macs_key, member_key
from sclp.lab.cluster import VNI, ClusterLab, Host, LabError

CLOCK_TICK = os.sysconf("SC_CLK_TCK")
IDLE_WINDOW = 10.0  # seconds of quiet over which CPU is measured
POLL = 0.05  # seconds between convergence sweeps
PREFIX = "/sclp"  # the lab's endpoints register under the default prefix
MEMBERS = f"{PREFIX}/members/"
SWEEP_WORKERS = 8  # control sockets asked at once: a busy endpoint delays only its own answer


# -- /proc ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK  # utime, stime


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def neighbour_table() -> dict[str, int]:
    """The kernel's IPv4 neighbour (ARP) table, which every network namespace shares:
    its ``entries`` now and how often it was full (``table_fulls``, summed over CPUs).
    A full table makes a send to a new neighbour fail with ENOBUFS, which a UDP socket
    without IP_RECVERR swallows (the datagram is gone, the send "succeeded")."""
    lines = Path("/proc/net/stat/arp_cache").read_text().split("\n")
    header = lines[0].split()
    rows = [[int(x, 16) for x in line.split()] for line in lines[1:] if line.strip()]
    fulls = header.index("table_fulls")
    return {"entries": rows[0][0], "table_fulls": sum(r[fulls] for r in rows)}


# -- etcd's gRPC counters ------------------------------------------------------------------

_GRPC_MSG = re.compile(
    r'^grpc_server_msg_(received|sent)_total\{[^}]*grpc_method="(\w+)"[^}]*\} (\S+)$', re.M
)


def grpc_messages(lab: ClusterLab) -> dict[str, float]:
    """etcd's gRPC messages so far, ``"received:Method"`` / ``"sent:Method"`` -> count
    (the JSON gateway turns every request into gRPC inside etcd); empty if unreadable."""
    text = lab.etcd_get(0, "/metrics") or ""
    counts: dict[str, float] = {}
    for direction, method, value in _GRPC_MSG.findall(text):
        key = f"{direction}:{method}"
        counts[key] = counts.get(key, 0.0) + float(value)
    return counts


def rates(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    keys = sorted(set(before) | set(after))
    out = {k: (after.get(k, 0.0) - before.get(k, 0.0)) / seconds for k in keys}
    return {k: round(v, 2) for k, v in out.items() if v > 0}


# -- convergence ---------------------------------------------------------------------------


def converge(
    lab: ClusterLab,
    expected: Callable[[Host], set[str]],
    timeout: float,
    etcd_done: Callable[[int], bool] | None = None,
) -> dict[str, float]:
    """Poll until every live host's peers equal ``expected(host)``.  Returns the
    monotonic time at which the last host got there (``done_at``), when ``etcd_done``
    first held for the number of member keys in etcd (``etcd_at``, if given) and the
    longest sweep (``resolution_s``).  Raises LabError at ``timeout`` or when an endpoint exits."""
    start = time.monotonic()
    pending = list(lab.alive())
    done_at, etcd_at, resolution = start, 0.0, 0.0

    def ask(host: Host) -> tuple[Host, bool, float]:
        complete = lab.peers(host) == expected(host)
        return host, complete, time.monotonic()

    with ThreadPoolExecutor(max_workers=SWEEP_WORKERS) as pool:
        while pending or (etcd_done is not None and not etcd_at):
            sweep = time.monotonic()
            if etcd_done is not None and not etcd_at:
                try:
                    if etcd_done(lab.etcd_count(MEMBERS)):
                        etcd_at = time.monotonic()
                except LabError:
                    pass
            still = []
            for host, complete, at in pool.map(ask, pending):
                if host.proc is not None and host.proc.poll() is not None:
                    raise LabError(f"endpoint {host.name} exited: {lab.log_tail(host)}")
                if complete:
                    done_at = max(done_at, at)
                else:
                    still.append(host)
            pending = still
            resolution = max(resolution, time.monotonic() - sweep)
            if time.monotonic() - start > timeout:
                detail = {h.name: len(lab.peers(h)) for h in pending[:8]}
                raise LabError(
                    f"not converged within {timeout:.0f} s: {len(pending)} hosts short, "
                    f"peer counts {detail}; etcd {'done' if etcd_at else 'not done'}"
                )
            time.sleep(POLL)
    if not lab.converged():
        raise LabError("peer sets changed again after converging")
    return {"done_at": done_at, "etcd_at": etcd_at, "resolution_s": resolution}


def others(lab: ClusterLab) -> Callable[[Host], set[str]]:
    addresses = {h.address for h in lab.alive()}
    return lambda host: addresses - {host.address}


# -- one N ---------------------------------------------------------------------------------


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "max": max(values)} if values else {}


def start_hosts(lab: ClusterLab, n: int, parallel: bool, timeout: float) -> list[Host]:
    deadline = time.monotonic() + timeout
    if parallel:
        hosts = [lab.prepare_host() for _ in range(n)]
        for host in hosts:
            lab.spawn(host)
        for host in hosts:
            lab.wait_up(host, max(0.0, deadline - time.monotonic()))
        return hosts
    hosts = []
    for _ in range(n):
        host = lab.prepare_host()
        lab.start(host, max(1.0, deadline - time.monotonic()))
        hosts.append(host)
    return hosts


def ring_ping(lab: ClusterLab, hosts: list[Host]) -> tuple[int, int]:
    """VM i pings VM i+1 (a few in parallel); the pairs that got no answer are tried
    once more with a longer wait (a loaded machine).  Returns how many pairs answered
    the first time and in the end."""
    pairs = [(hosts[i], hosts[(i + 1) % len(hosts)]) for i in range(len(hosts))]
    with ThreadPoolExecutor(max_workers=8) as pool:
        first = list(pool.map(lambda ab: lab.ping(ab[0], ab[1], count=2, wait=2.0), pairs))
        missed = [ab for ab, ok in zip(pairs, first, strict=True) if not ok]
        again = list(pool.map(lambda ab: lab.ping(ab[0], ab[1], count=3, wait=5.0), missed))
    return sum(first), sum(first) + sum(again)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise LabError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - start


def idle_window(lab: ClusterLab, hosts: list[Host]) -> dict[str, Any]:
    """RSS now and CPU per second over a quiet window, of every endpoint and etcd."""
    pids = {h.name: h.proc.pid for h in hosts if h.proc is not None}
    etcd_pid = lab.etcds[0].pid
    grpc0 = grpc_messages(lab)
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    etcd_cpu0, t0 = cpu_seconds(etcd_pid), time.monotonic()
    time.sleep(IDLE_WINDOW)
    cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    etcd_cpu1, t1 = cpu_seconds(etcd_pid), time.monotonic()
    grpc1 = grpc_messages(lab)
    seconds = t1 - t0
    cpu = [(cpu1[name] - cpu0[name]) / seconds for name in pids]
    rss = [float(rss_bytes(pid)) for pid in pids.values()]
    return {
        "window_s": round(seconds, 2),
        "endpoint_rss_bytes": summary(rss),
        "endpoint_cpu_per_s": {k: round(v, 5) for k, v in summary(cpu).items()},
        "etcd_rss_bytes": rss_bytes(etcd_pid),
        "etcd_cpu_per_s": round((etcd_cpu1 - etcd_cpu0) / seconds, 5),
        "etcd_grpc_msgs_per_s": rates(grpc0, grpc1, seconds),
    }


def measure(n: int, ttl: int, parallel: bool) -> dict[str, Any]:
    result: dict[str, Any] = {
        "loadavg_before": os.getloadavg(),
        "hosts": n,
        "lease_ttl_s": ttl,
        "start": "parallel" if parallel else "rolling",
    }
    startup_timeout = 30.0 + 3.0 * n
    neigh0 = neighbour_table()
    with ClusterLab(hosts=0, lease_ttl=ttl) as lab:
        hosts = start_hosts(lab, n, parallel, startup_timeout)
        up_at = time.monotonic()
        first, last = hosts[0].spawned_at, hosts[-1].spawned_at
        mesh = converge(lab, others(lab), startup_timeout, etcd_done=lambda u: u == n)
        result["start_s"] = round(up_at - first, 3)
        result["mesh_from_first_s"] = round(mesh["done_at"] - first, 3)
        result["mesh_from_last_s"] = round(mesh["done_at"] - last, 3)
        result["mesh_poll_resolution_s"] = round(mesh["resolution_s"], 3)

        result["ring_pings_ok"], result["ring_pings_ok_after_retry"] = ring_ping(lab, hosts)
        result["macs_wait_s"] = round(
            wait_for(lambda: lab.etcd_usage()["macs"] >= n, 20.0, f"{n} MAC keys in etcd"), 3
        )
        time.sleep(2.0)  # let the pings' and MAC writes' echoes die down
        result["etcd"] = lab.etcd_usage()
        result["idle"] = idle_window(lab, hosts)
        result["neighbour_entries_idle"] = neighbour_table()["entries"]

        joiner = lab.prepare_host()
        lab.spawn(joiner)
        join = converge(lab, others(lab), 60.0, etcd_done=lambda u: u == n + 1)
        result["join_s"] = round(join["done_at"] - joiner.spawned_at, 3)
        result["join_registered_s"] = round(join["etcd_at"] - joiner.spawned_at, 3)
        result["join_poll_resolution_s"] = round(join["resolution_s"], 3)

        victim = hosts[n // 2]
        killed_at = time.monotonic()
        lab.kill(victim)
        death = converge(lab, others(lab), ttl + 30.0, etcd_done=lambda u: u == n)
        result["death_s"] = round(death["done_at"] - killed_at, 3)
        result["death_lease_expired_s"] = round(death["etcd_at"] - killed_at, 3)
        result["death_slack_s"] = round(death["done_at"] - killed_at - ttl, 3)
        result["death_poll_resolution_s"] = round(death["resolution_s"], 3)
        result["loadavg_after"] = os.getloadavg()
        result["neighbour_table_fulls"] = neighbour_table()["table_fulls"] - neigh0["table_fulls"]
    return result


# -- the endpoint's share of a change, in memory ------------------------------------------


def view_cost(n: int, macs_per_host: int, repeat: int = 5) -> dict[str, float]:
    """Seconds one endpoint spends in :func:`build_view` over a registry of ``n``
    members on VNI 42 with ``macs_per_host`` MACs each (the agent rebuilds the whole
    view after every change it hears, coalesced to one per 0.1 s): best of ``repeat``."""
    members = [
        Member(
            f"h{i}",
            f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
            "udp",
            7234,
            {VNI: "vxlan-sclp"},
        )
        for i in range(n)
    ]
    kvs: dict[str, tuple[bytes, int]] = {}
    for i, member in enumerate(members):
        kvs[member_key(PREFIX, member.name)] = (member.to_json(), 2 * i + 1)
        macs = [
            bytes([2, 0, i >> 16 & 255, i >> 8 & 255, i & 255, k]) for k in range(macs_per_host)
        ]
        kvs[macs_key(PREFIX, VNI, member.name)] = (encode_macs(macs), 2 * i + 2)
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        view = build_view(PREFIX, kvs, 2 * n, members[0])
        best = min(best, time.perf_counter() - began)
    assert len(view.peers[VNI]) == n - 1
    return {
        "members": n,
        "macs_per_host": macs_per_host,
        "keys": len(kvs),
        "value_bytes": sum(len(v) for v, _ in kvs.values()),
        "build_view_s": best,
    }


# -- report --------------------------------------------------------------------------------


def mib(value: float) -> str:
    return f"{value / 2**20:.1f}"


def print_table(results: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="sclp cluster: how it grows (seconds, MiB, CPU %)")
    columns = [
        "N",
        "mesh\nfrom first",
        "mesh\nfrom last",
        "join",
        "join after\nregistered",
        "death\n(TTL)",
        "slack",
        "death after\nexpiry",
        "etcd\nkeys",
        "value\nbytes",
        "db\nMiB",
        "RSS\nmed/max",
        "idle CPU %\nmed/max",
        "etcd\nCPU %",
        "etcd\nmsgs/s",
        "ring\npings",
        "ARP table\nfull",
    ]
    for column in columns:
        table.add_column(column, justify="right")
    for r in results:
        if "error" in r:
            table.add_row(str(r["hosts"]), f"[red]{r['error'][:60]}", *[""] * (len(columns) - 2))
            continue
        idle, etcd = r["idle"], r["etcd"]
        rss, cpu = idle["endpoint_rss_bytes"], idle["endpoint_cpu_per_s"]
        msgs = idle["etcd_grpc_msgs_per_s"]
        table.add_row(
            str(r["hosts"]),
            f"{r['mesh_from_first_s']:.2f}",
            f"{r['mesh_from_last_s']:.2f}",
            f"{r['join_s']:.2f}",
            f"{r['join_s'] - r['join_registered_s']:.2f}",
            f"{r['death_s']:.2f} ({r['lease_ttl_s']})",
            f"{r['death_slack_s']:+.2f}",
            f"{r['death_s'] - r['death_lease_expired_s']:.2f}",
            str(etcd["keys"]),
            str(etcd["value_bytes"]),
            mib(etcd["db_size"]),
            f"{mib(rss['median'])}/{mib(rss['max'])}",
            f"{100 * cpu['median']:.2f}/{100 * cpu['max']:.2f}",
            f"{100 * idle['etcd_cpu_per_s']:.2f}",
            f"{sum(v for k, v in msgs.items() if k.startswith('received')):.1f} in / "
            f"{sum(v for k, v in msgs.items() if k.startswith('sent')):.1f} out",
            f"{r['ring_pings_ok']}→{r.get('ring_pings_ok_after_retry', '-')}/{r['hosts']}",
            str(r.get("neighbour_table_fulls", "-")),
        )
    Console(width=max(Console().width, 200)).print(table)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the lab's clean-up runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


VIEW_SIZES = ((4, 1), (8, 1), (16, 1), (32, 1), (100, 1), (1000, 1), (1000, 16))


def print_view_costs(costs: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="one endpoint's build_view per change heard (in memory)")
    for column in ("members", "MACs/host", "keys", "value bytes", "build_view ms", "CPU at 10/s"):
        table.add_column(column, justify="right")
    for c in costs:
        table.add_row(
            str(c["members"]),
            str(c["macs_per_host"]),
            str(c["keys"]),
            str(c["value_bytes"]),
            f"{1000 * c['build_view_s']:.2f}",
            f"{100 * c['build_view_s'] / VIEW_INTERVAL:.1f} %",
        )
    Console(width=max(Console().width, 100)).print(table)


def plot(results: list[dict[str, Any]], path: str) -> None:
    """Two panels over N: convergence times; per-host RSS and idle CPU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if "error" not in r]
    if not ok:
        return
    ns = [r["hosts"] for r in ok]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for key, label in (
        ("mesh_from_first_s", "full mesh, from the first start"),
        ("mesh_from_last_s", "full mesh, from the last start"),
        ("join_s", "one more host joins (from its start)"),
        ("death_s", "one host SIGKILLed (gone everywhere)"),
    ):
        left.plot(ns, [r[key] for r in ok], marker="o", label=label)
    left.axhline(ok[0]["lease_ttl_s"], color="grey", linestyle=":", label="lease TTL")
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xticks(ns, [str(n) for n in ns])
    left.set_xlabel("hosts")
    left.set_ylabel("seconds")
    left.legend(fontsize=7)
    left.set_title("convergence", fontsize=9)
    idle = [r["idle"] for r in ok]
    rss = [i["endpoint_rss_bytes"]["median"] / 2**20 for i in idle]
    etcd_rss = [i["etcd_rss_bytes"] / 2**20 for i in idle]
    cpu = [100 * i["endpoint_cpu_per_s"]["median"] for i in idle]
    etcd_cpu = [100 * i["etcd_cpu_per_s"] for i in idle]
    right.plot(ns, rss, marker="o", color="tab:blue", label="endpoint RSS (median)")
    right.plot(ns, etcd_rss, marker="o", color="tab:cyan", label="etcd RSS")
    right.set_xscale("log", base=2)
    right.set_xticks(ns, [str(n) for n in ns])
    right.set_xlabel("hosts")
    right.set_ylabel("MiB (circles)")
    right.set_ylim(0, max(rss + etcd_rss) * 1.4)
    twin = right.twinx()
    twin.plot(ns, cpu, marker="s", color="tab:red", label="endpoint CPU (median)")
    twin.plot(ns, etcd_cpu, marker="s", color="tab:orange", label="etcd CPU")
    twin.set_ylabel("% of a core (squares)")
    twin.set_ylim(0, max(cpu + etcd_cpu) * 1.4 or 1)
    lines = right.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    right.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper left")
    right.set_title("idle, 10 s window", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--hosts", default="4,8,16,32", help="comma-separated N (default %(default)s)"
    )
    parser.add_argument("--ttl", type=int, default=5, help="lease TTL in seconds (default 5)")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="draw the curves (needs sclp[plot])")
    parser.add_argument(
        "--load", metavar="FILE", help="report a JSON file written before; run nothing"
    )
    parser.add_argument(
        "--start",
        choices=("rolling", "parallel"),
        default="rolling",
        help="start hosts one after the other (default) or all at once",
    )
    args = parser.parse_args()
    if args.load:
        payload = json.loads(Path(args.load).read_text())
        print_table(payload["results"])
        if payload.get("view_cost"):
            print_view_costs(payload["view_cost"])
        if args.plot:
            plot(payload["results"], args.plot)
        return 0
    sizes = [int(x) for x in args.hosts.split(",") if x.strip()]
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    results: list[dict[str, Any]] = []
    meta = {
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "vni": VNI,
        "start": args.start,
    }
    costs = [view_cost(n, m) for n, m in VIEW_SIZES]
    payload = {"meta": meta, "results": results, "view_cost": costs}
    with sigterm_as_interrupt():
        for n in sizes:
            began = time.monotonic()
            print(f"N={n}: starting ...", file=sys.stderr, flush=True)
            try:
                result = measure(n, args.ttl, args.start == "parallel")
            except LabError as exc:
                result = {"hosts": n, "lease_ttl_s": args.ttl, "error": str(exc)}
            result["wall_s"] = round(time.monotonic() - began, 1)
            print(f"N={n}: {json.dumps(result)}", file=sys.stderr, flush=True)
            results.append(result)
            if args.json:  # after every N, so a long run leaves what it measured
                Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    print_table(results)
    print_view_costs(costs)
    if args.plot:
        plot(results, args.plot)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

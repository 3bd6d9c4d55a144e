# ruff: noqa: B007, B023  (each lambda is called by wait_for at once, inside its loop)
"""Measures the failure behaviour quoted in docs/cluster.md (not a test; a few
minutes): ``python -m tests.cluster.measure`` from the checkout, with etcd-server
installed.  Uses the fixtures of tests/cluster: etcd on loopback with a 1 s
progress-notify interval, agents in this process with a 4 s watch timeout."""

import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.cluster.conftest import Agents, EtcdCluster, wait_for


def med(xs):
    return (
        f"median {statistics.median(xs):.2f} s (min {min(xs):.2f}, max {max(xs):.2f}, n={len(xs)})"
    )


root = Path(tempfile.mkdtemp())
res = {}
c = EtcdCluster(root / "one", 1)
c.start()
e = c.members[0]
ag = Agents()
try:
    for i in range(3):
        ag.add([e.url], f"h{i}", f"10.0.0.{i + 1}", ttl=10)
    for i in range(3):
        wait_for(lambda n=f"h{i}": len(ag.members(n)) == 3, 5, "mesh")
    appear = []
    for k in range(8):
        t = time.monotonic()
        ag.add([e.url], f"x{k}", f"10.0.1.{k + 1}", ttl=10)
        for i in range(3):
            wait_for(lambda n=f"h{i}", k=k: f"x{k}" in ag.members(n), 5, "appear")
        appear.append(time.monotonic() - t)
        ag.agents[f"x{k}"].stop()
        for i in range(3):
            wait_for(lambda n=f"h{i}", k=k: f"x{k}" not in ag.members(n), 5, "gone")
    res["appear (3 watchers)"] = med(appear)
    for ttl in (3, 10):
        vanish = []
        for k in range(4 if ttl == 3 else 3):
            p = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.cluster.agent_process",
                    e.url,
                    "/sclp",
                    str(ttl),
                    f"v{ttl}{k}",
                    f"10.0.2.{k + 1}",
                ],
                cwd=Path(__file__).resolve().parents[2],
                stdout=subprocess.PIPE,
                text=True,
            )
            p.stdout.readline()
            wait_for(lambda: f"v{ttl}{k}" in ag.members("h0"), 5, "victim")
            time.sleep(0.37 * k)  # different phases of the keep-alive
            t = time.monotonic()
            p.send_signal(signal.SIGKILL)
            p.wait()
            wait_for(lambda: f"v{ttl}{k}" not in ag.members("h0"), ttl + 5, "vanish")
            vanish.append(time.monotonic() - t)
            p.stdout.close()
        res[f"vanish after SIGKILL, ttl {ttl}"] = med(vanish)
    rec = []
    healthy_t = []
    for k in range(3):
        e.stop()
        wait_for(lambda: not ag.agents["h0"].status()["connected"], 10, "down")
        time.sleep(2)
        t = time.monotonic()
        e.start()
        wait_for(e.healthy, 20, "healthy")
        h = time.monotonic()
        wait_for(
            lambda: all(ag.agents[f"h{i}"].status()["connected"] for i in range(3)),
            10,
            "reconnected",
        )
        rec.append(time.monotonic() - h)
        healthy_t.append(h - t)
    res["etcd restart: etcd healthy after start"] = med(healthy_t)
    res["etcd restart: all 3 agents reconnected after etcd healthy"] = med(rec)
finally:
    ag.stop_all()
    c.close()

fo = []
fo_seen = []
fr = []
stops = []
for k in range(3):
    c = EtcdCluster(root / f"three{k}", 3)
    c.start()
    ag = Agents()
    try:
        leader = c.leader()
        urls = [leader.url] + [m.url for m in c.members if m is not leader]
        a = ag.add(urls, "a", "10.0.0.1", ttl=10)
        b = ag.add(urls, "b", "10.0.0.2", ttl=10)
        wait_for(lambda: ag.peers("a") == {"10.0.0.2"}, 5, "mesh")
        t = time.monotonic()
        leader.stop(signal.SIGKILL)
        wait_for(
            lambda: all(
                x.status()["connected"] and x.status()["endpoint"] != leader.url for x in (a, b)
            ),
            20,
            "fo",
        )
        fo.append(time.monotonic() - t)
        ag.add(urls[1:], "c", "10.0.0.3", ttl=10)
        wait_for(lambda: ag.peers("a") == {"10.0.0.2", "10.0.0.3"}, 10, "c")
        fo_seen.append(time.monotonic() - t)
    finally:
        t = time.monotonic()
        ag.stop_all()
        stops.append(time.monotonic() - t)
        c.close()
res["stop of 3 agents after the leader died"] = med(stops)
res["leader SIGKILL: both agents connected to another member"] = med(fo)
res["leader SIGKILL: a newcomer seen (from the kill)"] = med(fo_seen)
for k in range(3):
    c = EtcdCluster(root / f"frz{k}", 3)
    c.start()
    ag = Agents()
    try:
        leader = c.leader()
        f = next(m for m in c.members if m is not leader)
        urls = [f.url] + [m.url for m in c.members if m is not f]
        a = ag.add(urls, "a", "10.0.0.1", ttl=10)
        wait_for(lambda: a.status()["connected"] and "a" in ag.members("a"), 5, "a")
        time.sleep(0.5 * k)
        t = time.monotonic()
        f.freeze()
        wait_for(
            lambda: a.status()["connected"] and a.status()["endpoint"] not in (None, f.url),
            30,
            "frozen fo",
        )
        fr.append(time.monotonic() - t)
    finally:
        ag.stop_all()
        c.close()
res["follower SIGSTOP (silent): agent moved to another member"] = med(fr)
shutil.rmtree(root, ignore_errors=True)
for k, v in res.items():
    print(f"{k}: {v}")

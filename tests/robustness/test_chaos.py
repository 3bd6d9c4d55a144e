"""Chaos under load: a byte-exact TCP transfer between the testbed's two VMs keeps
going while everything around the endpoints changes (sclp.lab.chaos): SIGHUP with
the file unchanged, a peer added and removed, a network added and removed; a second
port attached and detached twenty times; the underlay link down for a second, twice;
the receiving endpoint restarted; a burst of spoofed-peer and of non-peer packets;
and ``stats``/``show fdb``/``peers``/``ports`` queried fifty times a second.

Asserted: the transfer completes byte-exact (SHA-256 of what was sent and what
arrived); no traceback or unhandled-error line in any log; each disturbance the
endpoint logs left exactly one line; no counter went backwards (except across the
restart); the sending endpoint's RSS grew by less than 50 MB; nothing of the testbed
is left after.  In cluster mode (one case: vxlan-sclp/udp on the cluster lab) etcd
restarts twice and a third member joins and leaves during the transfer.  The moments
come from ``random.Random(seed)``: the seed is printed and ``SCLP_CHAOS_SEED=N``
replays a run.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import time

import pytest

from sclp.endpoint.control import socket_path
from sclp.io import netns as nsio
from sclp.lab.chaos import Chaos, ChaosTestbed, Querier, Transfer, leftovers, log_problems, rss_kib
from sclp.lab.cluster import ClusterLab, vm_address

pytestmark = [pytest.mark.netns]

WINDOW = 20.0  # seconds over which the disturbances are spread (the suite budget)
RATE = 2_000_000  # bytes/s the transfer is paced at: it outlasts the window
RSS_GROWTH_KIB = 50 * 1024


@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    ("protocol", "carrier"),
    [("vxlan-sclp", "ip"), ("vxlan-sclp", "udp"), ("vxlan", "ip"), ("stt", "ip")],
    ids=["vxlan-sclp-ip", "vxlan-sclp-udp", "vxlan", "stt"],
)
def test_forwarding_survives_chaos_under_load(protocol: str, carrier: str) -> None:
    seed = _seed()
    lines: list[str] = []
    tb = ChaosTestbed(protocol=protocol, carrier=carrier)
    try:
        with tb:
            chaos = Chaos(tb, random.Random(seed), protocol, carrier, log=lines.append)
            schedule = chaos.plan(WINDOW)
            rss_before = rss_kib(tb.endpoints[0].pid)
            querier = Querier(chaos.sockets())
            transfer = Transfer(int(RATE * (WINDOW + 5)), RATE, *tb.vms)
            try:
                querier.start()
                chaos.run(schedule)
                sent, received = transfer.wait(timeout=90)
            except AssertionError as exc:
                raise AssertionError(
                    f"{exc}; seed {seed}; received {transfer.progress[-3:]}\n" + "\n".join(lines)
                ) from None
            finally:
                querier.stop()
                transfer.close()
            rss_after = rss_kib(tb.endpoints[0].pid)
            logs = [tb.logs(0), tb.logs(1)]
        context = f"seed {seed} (SCLP_CHAOS_SEED={seed} replays it)\n" + "\n".join(lines)
        assert received == sent, context
        up = f"endpoint {tb.endpoint_name(1)} up:"
        assert logs[1].count(up) == chaos.restarts + 1, context
        for i, text in enumerate(logs):
            assert not log_problems(text), f"endpoint {i + 1}: {log_problems(text)}\n{context}"
        for event in chaos.events:
            if event.expect is not None:
                count = logs[event.endpoint].count(event.expect)
                assert count == 1, f"{event.what}: {event.expect!r} {count} times\n{context}"
        assert not querier.backwards, f"{querier.backwards[:5]}\n{context}"
        assert querier.answers > 40 * WINDOW, (querier.answers, querier.errors)
        assert rss_after - rss_before < RSS_GROWTH_KIB, (rss_before, rss_after, context)
        assert len(chaos.events) >= 8 + 2 * 20 + 2
    finally:
        tb.close()
    assert not leftovers(tb)


def _seed() -> int:
    return int(os.environ.get("SCLP_CHAOS_SEED") or random.SystemRandom().randrange(1 << 32))


@pytest.mark.timeout(150)
def test_cluster_mode_survives_etcd_restarts_and_members_coming_and_going() -> None:
    """vxlan-sclp/udp with the cluster lab (peers from etcd, none in the files): the
    transfer between two members' VMs goes on while etcd restarts and a third member
    joins and leaves, in a seeded order at seeded moments."""
    if shutil.which("etcd") is None and not os.access("/usr/bin/etcd", os.X_OK):
        pytest.fail("etcd is not installed: apt-get install etcd-server (./quickstart.sh does)")
    seed = _seed()
    rng = random.Random(seed)
    lines: list[str] = []
    lab = ClusterLab(hosts=2, protocol="vxlan-sclp", carrier="udp", lease_ttl=3)
    try:
        with lab:
            a, b = lab.members
            sockets = [socket_path(h.name, lab.control_dir) for h in (a, b)]
            querier = Querier(sockets)
            transfer = Transfer(int(RATE * (WINDOW + 5)), RATE, a.vm, b.vm, vm_address(b.index))
            actions = ["restart_etcd", "restart_etcd", "add_member"]
            rng.shuffle(actions)
            actions.insert(rng.randrange(actions.index("add_member") + 1, 4), "remove_member")
            times = sorted(rng.uniform(0, WINDOW) for _ in actions)
            joined = None
            t0 = time.monotonic()
            try:
                querier.start()
                for at, action in zip(times, actions, strict=True):
                    time.sleep(max(0.0, t0 + at - time.monotonic()))  # the seeded moment
                    lines.append(f"chaos {time.monotonic() - t0:6.2f}s {action}")
                    if action == "restart_etcd":
                        lab.restart_etcd(0)
                    elif action == "add_member":
                        joined = lab.add_host()
                        lab.wait_converged(15.0)
                    else:
                        assert joined is not None and joined.proc is not None
                        joined.proc.send_signal(signal.SIGTERM)
                        joined.proc.wait(timeout=10)
                        lab.wait_converged(15.0)
                sent, received = transfer.wait(timeout=90)
            finally:
                querier.stop()
                transfer.close()
            logs = {h.name: h.log.read_text(errors="replace") for h in lab.members}
            assert lab.converged()
        context = f"seed {seed} (SCLP_CHAOS_SEED={seed} replays it)\n" + "\n".join(lines)
        assert received == sent, context
        for name, text in logs.items():
            assert not log_problems(text), f"{name}: {log_problems(text)}\n{context}"
        assert joined is not None
        for host in (a, b):  # each etcd restart: the agent connects again
            connects = logs[host.name].count("cluster: connected to")
            assert connects >= 1 + actions.count("restart_etcd"), f"{connects}\n{context}"
        for what in ("joined", "left"):
            found = re.findall(rf"peer {re.escape(joined.address)}\b.* {what}", logs[a.name])
            assert len(found) == 1, f"{what}: {found}\n{context}"
        assert not querier.backwards, f"{querier.backwards[:5]}\n{context}"
        assert querier.answers > 40 * WINDOW, (querier.answers, querier.errors)
    finally:
        lab.close()
    assert not lab.namespaces and not [n for n in nsio.list_netns() if lab.tag in n]

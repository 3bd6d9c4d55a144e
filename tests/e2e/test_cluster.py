"""Many hosts without hand-listed peers: real endpoints that find each other through a
real etcd (Debian's etcd-server), in network namespaces (sclp.lab.cluster).

No configuration file has ``peers``; every check waits with a deadline:

- four hosts reach full mesh and all-pairs connectivity; a host added later is reached
  by all within about a second; a host killed with SIGKILL stops being a peer
  everywhere within its lease TTL and a little slack;
- an etcd restart, and a three-member etcd cluster losing its leader, leave the VMs'
  traffic flowing (a ping running across the outage loses nothing) and the state
  reconverging (a host joining or dying afterwards is seen by all);
- a member announcing VNI 42 with another protocol is refused: a log line, a counter,
  never a peer;
- ``sclp stats --json`` carries the cluster section.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from sclp.lab.cluster import ClusterLab, vm_address

from .helpers import wait_for

pytestmark = [pytest.mark.netns]

TTL = 3  # seconds: the lease of every host here
SLACK = 2.0  # seconds on top of the TTL: the issue allows one, the shared CI machine more


@pytest.fixture(autouse=True)
def _etcd_installed() -> None:
    if shutil.which("etcd") is None and not os.access("/usr/bin/etcd", os.X_OK):
        pytest.fail("etcd is not installed: apt-get install etcd-server (./quickstart.sh does)")


@pytest.fixture
def lab() -> Iterator[ClusterLab]:
    with ClusterLab(hosts=4, lease_ttl=TTL) as built:
        yield built
    assert not built.namespaces


def _pinger(lab: ClusterLab, count: int) -> subprocess.Popen[str]:
    src, dst = lab.members[0], lab.members[1]
    return subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            src.vm,
            "ping",
            "-q",
            "-i",
            "0.1",
            "-c",
            str(count),
            vm_address(dst.index),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _no_loss(pinger: subprocess.Popen[str]) -> str:
    try:
        out, _ = pinger.communicate(timeout=60)
    finally:
        if pinger.poll() is None:
            pinger.kill()
            pinger.wait()
    assert pinger.returncode == 0 and " 0% packet loss" in out, out
    return out


@pytest.mark.timeout(150)
def test_hosts_find_each_other_join_later_and_vanish_when_killed(lab: ClusterLab) -> None:
    for host in lab.members:
        assert "peers" not in host.config.read_text()
    results = lab.all_pairs()
    assert all(results.values()), results
    status = lab.members[0].stats(lab.control_dir)["cluster"]
    assert status["connected"] and status["members"] == 4 and status["last_error"] is None

    late = lab.add_host()
    joined = lab.wait_converged(5.0)
    assert joined < 1.5, joined
    assert all(lab.all_pairs([late, *lab.members[:2]]).values())

    victim = lab.members[2]
    lab.kill(victim)
    start = time.monotonic()
    lab.wait_converged(TTL + SLACK + 3)
    gone = time.monotonic() - start
    assert gone <= TTL + SLACK, gone
    log = lab.members[0].log.read_text()
    assert f"vni 42: peer {victim.address} ({victim.name}) left" in log


@pytest.mark.timeout(150)
def test_an_etcd_restart_is_not_an_outage_of_the_data_path(lab: ClusterLab) -> None:
    pinger = _pinger(lab, 80)
    time.sleep(0.5)  # the ping is under way before etcd goes (it runs for 8 s)
    lab.restart_etcd()
    late = lab.add_host()
    lab.wait_converged(10.0)  # the watch resumed: the newcomer is seen by all
    _no_loss(pinger)
    assert all(lab.all_pairs([late, lab.members[0]]).values())
    for host in lab.alive():
        assert host.stats(lab.control_dir)["cluster"]["connected"]


@pytest.mark.timeout(150)
def test_a_three_member_etcd_cluster_losing_its_leader() -> None:
    with ClusterLab(hosts=3, lease_ttl=TTL, etcd_members=3) as lab:
        pinger = _pinger(lab, 80)
        time.sleep(0.5)
        leader = lab.etcd_leader()
        lab.stop_etcd(leader)
        late = lab.add_host(timeout=30)
        lab.wait_converged(10.0)
        lab.kill(lab.members[2])
        lab.wait_converged(TTL + SLACK + 5)
        _no_loss(pinger)
        assert all(lab.all_pairs([late, lab.members[0]]).values())


@pytest.mark.timeout(120)
def test_a_member_with_another_protocol_on_the_vni_is_refused(lab: ClusterLab) -> None:
    rogue = lab.add_host(protocol="vxlan")
    first = lab.members[0]

    def refused() -> bool:
        stats = first.stats(lab.control_dir)
        return stats["counters"].get("cluster_conflicts", 0) >= 1

    wait_for(refused, 5.0, what="the conflict counted")
    assert rogue.address not in lab.peers(first)
    assert lab.peers(rogue) == set()  # it refuses the others just as well
    log = first.log.read_text()
    assert "cluster:" in log and rogue.name in log and "vxlan" in log
    assert not lab.ping(rogue, first, wait=1.0)
    conflicts = first.stats(lab.control_dir)["cluster"]["conflicts_now"]
    assert any(rogue.name in line for line in conflicts), conflicts

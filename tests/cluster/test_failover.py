"""ClusterAgent against a three-member etcd cluster: the leader killed, a member
frozen (SIGSTOP, a silent partition).  The agents fail over and the registry
reconverges; the time each took is printed (docs/cluster.md quotes them)."""

from __future__ import annotations

import signal
import time

import pytest

from tests.cluster.conftest import Agents, EtcdCluster, wait_for


@pytest.mark.timeout(120)
def test_leader_loss(etcd_cluster: EtcdCluster, agents: Agents) -> None:
    leader = etcd_cluster.leader()
    # The agents start at the leader: they must move.
    urls = [leader.url] + [m.url for m in etcd_cluster.members if m is not leader]
    a = agents.add(urls, "a", "10.0.0.1")
    b = agents.add(urls, "b", "10.0.0.2")
    wait_for(lambda: agents.peers("a") == {"10.0.0.2"}, 3, "a sees b")
    assert a.status()["endpoint"] == leader.url
    start = time.monotonic()
    leader.stop(signal.SIGKILL)
    for agent in (a, b):
        wait_for(
            lambda ag=agent: ag.status()["connected"] and ag.status()["endpoint"] != leader.url,
            15,
            "the failover",
        )
    failover = time.monotonic() - start
    assert agents.peers("a") == {"10.0.0.2"}  # nothing lost meanwhile
    # Reconverges: a newcomer (through any surviving URL) is seen, and seen by all.
    agents.add(urls[1:], "c", "10.0.0.3")
    wait_for(lambda: agents.peers("a") == {"10.0.0.2", "10.0.0.3"}, 5, "a sees c")
    wait_for(lambda: agents.peers("c") == {"10.0.0.1", "10.0.0.2"}, 5, "c sees a and b")
    converged = time.monotonic() - start
    print(f"leader killed: agents connected elsewhere after {failover:.2f} s, "
          f"a newcomer seen by all after {converged:.2f} s")  # fmt: skip
    # A death after the failover is still noticed (leases work on the new leader).
    b.abandon()
    wait_for(lambda: agents.peers("a") == {"10.0.0.3"}, 3 + 2, "b gone")


@pytest.mark.timeout(120)
def test_frozen_member_is_left_for_another(etcd_cluster: EtcdCluster, agents: Agents) -> None:
    leader = etcd_cluster.leader()
    follower = next(m for m in etcd_cluster.members if m is not leader)
    urls = [follower.url] + [m.url for m in etcd_cluster.members if m is not follower]
    a = agents.add(urls, "a", "10.0.0.1")
    wait_for(lambda: a.status()["connected"] and "a" in agents.members("a"), 5, "a registered")
    assert a.status()["endpoint"] == follower.url
    lease = a.status()["lease_id"]
    start = time.monotonic()
    follower.freeze()  # accepts nothing, answers nothing, closes nothing
    try:
        wait_for(lambda: a.status()["endpoint"] not in (None, follower.url), 10, "the failover")
        failover = time.monotonic() - start
        agents.add(urls[1:], "b", "10.0.0.2")
        wait_for(lambda: agents.peers("a") == {"10.0.0.2"}, 5, "a sees b")
        print(f"member frozen: agent moved after {failover:.2f} s, "
              f"saw a newcomer after {time.monotonic() - start:.2f} s")  # fmt: skip
        wait_for(lambda: "a" in agents.members("b"), 3, "b sees a")
        assert a.status()["lease_id"] == lease  # the lease survived the move
    finally:
        follower.thaw()

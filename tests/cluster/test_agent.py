"""ClusterAgent against a real etcd: registration, views, MACs, conflicts, leases,
an etcd restart, and a member killed with SIGKILL.  Lease TTL 3 s throughout."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sclp.cluster.etcd import Etcd
from sclp.cluster.model import Member, macs_key, member_key
from tests.cluster.conftest import Agents, EtcdCluster, EtcdMember, free_port, wait_for

MAC1 = bytes.fromhex("020000000001")
MAC2 = bytes.fromhex("020000000002")
ROOT = Path(__file__).resolve().parents[2]
TTL = 3


@pytest.mark.timeout(60)
def test_four_agents_see_each_other_within_a_second(etcd: EtcdMember, agents: Agents) -> None:
    names = ["h1", "h2", "h3", "h4"]
    start = time.monotonic()
    for i, name in enumerate(names):
        agents.add([etcd.url], name, f"10.0.0.{i + 1}")
    for i, name in enumerate(names):
        others = {f"10.0.0.{j + 1}" for j in range(4) if j != i}
        wait_for(lambda n=name, o=others: agents.peers(n) == o, 5, f"{name}'s peers")
    took = time.monotonic() - start
    assert took < 1.5, f"full mesh of 4 took {took:.2f} s"
    status = agents.agents["h1"].status()
    assert status["connected"] and status["endpoint"] == etcd.url
    assert status["members"] == 4 and status["last_error"] is None
    assert status["lease_id"] and status["revision"] > 0 and status["conflicts"] == 0

    # A fifth, added later, is reached by all within about a second.
    start = time.monotonic()
    agents.add([etcd.url], "h5", "10.0.0.5")
    for name in names:
        wait_for(lambda n=name: "10.0.0.5" in agents.peers(n), 3, f"{name} sees h5")
    assert time.monotonic() - start < 1.5

    # A clean stop revokes the lease: gone everywhere at once, not after the TTL.
    start = time.monotonic()
    agents.agents["h5"].stop()
    for name in names:
        wait_for(lambda n=name: "h5" not in agents.members(n), 3, f"{name} drops h5")
    assert time.monotonic() - start < 1.0


@pytest.mark.timeout(60)
def test_no_empty_view_and_no_view_before_the_first_read(etcd: EtcdMember, agents: Agents) -> None:
    a = agents.add([etcd.url], "a", "10.0.0.1")
    wait_for(lambda: "a" in agents.members("a"), 3, "a registered")
    assert all(v.revision > 0 for v in agents.views["a"])
    assert a.view is agents.view("a")


@pytest.mark.timeout(60)
def test_abandoned_agent_vanishes_within_ttl(etcd: EtcdMember, agents: Agents) -> None:
    agents.add([etcd.url], "a", "10.0.0.1")
    b = agents.add([etcd.url], "b", "10.0.0.2")
    wait_for(lambda: agents.peers("a") == {"10.0.0.2"}, 3, "a sees b")
    start = time.monotonic()
    b.abandon()  # no revoke: as if the process died
    took = wait_for(lambda: not agents.peers("a"), TTL + 2, "b to vanish")
    assert took < TTL + 1, f"took {took:.2f} s"
    assert time.monotonic() - start > 1.0  # it really waited for the lease


@pytest.mark.timeout(60)
def test_sigkilled_process_vanishes_within_ttl(etcd: EtcdMember, agents: Agents) -> None:
    agents.add([etcd.url], "a", "10.0.0.1")
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.cluster.agent_process", etcd.url, "/sclp", str(TTL),
         "victim", "10.0.0.9"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "registered"
        wait_for(lambda: agents.peers("a") == {"10.0.0.9"}, 3, "a sees the victim")
        child.send_signal(signal.SIGKILL)
        child.wait(5)
        took = wait_for(lambda: not agents.peers("a"), TTL + 2, "the victim to vanish")
        assert took < TTL + 1, f"took {took:.2f} s"
    finally:
        child.kill()
        child.wait(5)
        if child.stdout:
            child.stdout.close()


@pytest.mark.timeout(60)
def test_macs_are_published_coalesced_and_withdrawn(etcd: EtcdMember, agents: Agents) -> None:
    a = agents.add([etcd.url], "a", "10.0.0.1", {42: "vxlan-sclp", 7: "vxlan"})
    agents.add([etcd.url], "b", "10.0.0.2", {42: "vxlan-sclp", 7: "vxlan"})
    wait_for(lambda: agents.peers("b") == {"10.0.0.1"}, 3, "b sees a")
    start = time.monotonic()
    a.publish_macs(42, [MAC1])
    wait_for(lambda: agents.macs("b", 42) == {MAC1: "10.0.0.1"}, 3, "MAC1 at b")
    assert time.monotonic() - start < 1.0
    # A burst of changes ends in the last set, with few writes.
    etcd_client = Etcd([etcd.url])
    try:
        key = "/sclp/macs/42/a"
        before = etcd_client.get(key)
        assert before is not None
        for i in range(50):
            a.publish_macs(42, [MAC1, bytes([2, 0, 0, 0, 1, i])])
        a.publish_macs(42, [MAC2])
        wait_for(lambda: agents.macs("b", 42) == {MAC2: "10.0.0.1"}, 3, "MAC2 at b")
        after = etcd_client.get(key)
        assert after is not None and after.lease == a.status()["lease_id"]
        versions = after.mod_revision - before.mod_revision
        assert versions <= 100  # not one write per call: the revision counts all writes
        a.publish_macs(7, [MAC1])
        wait_for(lambda: agents.macs("b", 7) == {MAC1: "10.0.0.1"}, 3, "vni 7")
        a.publish_macs(42, [])
        wait_for(lambda: not agents.macs("b", 42), 3, "MACs withdrawn")
        assert etcd_client.get(key) is None
    finally:
        etcd_client.close()


@pytest.mark.timeout(60)
def test_conflicting_protocol_is_refused(etcd: EtcdMember, agents: Agents) -> None:
    agents.add([etcd.url], "a", "10.0.0.1", {42: "vxlan-sclp"})
    agents.add([etcd.url], "b", "10.0.0.2", {42: "geneve-sclp"})
    agents.add([etcd.url], "c", "10.0.0.3", {42: "vxlan-sclp"})
    wait_for(lambda: agents.members("a") == {"a", "b", "c"}, 3, "all registered")
    wait_for(lambda: agents.peers("a") == {"10.0.0.3"}, 3, "a peers with c only")
    view = agents.view("a")
    assert view is not None
    assert any("member b (10.0.0.2) announces protocol geneve-sclp" in c for c in view.conflicts)
    wait_for(lambda: agents.peers("b") == frozenset(), 3, "b has no peer")
    assert agents.agents["a"].status()["conflicts"] == 1


@pytest.mark.timeout(60)
def test_duplicate_name_is_refused_then_registered_when_free(
    etcd: EtcdMember, agents: Agents
) -> None:
    first = agents.add([etcd.url], "same", "10.0.0.1")
    wait_for(lambda: "same" in agents.members("same"), 3, "the first registered")
    second = agents.add([etcd.url], "same", "10.0.0.7", label="second")
    wait_for(lambda: second.status()["last_error"] is not None, 3, "the refusal")
    assert "name same is already registered by another endpoint" in second.status()["last_error"]
    wait_for(lambda: agents.view("second") is not None, 3, "the second's view")
    view = agents.view("second")
    assert view is not None and any("already registered" in c for c in view.conflicts)
    assert second.status()["conflicts"] >= 1
    client = Etcd([etcd.url])
    try:
        record = client.get(member_key("/sclp", "same"))
        assert record is not None and b"10.0.0.1" in record.value  # not overwritten
        # The first one goes: the name is free, the second registers.
        first.stop()
        wait_for(
            lambda: (
                (r := client.get(member_key("/sclp", "same"))) is not None
                and b"10.0.0.7" in r.value
            ),
            5,
            "the second registered",
        )
        wait_for(lambda: second.status()["last_error"] is None, 3, "the error cleared")
    finally:
        client.close()


@pytest.mark.timeout(60)
def test_lost_lease_is_replaced_and_keys_rewritten(etcd: EtcdMember, agents: Agents) -> None:
    a = agents.add([etcd.url], "a", "10.0.0.1")
    agents.add([etcd.url], "b", "10.0.0.2")
    a.publish_macs(42, [MAC1])
    wait_for(lambda: agents.macs("b", 42) == {MAC1: "10.0.0.1"}, 3, "MAC")
    old_lease = a.status()["lease_id"]
    client = Etcd([etcd.url])
    try:
        client.revoke(old_lease)  # as if it expired: the keys go
        wait_for(lambda: a.status()["lease_id"] not in (None, old_lease), TTL + 2, "a new lease")

        def rewritten(key: str) -> bool:
            record = client.get(key)
            return record is not None and record.lease == a.status()["lease_id"]

        wait_for(lambda: rewritten(member_key("/sclp", "a")), 3, "the member key rewritten")
        wait_for(lambda: rewritten(macs_key("/sclp", 42, "a")), 3, "the MAC key rewritten")
        wait_for(lambda: agents.peers("b") == {"10.0.0.1"}, 3, "a back at b")
        wait_for(lambda: agents.macs("b", 42) == {MAC1: "10.0.0.1"}, 3, "MAC back")
    finally:
        client.close()


@pytest.mark.timeout(90)
def test_etcd_restart_keeps_the_view_and_resumes(etcd: EtcdMember, agents: Agents) -> None:
    a = agents.add([etcd.url], "a", "10.0.0.1")
    agents.add([etcd.url], "b", "10.0.0.2")
    wait_for(lambda: agents.peers("a") == {"10.0.0.2"}, 3, "a sees b")
    views_before = len(agents.views["a"])
    etcd.stop()
    wait_for(lambda: not a.status()["connected"], 5, "a notices")
    assert a.status()["last_error"]
    time.sleep(1.0)  # stay down a while: the agents retry meanwhile
    assert agents.peers("a") == {"10.0.0.2"}  # the last view stays
    assert all(v.members for v in agents.views["a"][views_before:])
    start = time.monotonic()
    etcd.start()
    wait_for(etcd.healthy, 20, "etcd back")
    healthy = time.monotonic() - start
    took = wait_for(lambda: a.status()["connected"], 10, "a reconnects")
    print(f"etcd healthy after {healthy:.2f} s; agent reconnected {took:.2f} s later")
    # State reconverges: a change after the restart reaches a through the resumed watch.
    agents.add([etcd.url], "c", "10.0.0.3")
    wait_for(lambda: agents.peers("a") == {"10.0.0.2", "10.0.0.3"}, 3, "a sees c")
    wait_for(lambda: agents.peers("c") == {"10.0.0.1", "10.0.0.2"}, 3, "c sees a and b")
    assert a.status()["last_error"] is None


@pytest.mark.timeout(90)
def test_compaction_while_away_means_a_resync(
    etcd: EtcdMember, agents: Agents, caplog: pytest.LogCaptureFixture
) -> None:
    a = agents.add([etcd.url], "a", "10.0.0.1")
    agents.add([etcd.url], "b", "10.0.0.2")
    wait_for(lambda: agents.peers("a") == {"10.0.0.2"}, 3, "a sees b")
    # While a cannot reach etcd (it listens on another port for a while), b leaves
    # and the history a would resume from is compacted away.
    etcd.stop()
    wait_for(lambda: not a.status()["connected"], 5, "a notices")
    port = etcd.client_port
    etcd.client_port = free_port()
    etcd.start()
    wait_for(etcd.healthy, 20, "etcd on the other port")
    client = Etcd([etcd.url])
    try:
        client.delete(member_key("/sclp", "b"))
        revision = client.put("/sclp/other", b"x")
        client._post("kv/compaction", {"revision": str(revision)})
    finally:
        client.close()
    etcd.stop()
    etcd.client_port = port
    etcd.start()
    wait_for(etcd.healthy, 20, "etcd back")
    caplog.set_level(logging.WARNING, "sclp.cluster")
    wait_for(lambda: "b" not in agents.members("a"), 10, "b gone at a")
    assert "was compacted; reading everything again" in caplog.text
    assert agents.view("a").revision >= revision


@pytest.mark.timeout(60)
def test_set_member_announces_new_networks(etcd: EtcdMember, agents: Agents) -> None:
    a = agents.add([etcd.url], "a", "10.0.0.1", {42: "vxlan-sclp"})
    agents.add([etcd.url], "b", "10.0.0.2", {42: "vxlan-sclp", 7: "vxlan"})
    wait_for(lambda: agents.peers("b") == {"10.0.0.1"}, 3, "b sees a on 42")
    assert agents.peers("b", 7) == frozenset()
    a.set_member(Member("a", "10.0.0.1", "udp", 7234, {7: "vxlan"}))
    wait_for(lambda: agents.peers("b", 7) == {"10.0.0.1"}, 3, "b sees a on 7")
    wait_for(lambda: agents.peers("b", 42) == frozenset(), 3, "a left 42")
    wait_for(lambda: agents.peers("a", 7) == {"10.0.0.2"}, 3, "a's own view follows")
    with pytest.raises(ValueError, match="name stays"):
        a.set_member(Member("z", "10.0.0.1", "udp", 7234, {7: "vxlan"}))


@pytest.mark.timeout(60)
def test_without_progress_notifications_a_silent_watch_is_reopened(
    tmp_path: Path, agents: Agents, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = EtcdCluster(tmp_path / "quiet", 1)
    cluster.members[0].progress = None  # etcd's default: no notification for 10 minutes
    try:
        cluster.start()
        url = cluster.urls[0]
        caplog.set_level(logging.WARNING, "sclp.cluster")
        a = agents.add([url], "a", "10.0.0.1", watch_timeout=1.5)
        b = agents.add([url], "b", "10.0.0.2")
        wait_for(lambda: agents.peers("a") == {"10.0.0.2"}, 3, "a sees b")
        lease = a.status()["lease_id"]
        # Idle: the watch says nothing, the agent re-opens it from where it was.
        wait_for(lambda: caplog.text.count("watch silent") >= 2, 10, "two re-opened watches")
        wait_for(lambda: a.status()["connected"], 3, "a connected again")
        b.publish_macs(42, [MAC1])
        wait_for(lambda: agents.macs("a", 42) == {MAC1: "10.0.0.2"}, 3, "b's MAC at a")
        agents.add([url], "c", "10.0.0.3")
        wait_for(lambda: agents.peers("a") == {"10.0.0.2", "10.0.0.3"}, 3, "a sees c")
        assert a.status()["lease_id"] == lease
    finally:
        agents.stop_all()
        cluster.close()

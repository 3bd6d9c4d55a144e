"""ClusterAgent against an etcd that serves HTTPS and requires client certificates
(a CA and certificates made with openssl by the fixture)."""

from __future__ import annotations

import pytest

from sclp.cluster.agent import ClusterAgent
from sclp.cluster.model import Member
from tests.cluster.conftest import Agents, EtcdMember, wait_for


@pytest.mark.timeout(60)
def test_agents_over_tls(etcd_tls: EtcdMember, agents: Agents) -> None:
    tls = etcd_tls.tls
    assert tls is not None and etcd_tls.url.startswith("https://")
    a = agents.add([etcd_tls.url], "a", "10.0.0.1", tls=tls)
    agents.add([etcd_tls.url], "b", "10.0.0.2", tls=tls)
    wait_for(lambda: agents.peers("a") == {"10.0.0.2"}, 5, "a sees b over TLS")
    wait_for(lambda: agents.peers("b") == {"10.0.0.1"}, 5, "b sees a over TLS")
    a.publish_macs(42, [bytes.fromhex("020000000001")])
    wait_for(lambda: len(agents.macs("b", 42)) == 1, 3, "a MAC over TLS")


@pytest.mark.timeout(60)
def test_without_a_client_certificate_it_reports_and_retries(etcd_tls: EtcdMember) -> None:
    assert etcd_tls.tls is not None
    views: list[object] = []
    me = Member("nocert", "10.0.0.5", "udp", 7234, {42: "vxlan-sclp"})
    agent = ClusterAgent([etcd_tls.url], "/sclp", 3, me, views.append, ca=etcd_tls.tls.ca)
    agent.start()
    try:
        wait_for(lambda: agent.status()["last_error"] is not None, 5, "the error")
        status = agent.status()
        assert not status["connected"] and "\n" not in status["last_error"]
        assert "TLS" in status["last_error"]  # e.g. "TLS: sslv3_alert_bad_certificate"
        assert views == []
    finally:
        agent.stop()

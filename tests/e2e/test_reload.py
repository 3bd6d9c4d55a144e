"""SIGHUP reconciles a running endpoint to its edited file: a network added and then
removed, peers replaced, while the traffic of the network that did not change goes on
(a ping running across both reloads loses nothing).

Two hosts on a veth underlay; containers (namespaces behind veths) attached by
pattern, as in test_attach.py.  VNI 42 stays; VNI 43 comes and goes.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sclp.io import nft
from sclp.io.linux import IPPROTO_SCLP
from sclp.lab.testbed import UNDERLAY

from .helpers import Endpoint, Topology, ping, popen_in, wait_for

pytestmark = [pytest.mark.netns]

VM_MTU = 1400
NET42 = '[[network]]\nvni = 42\nprotocol = "vxlan-sclp"\nattach = ["r42-*"]\nmtu = 1400\n'
NET43 = '[[network]]\nvni = 43\nprotocol = "vxlan"\nattach = ["r43-*"]\nmtu = 1400\n'


@dataclass
class Pair:
    topo: Topology
    hosts: list[str]
    endpoints: list[Endpoint]

    def config(self, i: int, *networks: str, peers: bool = True) -> str:
        text = (
            f'name = "{self.topo.endpoint_name(f"r{i + 1}")}"\n[underlay]\n'
            f'local = "{UNDERLAY[i]}"\nnamespace = "{self.hosts[i]}"\n'
        )
        for net in networks:
            text += net + (f'peers = ["{UNDERLAY[1 - i]}"]\n' if peers else "")
        return text

    def reload(self, i: int, text: str) -> None:
        ep = self.endpoints[i]
        (self.topo.workdir / f"{ep.name}.toml").write_text(text)
        os.kill(ep.proc.pid, signal.SIGHUP)

    def container(self, host: int, name: str, address: str) -> str:
        return self.topo.container(self.hosts[host], name, address + "/24", VM_MTU)


@pytest.fixture
def pair() -> Iterator[Pair]:
    with Topology() as topo:
        hosts = topo.underlay_hosts("rh1", "rh2")
        result = Pair(topo, hosts, [])
        for i in range(2):
            name = topo.endpoint_name(f"r{i + 1}")
            result.endpoints.append(topo.start_endpoint(name, result.config(i, NET42)))
        yield result
        codes = topo.stop_endpoints()
        assert codes == [0, 0], [ep.log_text()[-800:] for ep in result.endpoints]
    assert not topo.leftovers()


@pytest.mark.timeout(120)
def test_sighup_adds_and_removes_a_network_without_touching_the_others(pair: Pair) -> None:
    a42 = pair.container(0, "r42-a", "192.168.80.1")
    pair.container(1, "r42-b", "192.168.80.2")
    wait_for(lambda: ping(a42, "192.168.80.2", count=1), 10.0, what="vni 42 up")
    pinger = popen_in(a42, ["ping", "-q", "-i", "0.05", "-c", "160", "192.168.80.2"])
    try:
        for i in range(2):
            pair.reload(i, pair.config(i, NET42, NET43))
        for i in range(2):
            wait_for(lambda i=i: "43" in pair.endpoints[i].stats()["vni"], 5.0, what="vni 43 added")
        a43 = pair.container(0, "r43-a", "192.168.81.1")
        pair.container(1, "r43-b", "192.168.81.2")
        wait_for(lambda: ping(a43, "192.168.81.2", count=1), 10.0, what="vni 43 works")
        for i in range(2):
            pair.reload(i, pair.config(i, NET42))
        for i in range(2):
            wait_for(
                lambda i=i: "43" not in pair.endpoints[i].stats()["vni"], 5.0, what="vni 43 gone"
            )
        out, _ = pinger.communicate(timeout=30)
    finally:
        if pinger.poll() is None:
            pinger.kill()
            pinger.wait()
    assert pinger.returncode == 0 and " 0% packet loss" in out, out
    stats = pair.endpoints[0].stats()
    assert "r43-a" not in stats["ports"] and "r42-a" in stats["ports"]
    log = pair.endpoints[0].log_text()
    assert log.count("vni 43 added") == 1, log
    assert log.count("vni 43 removed from the configuration") == 1, log
    assert log.count("detached r43-a from vni 43: its network was removed") == 1, log
    assert "vni 42 added" not in log and "vni 42 removed" not in log


@pytest.mark.timeout(60)
def test_sighup_replaces_the_peers_of_a_running_network(pair: Pair) -> None:
    a = pair.container(0, "r42-p", "192.168.80.11")
    pair.container(1, "r42-q", "192.168.80.12")
    wait_for(lambda: ping(a, "192.168.80.12", count=1), 10.0, what="vni 42 up")
    pair.reload(0, pair.config(0, NET42, peers=False))
    wait_for(lambda: pair.endpoints[0].stats()["vni"]["42"]["peers"] == [], 5.0, what="no peers")
    assert not ping(a, "192.168.80.12", count=1, wait=1.0)
    pair.reload(0, pair.config(0, NET42))
    wait_for(lambda: ping(a, "192.168.80.12", count=1), 10.0, what="peer back")
    log = pair.endpoints[0].log_text()
    assert f"vni 42: peer {UNDERLAY[1]} left" in log and f"vni 42: peer {UNDERLAY[1]} joined" in log
    assert pair.endpoints[0].stats()["ports"]["r42-p"]["vni"] == 42  # the port stayed


@pytest.mark.timeout(90)
def test_native_sclp_moves_to_receive_rings_when_peers_arrive() -> None:
    """Started without peers, native SCLP is read from the raw socket (no routes to
    name the underlay devices yet); once a reload brings peers, the endpoint opens
    receive rings and the ingress drop there, and traffic still flows."""
    with Topology() as topo:
        hosts = topo.underlay_hosts("rh1", "rh2")
        pair = Pair(topo, hosts, [])
        for i in range(2):
            name = topo.endpoint_name(f"r{i + 1}")
            pair.endpoints.append(topo.start_endpoint(name, pair.config(i, NET42, peers=False)))
        a = pair.container(0, "r42-m", "192.168.80.21")
        pair.container(1, "r42-n", "192.168.80.22")
        assert "receive rings" not in pair.endpoints[0].log_text()
        for i in range(2):
            pair.reload(i, pair.config(i, NET42))
        for i in range(2):
            wait_for(
                lambda i=i: (
                    "native SCLP: receive rings and an ingress drop" in pair.endpoints[i].log_text()
                ),
                10.0,
                what="receive rings opened",
            )
        wait_for(lambda: ping(a, "192.168.80.22", count=1), 10.0, what="vni 42 over the rings")
        drops = nft.ingress_drops(IPPROTO_SCLP, None, pair.endpoints[1].name, netns=hosts[1])
        assert drops > 0
        codes = topo.stop_endpoints()
        assert codes == [0, 0], [ep.log_text()[-800:] for ep in pair.endpoints]
    assert not topo.leftovers()

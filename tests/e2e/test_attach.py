"""Attached ports on real endpoints: containers (network namespaces behind veth pairs
that the test, standing in for a container runtime, creates) become ports of a network
by the name of their host-side veth matching ``attach``, while the endpoints run.

Host 1 and host 2 are joined by a veth underlay; each endpoint attaches ``c42-*`` to
VNI 42 and ``c43-*`` to VNI 43.  Checked:

- hot-plug: a container created after the endpoint is attached within a second (the
  endpoint's stats list its port), one log line; deleted, it is detached within a
  second with its FDB entries; the traffic of another port keeps flowing meanwhile;
- an interface that exists for an instant (as libvirt deletes a stopped guest's TAP:
  it creates it again and closes it at once) never becomes a port;
- local switching: two containers on host 1 talk without the underlay;
- a TCP transfer across the overlay arrives intact (SHA-256); over VXLAN over SCLP
  the receiving container gets GSO frames (bytes per frame delivered far above the
  MTU), over VXLAN MTU-sized ones (the paper's point);
- isolation: a VNI 43 container cannot reach VNI 42's addresses on the same subnet.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sclp.io import netns as nsio
from sclp.lab.testbed import UNDERLAY

from .helpers import (
    Endpoint,
    Topology,
    ping,
    popen_in,
    run_in,
    tcp_transfer,
    wait_for,
)

pytestmark = [pytest.mark.netns]

VM_MTU = 1400
SUBNET = "192.168.79"


@dataclass
class Hosts:
    topo: Topology
    protocol: str
    hosts: list[str]
    endpoints: list[Endpoint]

    def container(self, host: int, name: str, address: str) -> str:
        """A container behind host ``host`` whose host-side veth is ``name``."""
        return self.topo.container(self.hosts[host], name, f"{address}/24", VM_MTU)

    def ports(self, host: int) -> dict[str, Any]:
        ports: dict[str, Any] = self.endpoints[host].stats()["ports"]
        return ports


def _config(topo: Topology, i: int, hosts: list[str], protocol: str) -> str:
    text = (
        f'name = "{topo.endpoint_name(f"a{i + 1}")}"\n'
        "[underlay]\n"
        f'local = "{UNDERLAY[i]}"\n'
        f'namespace = "{hosts[i]}"\n'
    )
    for vni in (42, 43):
        text += (
            "[[network]]\n"
            f"vni = {vni}\n"
            f'protocol = "{protocol}"\n'
            f'attach = ["c{vni}-*"]\n'
            f"mtu = {VM_MTU}\n"
            f'peers = ["{UNDERLAY[1 - i]}"]\n'
        )
    return text


@pytest.fixture(scope="module", params=["vxlan-sclp", "vxlan"])
def hosts(request: pytest.FixtureRequest) -> Iterator[Hosts]:
    with Topology() as topo:
        names = topo.underlay_hosts("ah1", "ah2")
        endpoints = [
            topo.start_endpoint(
                topo.endpoint_name(f"a{i + 1}"), _config(topo, i, names, request.param)
            )
            for i in range(2)
        ]
        yield Hosts(topo, request.param, names, endpoints)
        codes = topo.stop_endpoints()
        assert codes == [0, 0], [ep.log_text()[-800:] for ep in endpoints]
    assert not topo.leftovers()


def _attached(hosts: Hosts, host: int, name: str) -> bool:
    return name in hosts.ports(host)


@pytest.mark.timeout(90)
def test_a_container_is_attached_within_a_second_and_detached_when_it_goes(
    hosts: Hosts,
) -> None:
    start = time.monotonic()
    web = hosts.container(0, "c42-web", f"{SUBNET}.1")
    wait_for(lambda: _attached(hosts, 0, "c42-web"), 1.0, what="c42-web attached")
    attach_s = time.monotonic() - start
    db = hosts.container(1, "c42-db", f"{SUBNET}.2")
    wait_for(lambda: _attached(hosts, 1, "c42-db"), 1.0, what="c42-db attached")
    port = hosts.ports(0)["c42-web"]
    assert (port["vni"], port["kind"]) == (42, "attached")
    assert ping(web, f"{SUBNET}.2", count=2), hosts.endpoints[0].log_text()[-800:]
    fdb_before = hosts.endpoints[0].stats()["vni"]["42"]["fdb_entries"]
    assert fdb_before >= 2  # web's MAC (local) and db's (behind host 2)

    # The container goes away: its veth with it.
    start = time.monotonic()
    with nsio.NetNS(hosts.hosts[0]) as ns:
        ns.ipr.link("del", index=ns.link_index("c42-web"))
    wait_for(lambda: not _attached(hosts, 0, "c42-web"), 1.0, what="c42-web detached")
    detach_s = time.monotonic() - start
    assert hosts.endpoints[0].stats()["vni"]["42"]["fdb_entries"] == fdb_before - 1
    log = hosts.endpoints[0].log_text()
    assert log.count("attached c42-web") == 1, log
    assert log.count("detached c42-web from vni 42: interface gone, 1 FDB entry flushed") == 1
    assert attach_s < 1.0 and detach_s < 1.0
    run_in(db, ["true"])  # the other side is untouched


# A TAP created and deleted 10 ms later (TUNSETIFF, then close without persist):
# libvirt's way of deleting a guest's TAP, which it does after each stop (0.3 ms).
_FLEETING_TAP = """
import fcntl, os, struct, time
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", b"c42-fleeting", 0x0002 | 0x1000))
time.sleep(0.01)
os.close(fd)
"""


@pytest.mark.timeout(60)
def test_an_interface_that_exists_for_an_instant_is_not_attached(hosts: Hosts) -> None:
    run_in(hosts.hosts[0], [sys.executable, "-c", _FLEETING_TAP])
    # Link events are handled in order: once a later interface is attached, the
    # fleeting one's creation and deletion have been seen.
    hosts.container(0, "c42-later", f"{SUBNET}.31")
    wait_for(lambda: _attached(hosts, 0, "c42-later"), 2.0, what="c42-later attached")
    log = hosts.endpoints[0].log_text()
    assert "c42-fleeting" not in log, log[-800:]


@pytest.mark.timeout(120)
def test_hot_plug_leaves_other_ports_traffic_alone(hosts: Hosts) -> None:
    a = hosts.container(0, "c42-a", f"{SUBNET}.11")
    hosts.container(1, "c42-b", f"{SUBNET}.12")
    wait_for(lambda: _attached(hosts, 1, "c42-b"), 2.0, what="c42-b attached")
    wait_for(lambda: ping(a, f"{SUBNET}.12", count=1), 5.0, what="a reaches b")
    pinger = popen_in(a, ["ping", "-q", "-i", "0.05", "-c", "80", f"{SUBNET}.12"])
    try:
        for round_ in range(3):
            name = f"c42-x{round_}"
            hosts.container(0, name, f"{SUBNET}.{20 + round_}")
            wait_for(lambda n=name: _attached(hosts, 0, n), 1.0, what=f"{name} attached")
            with nsio.NetNS(hosts.hosts[0]) as ns:
                ns.ipr.link("del", index=ns.link_index(name))
            wait_for(lambda n=name: not _attached(hosts, 0, n), 1.0, what=f"{name} gone")
        out, _ = pinger.communicate(timeout=30)
    finally:
        if pinger.poll() is None:
            pinger.kill()
            pinger.wait()
    assert pinger.returncode == 0 and " 0% packet loss" in out, out


@pytest.mark.timeout(90)
def test_two_containers_on_one_host_are_switched_locally(hosts: Hosts) -> None:
    one = hosts.container(0, "c42-l1", f"{SUBNET}.31")
    hosts.container(0, "c42-l2", f"{SUBNET}.32")
    wait_for(lambda: _attached(hosts, 0, "c42-l2"), 2.0, what="c42-l2 attached")
    assert ping(one, f"{SUBNET}.32", count=2)  # learned both ways
    before = hosts.endpoints[0].stats()["vni"]["42"]
    assert ping(one, f"{SUBNET}.32", count=30)
    after = hosts.endpoints[0].stats()["vni"]["42"]
    local = after.get("tx_local", 0) - before.get("tx_local", 0)
    underlay = after.get("tx_packets", 0) - before.get("tx_packets", 0)
    assert local >= 60, (before, after)  # 30 requests + 30 replies, at least
    assert underlay <= 4, (before, after)  # at most a re-confirming ARP broadcast


@pytest.mark.timeout(120)
def test_tcp_across_the_overlay_is_intact_and_arrives_as_gso_frames(
    hosts: Hosts, payload: tuple[Path, str]
) -> None:
    src = hosts.container(0, "c42-tx", f"{SUBNET}.41")
    dst = hosts.container(1, "c42-rx", f"{SUBNET}.42")
    wait_for(lambda: _attached(hosts, 1, "c42-rx"), 2.0, what="c42-rx attached")
    wait_for(lambda: ping(src, f"{SUBNET}.42", count=1), 5.0, what="tx reaches rx")
    before = hosts.ports(1)["c42-rx"]
    path, digest = payload
    received = tcp_transfer(src, dst, f"{SUBNET}.42", path)
    assert received == (path.stat().st_size, digest)
    after = hosts.ports(1)["c42-rx"]
    frames = after["rx_frames"] - before["rx_frames"]
    size = after["rx_bytes"] - before["rx_bytes"]
    assert size >= path.stat().st_size, (frames, size)
    if hosts.protocol == "vxlan":  # one inner frame per outer packet: MTU-sized
        assert size / frames <= VM_MTU + 14, (frames, size)
    else:  # reassembled before decapsulation: GSO frames of many KB
        assert size / frames > 4 * VM_MTU, (frames, size)


@pytest.mark.timeout(60)
def test_another_vni_cannot_reach_an_attached_container(hosts: Hosts) -> None:
    mine = hosts.container(0, "c43-t2", f"{SUBNET}.52")
    hosts.container(1, "c43-t2b", f"{SUBNET}.53")
    hosts.container(1, "c42-t1", f"{SUBNET}.51")
    wait_for(lambda: _attached(hosts, 1, "c42-t1"), 2.0, what="c42-t1 attached")
    wait_for(lambda: _attached(hosts, 1, "c43-t2b"), 2.0, what="c43-t2b attached")
    assert ping(mine, f"{SUBNET}.53", count=2)  # its own VNI works
    assert not ping(mine, f"{SUBNET}.51", count=2, wait=1.0)  # VNI 42's does not

"""Packets from a non-peer, spoofed VNIs and FDB poisoning.

Host 1's endpoint serves two tenants with the same subnet: VNI 42 (VM 1, peer:
host 2) and VNI 43 (VM 3, peer: 10.77.0.3, which does not exist).  Host 2 serves
VNI 42 for VM 2.  From host 2's namespace the hostile host sends:

- VNI 42 frames from a non-peer address (10.77.0.9) whose source MAC is VM 2's (an
  attempt to steal VM 2's traffic) or new MACs (an attempt to fill the FDB): all
  dropped as ``drop_not_peer``, the FDB keeps its entries, VM 1 still reaches VM 2;
- VNI 43 frames from host 2's own address, a peer of VNI 42 but not of VNI 43: a
  peer of one tenant cannot inject into another (VNI 43's ``drop_not_peer``);
- frames for a VNI nobody serves (``drop_unknown_vni``), and VNI 42 frames addressed
  to VM 3's MAC: they stay in VNI 42 (VM 3 receives nothing).

What is *not* protected is written down in docs/security.md: the peer check is a
source-address check, so a host that can send with host 2's address can do all that
host 2 can.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sclp.io import netns as nsio
from sclp.lab.testbed import OVERLAY, UNDERLAY

from ..e2e.helpers import Endpoint, Topology, counters, delta, disable_ipv6, link_mac, ping
from .hostile import HOSTILE, Listener, assert_alive, inner_udp_frame, send_from, tunnel_packets

pytestmark = [pytest.mark.netns]

NOWHERE = "10.77.0.3"


@dataclass
class Tenants:
    protocol: str
    hosts: tuple[str, str]
    vm1: str
    vm2: str
    vm3: str
    h1: Endpoint
    h2: Endpoint

    def port(self, vni: int) -> dict[str, int]:
        values = self.h1.stats()["vni"][str(vni)]
        return {k: v for k, v in values.items() if isinstance(v, int)}


def _network(vni: int, protocol: str, vm: str, address: str, peer: str) -> str:
    return (
        f'[[network]]\nvni = {vni}\nprotocol = "{protocol}"\ntap = "tap{vni}"\n'
        f'namespace = "{vm}"\naddress = "{address}/24"\npeers = ["{peer}"]\n'
    )


@pytest.fixture(scope="module", params=["vxlan", "vxlan-sclp"])
def tenants(request: pytest.FixtureRequest) -> Iterator[Tenants]:
    protocol = request.param
    with Topology() as topo:
        h1, h2 = topo.netns("h1"), topo.netns("h2")
        vm1, vm2, vm3 = topo.netns("vm1"), topo.netns("vm2"), topo.netns("vm3")
        for vm in (vm1, vm2, vm3):
            disable_ipv6(vm)
        nsio.create_veth("ul0", h1, "ul0", h2)
        with nsio.NetNS(h1) as ns:
            ns.add_address("ul0", f"{UNDERLAY[0]}/24")
        with nsio.NetNS(h2) as ns:
            ns.add_address("ul0", f"{UNDERLAY[1]}/24")
            ns.add_address("ul0", f"{HOSTILE}/24")
        head = '[underlay]\nlocal = "{}"\nnamespace = "{}"\n'
        one = topo.endpoint_name("1")
        two = topo.endpoint_name("2")
        ep1 = topo.start_endpoint(
            one,
            f'name = "{one}"\n'
            + head.format(UNDERLAY[0], h1)
            + _network(42, protocol, vm1, OVERLAY[0], UNDERLAY[1])
            + _network(43, protocol, vm3, OVERLAY[0], NOWHERE),
        )
        ep2 = topo.start_endpoint(
            two,
            f'name = "{two}"\n'
            + head.format(UNDERLAY[1], h2)
            + _network(42, protocol, vm2, OVERLAY[1], UNDERLAY[0]),
        )
        yield Tenants(protocol, (h1, h2), vm1, vm2, vm3, ep1, ep2)
        assert topo.stop_endpoints() == [0, 0]


def _packets(t: Tenants, src: str, vni: int, dst_mac: str, tag: str, src_mac: str) -> tuple:
    frame = inner_udp_frame(dst_mac, tag.encode(), OVERLAY[0], src_mac=src_mac)
    return tunnel_packets(t.protocol, "ip", frame, src, UNDERLAY[0], vni=vni)


def _random_mac() -> str:
    return "02:" + ":".join(secrets.token_hex(1) for _ in range(5))


@pytest.mark.timeout(90)
def test_non_peer_cannot_poison_the_fdb(tenants: Tenants) -> None:
    t = tenants
    assert ping(t.vm1, OVERLAY[1]), t.h1.log_text()[-500:]
    entries = t.port(42)["fdb_entries"]
    assert entries >= 1  # VM 2's MAC, learned from host 2
    vm1_mac, vm2_mac = link_mac(t.vm1, "tap42"), link_mac(t.vm2, "tap42")
    before = counters(t.h1.stats())
    listener = Listener(t.vm1, OVERLAY[0], idle=0.5)
    try:
        for i in range(20):
            src_mac = vm2_mac if i % 2 else _random_mac()
            where, packets = _packets(t, HOSTILE, 42, vm1_mac, "poison", src_mac)
            send_from(t.hosts[1], HOSTILE, UNDERLAY[0], where, packets)
        where, packets = _packets(t, UNDERLAY[1], 42, vm1_mac, "control", vm2_mac)
        send_from(t.hosts[1], UNDERLAY[1], UNDERLAY[0], where, packets)
        received = listener.received()
    finally:
        listener.close()
    change = delta(before, counters(assert_alive(t.h1.proc, t.h1.stats)))
    assert received == ["control"], received
    assert change["drop_not_peer"] == 20, change
    assert t.port(42)["fdb_entries"] == entries
    # VM 2's entry still points at host 2: VM 1's traffic still reaches it.
    assert ping(t.vm1, OVERLAY[1], count=2)


@pytest.mark.timeout(90)
def test_a_peer_of_one_vni_cannot_inject_into_another(tenants: Tenants) -> None:
    t = tenants
    vm1_mac, vm3_mac = link_mac(t.vm1, "tap42"), link_mac(t.vm3, "tap43")
    port43 = t.port(43)
    before = counters(t.h1.stats())
    into_vm3 = Listener(t.vm3, OVERLAY[0], idle=0.5)
    into_vm1 = Listener(t.vm1, OVERLAY[0], idle=0.5)
    try:
        # Host 2 (a peer of VNI 42 only) sends into VNI 43, and into a VNI nobody serves.
        for vni in (43, 43, 43, 4242):
            where, packets = _packets(t, UNDERLAY[1], vni, vm3_mac, "crossvni", _random_mac())
            send_from(t.hosts[1], UNDERLAY[1], UNDERLAY[0], where, packets)
        # VNI 42 frames for VM 3's MAC stay in VNI 42 (VM 1's kernel discards them).
        where, packets = _packets(t, UNDERLAY[1], 42, vm3_mac, "othermac", _random_mac())
        send_from(t.hosts[1], UNDERLAY[1], UNDERLAY[0], where, packets)
        where, packets = _packets(t, UNDERLAY[1], 42, vm1_mac, "vm1", _random_mac())
        send_from(t.hosts[1], UNDERLAY[1], UNDERLAY[0], where, packets)
        got_vm3, got_vm1 = into_vm3.received(), into_vm1.received()
    finally:
        into_vm3.close()
        into_vm1.close()
    change = delta(before, counters(assert_alive(t.h1.proc, t.h1.stats)))
    assert got_vm3 == [] and got_vm1 == ["vm1"], (got_vm3, got_vm1)
    after43 = t.port(43)
    assert after43.get("drop_not_peer", 0) - port43.get("drop_not_peer", 0) == 3
    assert after43.get("rx_frames", 0) == port43.get("rx_frames", 0)
    assert after43["fdb_entries"] == port43["fdb_entries"]
    assert change["drop_unknown_vni"] == 1, change

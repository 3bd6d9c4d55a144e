"""Two virtual networks on one pair of endpoints stay apart.

Each endpoint serves VNI 42 and VNI 43, each with its own TAP into its own VM
namespace, and both tenants use the *same* subnet and addresses (192.168.77.1 and
.2), as two customers of a cloud would.  VNI 43's second VM also owns 192.168.77.4.
A VM of VNI 42 must reach its own .2 (not the other tenant's), and must not be able
to resolve .4 at all: its ARP requests flood VNI 42 only and VNI 43's ports count
nothing.

IPv6 is switched off in the VMs, and ARP's delay before a unicast re-confirmation
probe is set long, so that no background traffic (router solicitations, MLD,
neighbour probes) can move the counters these checks compare.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sclp.io import netns as nsio
from sclp.lab.testbed import OVERLAY, UNDERLAY

from .helpers import Endpoint, Topology, disable_ipv6, link_mac, ping, run_in

pytestmark = [pytest.mark.netns]

VNIS = (42, 43)
ONLY_IN_43 = "192.168.77.4"


@dataclass
class TwoVnis:
    protocol: str
    hosts: list[str]
    vms: dict[int, list[str]]  # vni -> [vm on host 1, vm on host 2]
    endpoints: list[Endpoint]

    @staticmethod
    def tap(vni: int) -> str:
        return f"tap{vni}"

    def port_counters(self, host: int, vni: int) -> dict[str, int]:
        values = self.endpoints[host].stats()["vni"][str(vni)]
        counts = {"rx_frames": 0, "tx_frames": 0}  # absent until they first count
        counts.update((k, v) for k, v in values.items() if isinstance(v, int))
        return counts


def _config(
    topo: Topology, i: int, protocol: str, hosts: list[str], vms: dict[int, list[str]]
) -> str:
    text = (
        f'name = "{topo.endpoint_name(f"h{i + 1}")}"\n'
        "[underlay]\n"
        f'local = "{UNDERLAY[i]}"\n'
        f'namespace = "{hosts[i]}"\n'
    )
    for vni in VNIS:
        text += (
            "[[network]]\n"
            f"vni = {vni}\n"
            f'protocol = "{protocol}"\n'
            f'tap = "{TwoVnis.tap(vni)}"\n'
            f'namespace = "{vms[vni][i]}"\n'
            f'address = "{OVERLAY[i]}/24"\n'
            f'peers = ["{UNDERLAY[1 - i]}"]\n'
        )
    return text


@pytest.fixture(scope="module", params=["vxlan", "vxlan-sclp"])
def two_vnis(request: pytest.FixtureRequest) -> Iterator[TwoVnis]:
    protocol = request.param
    with Topology() as topo:
        hosts = topo.underlay_hosts("h1", "h2")
        vms = {
            42: [topo.netns("vm1a"), topo.netns("vm2a")],
            43: [topo.netns("vm1b"), topo.netns("vm2b")],
        }
        for vm in (*vms[42], *vms[43]):
            disable_ipv6(vm)
        endpoints = [
            topo.start_endpoint(
                topo.endpoint_name(f"h{i + 1}"), _config(topo, i, protocol, hosts, vms)
            )
            for i in range(2)
        ]
        with nsio.NetNS(vms[43][1]) as ns:
            ns.add_address(TwoVnis.tap(43), f"{ONLY_IN_43}/24")
        for vni in VNIS:
            for vm in vms[vni]:
                with nsio.NetNS(vm) as ns:
                    ns.write_sysctl(
                        f"net.ipv4.neigh.{TwoVnis.tap(vni)}.delay_first_probe_time", 600
                    )
        yield TwoVnis(protocol, hosts, vms, endpoints)
        codes = topo.stop_endpoints()
        assert codes == [0, 0], [ep.log_text()[-500:] for ep in endpoints]
    assert not topo.leftovers()


def _neighbour(netns: str, address: str) -> dict[str, object]:
    out = run_in(netns, ["ip", "-j", "neigh", "show", "to", address]).stdout
    entries: list[dict[str, object]] = json.loads(out or "[]")
    return entries[0] if entries else {}


@pytest.mark.timeout(60)
def test_each_tenant_reaches_its_own_vm(two_vnis: TwoVnis) -> None:
    for vni in VNIS:
        vm1, vm2 = two_vnis.vms[vni]
        assert ping(vm1, OVERLAY[1], count=2), f"vni {vni}: {two_vnis.endpoints[0].log_text()}"
    # Same address, different machines: each tenant's .2 resolved to its own VM.
    macs = {}
    for vni in VNIS:
        vm1, vm2 = two_vnis.vms[vni]
        macs[vni] = link_mac(vm2, TwoVnis.tap(vni))
        assert _neighbour(vm1, OVERLAY[1]).get("lladdr") == macs[vni]
    assert macs[42] != macs[43]
    for host in range(2):
        for vni in VNIS:
            port = two_vnis.port_counters(host, vni)
            assert port["rx_frames"] > 0 and port["tx_frames"] > 0, (host, vni, port)


@pytest.mark.timeout(60)
def test_other_tenants_address_is_unreachable(two_vnis: TwoVnis) -> None:
    vm1a = two_vnis.vms[42][0]
    before = {(h, v): two_vnis.port_counters(h, v) for h in range(2) for v in VNIS}

    assert not ping(vm1a, ONLY_IN_43, count=2, wait=1.0)

    after = {(h, v): two_vnis.port_counters(h, v) for h in range(2) for v in VNIS}
    assert _neighbour(vm1a, ONLY_IN_43).get("lladdr") is None
    # The ARP requests left on vni 42 and were delivered to vni 42's other VM ...
    assert after[0, 42]["tx_frames"] > before[0, 42]["tx_frames"]
    assert after[1, 42]["rx_frames"] > before[1, 42]["rx_frames"]
    # ... and nothing at all moved on vni 43, at either end.
    for host in range(2):
        assert after[host, 43] == before[host, 43], (host, before[host, 43], after[host, 43])
    # The address is there, for its own tenant.
    assert ping(two_vnis.vms[43][0], ONLY_IN_43, count=1)

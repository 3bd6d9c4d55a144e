"""BGP EVPN against the real thing: FRR (zebra + bgpd from Debian) with a kernel
VXLAN device and bridge (``advertise-all-vni``), and two of our endpoints, in one
VNI, with no ``peers`` in any file (docs/evpn.md).

::

    vm1 --tap-- host1 (ours, AS 65001, 10.0.0.1) --+
    vmx --veth (attached)--/                        |
    vm2 --tap-- host2 (ours, AS 65002, 10.0.0.2) --+-- hub bridge (underlay)
    vmf --veth-- br42 + vxlan42 -- hostf (FRR, AS 65000, 10.0.0.3) --+

Our endpoints peer with FRR and with each other.  They run VXLAN over SCLP: to each
other SCLP, to FRR's kernel device plain VXLAN.  The checks run in file order on one
fabric (it takes ~10 s to build); the last ones take parts of it away.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sclp.io import netns as nsio
from tests.e2e.helpers import (
    Endpoint,
    Topology,
    counters,
    delta,
    link_mac,
    ping,
    run_in,
    sclp_cli,
    tcp_transfer,
    wait_for,
)

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)"),
]

ROOT = Path(__file__).resolve().parents[2]
HOLD = 3
H1, H2, HF = "10.0.0.1", "10.0.0.2", "10.0.0.3"
VM1, VM2, VMF, VMX = "192.168.42.1", "192.168.42.2", "192.168.42.3", "192.168.42.9"

# What docs/evpn.md shows, as the test runs it (the doc is checked to contain it).
FRR_BGPD = """\
router bgp 65000
 bgp router-id 10.0.0.3
 no bgp default ipv4-unicast
 no bgp ebgp-requires-policy
 neighbor 10.0.0.1 remote-as 65001
 neighbor 10.0.0.1 timers 1 3
 neighbor 10.0.0.2 remote-as 65002
 neighbor 10.0.0.2 timers 1 3
 !
 address-family l2vpn evpn
  neighbor 10.0.0.1 activate
  neighbor 10.0.0.2 activate
  advertise-all-vni
 exit-address-family
"""
FRR_KERNEL = """\
ip link add br42 type bridge
ip link add vxlan42 type vxlan id 42 local 10.0.0.3 dstport 4789 nolearning
ip link set vxlan42 master br42
ip link set vxlan42 up
ip link set br42 up
"""


def endpoint_config(
    name: str, local: str, asn: int, other: str, other_asn: int, host: str, vm: str, address: str
) -> str:
    return f"""\
name = "{name}"

[underlay]
local = "{local}"
namespace = "{host}"

[bgp]
asn = {asn}
neighbors = [{{ address = "{HF}", asn = 65000 }}, {{ address = "{other}", asn = {other_asn} }}]
hold_time = {HOLD}

[[network]]
vni = 42
protocol = "vxlan-sclp"
tap = "t42"
namespace = "{vm}"
address = "{address}/24"
attach = ["evm*"]
"""


class Frr:
    """zebra and bgpd in a namespace, with their own state directory."""

    def __init__(self, netns: str, name: str) -> None:
        self.netns, self.name = netns, name
        self.dir = Path("/var/run/frr") / name
        self.dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.dir, "frr", "frr")
        (self.dir / "zebra.conf").write_text(f"hostname {name}\n")
        (self.dir / "bgpd.conf").write_text(f"hostname {name}\n{FRR_BGPD}")
        for conf in self.dir.glob("*.conf"):
            shutil.chown(conf, "frr", "frr")

    def start(self, daemon: str) -> None:
        conf, pid = self.dir / f"{daemon}.conf", self.dir / f"{daemon}.pid"
        run_in(
            self.netns,
            [f"/usr/lib/frr/{daemon}", "-d", "-N", self.name, "-f", str(conf), "-i", str(pid)],
        )

    def pid(self, daemon: str) -> int | None:
        try:
            return int((self.dir / f"{daemon}.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def kill(self, daemon: str) -> None:
        pid = self.pid(daemon)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            (self.dir / f"{daemon}.pid").unlink(missing_ok=True)

    def vtysh(self, command: str) -> str:
        result = run_in(self.netns, ["vtysh", "-N", self.name, "-c", command], check=False)
        return result.stdout

    def remote_macs(self) -> dict[str, str]:
        """``show evpn mac vni 42 json``: remote MAC -> VTEP."""
        text = self.vtysh("show evpn mac vni 42 json")
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return {}
        macs = data.get("macs", {})
        return {m: e.get("remoteVtep", "") for m, e in macs.items() if e.get("type") == "remote"}

    def close(self) -> None:
        for daemon in ("bgpd", "zebra"):
            self.kill(daemon)
        shutil.rmtree(self.dir, ignore_errors=True)


class Fabric:
    def __init__(self, topo: Topology, frr: Frr, endpoints: list[Endpoint], ns: dict[str, str]):
        self.topo, self.frr, self.endpoints, self.ns = topo, frr, endpoints, ns

    def show(self, index: int, what: str) -> list[dict[str, Any]]:
        result = sclp_cli("show", what, "--name", self.endpoints[index].name, "--json")
        assert result.returncode == 0, result.stderr
        key = {"fdb": "entries", "peers": "peers", "ports": "ports"}[what]
        return list(json.loads(result.stdout)[key])


@pytest.fixture(scope="module")
def fabric() -> Iterator[Fabric]:
    if not os.path.exists("/usr/lib/frr/bgpd"):
        pytest.fail("FRR is not installed: apt-get install frr (./quickstart.sh does)")
    topo = Topology()
    frr = Frr("", f"sclp-{topo.tag}")  # its namespace is made below
    try:
        hub = topo.netns("hub")
        run_in(hub, ["ip", "link", "add", "br0", "type", "bridge"])
        run_in(hub, ["ip", "link", "set", "br0", "up"])
        ns_of: dict[str, str] = {}
        for role, address in (("vm1-host", H1), ("vm2-host", H2), ("vmf-host", HF)):
            host = topo.netns(role)
            ns_of[role] = host
            nsio.create_veth("ul0", host, f"p{role[:3]}", hub)
            run_in(hub, ["ip", "link", "set", f"p{role[:3]}", "master", "br0", "up"])
            run_in(host, ["ip", "addr", "add", f"{address}/24", "dev", "ul0"])
        for vm in ("vm1", "vm2"):
            ns_of[vm] = topo.netns(vm)
        # FRR's side: the kernel VXLAN device and bridge, a VM behind it.
        hostf = ns_of["vmf-host"]
        for line in FRR_KERNEL.splitlines():
            run_in(hostf, line.split())
        ns_of["vmf"] = topo.container(hostf, "evmf", f"{VMF}/24", 1450)
        run_in(hostf, ["ip", "link", "set", "evmf", "master", "br42", "up"])
        frr.netns = hostf
        frr.start("zebra")
        frr.start("bgpd")
        # Our two endpoints (their namespaces are named after the VMs' in the file).
        endpoints = []
        for vm, local, asn, other, other_asn, address in (
            ("vm1", H1, 65001, H2, 65002, VM1),
            ("vm2", H2, 65002, H1, 65001, VM2),
        ):
            name = topo.endpoint_name(vm)
            host = ns_of[f"{vm}-host"]
            text = endpoint_config(name, local, asn, other, other_asn, host, ns_of[vm], address)
            endpoints.append(topo.start_endpoint(name, text))
        yield Fabric(topo, frr, endpoints, ns_of)
    finally:
        frr.close()
        topo.close()


def _vteps(vni: dict[str, Any]) -> list[str]:
    """The remote VTEPs of ``show evpn vni 42 json``: FRR 8.4 lists them under
    ``numRemoteVteps`` (addresses, or objects with ``ip``)."""
    found = vni.get("numRemoteVteps") or vni.get("remoteVteps") or []
    if not isinstance(found, list):
        return []
    return [v["ip"] if isinstance(v, dict) else str(v) for v in found]


def _established(ep: Endpoint) -> int:
    bgp = ep.stats().get("bgp") or {}
    return sum(1 for n in bgp.get("neighbors", ()) if n["state"] == "established")


def test_sessions_come_up_and_routes_are_exchanged(fabric: Fabric) -> None:
    for ep in fabric.endpoints:

        def both_up(ep: Endpoint = ep) -> bool:
            return _established(ep) == 2

        wait_for(both_up, 30.0, what=f"{ep.name}: two sessions")
    # Traffic teaches our endpoints their VMs' MACs; they advertise them.
    assert ping(fabric.ns["vm1"], VMF, count=2, wait=3.0)
    vm1_mac = link_mac(fabric.ns["vm1"], "t42")
    vmf_mac = link_mac(fabric.ns["vmf"], "eth0")
    wait_for(
        lambda: fabric.frr.remote_macs().get(vm1_mac) == H1,
        10.0,
        what="FRR lists vm1's MAC as remote behind host1",
    )
    entry = {"vni": 42, "mac": vmf_mac, "port": None, "peer": HF, "origin": "evpn", "age_s": None}
    wait_for(
        lambda: entry in fabric.show(0, "fdb"),
        10.0,
        what="sclp show fdb lists FRR's VM behind FRR with origin evpn",
    )
    peers = {r["address"]: r for r in fabric.show(0, "peers")}
    assert peers[HF]["origin"] == "evpn" and peers[HF]["protocol"] == "vxlan"
    assert peers[H2]["origin"] == "evpn" and peers[H2]["protocol"] == "vxlan-sclp"
    text = sclp_cli("stats", "--name", fabric.endpoints[0].name).stdout
    assert "bgp: AS 65001" in text and f"{HF} (AS 65000) established" in text


def test_ping_and_20_mib_both_ways_with_frrs_kernel_vtep(fabric: Fabric, tmp_path: Path) -> None:
    assert ping(fabric.ns["vm1"], VMF, count=3)
    assert ping(fabric.ns["vmf"], VM1, count=3)
    assert ping(fabric.ns["vm2"], VMF, count=3)  # the other endpoint: plain VXLAN too
    assert {r["address"]: r for r in fabric.show(1, "peers")}[HF]["protocol"] == "vxlan"
    # FRR floods to both of ours (their type-3 routes): its remote VTEPs, and the
    # kernel's all-zeros flood entries; an ARP request from FRR's VM reaches vm1.
    vni = json.loads(fabric.frr.vtysh("show evpn vni 42 json"))
    assert {H1, H2} <= set(_vteps(vni))
    fdb = run_in(fabric.ns["vmf-host"], ["bridge", "fdb", "show", "dev", "vxlan42"]).stdout
    for vtep in (H1, H2):
        assert f"00:00:00:00:00:00 dst {vtep} self permanent" in fdb
    run_in(fabric.ns["vmf"], ["ip", "neigh", "flush", "all"])
    assert ping(fabric.ns["vmf"], VM1, count=2)
    data = tmp_path / "20mib"
    data.write_bytes(os.urandom(20 << 20))
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    assert tcp_transfer(fabric.ns["vm1"], fabric.ns["vmf"], VMF, data, 60.0) == (20 << 20, digest)
    assert tcp_transfer(fabric.ns["vmf"], fabric.ns["vm1"], VM1, data, 60.0) == (20 << 20, digest)


def test_our_two_endpoints_speak_sclp_to_each_other(fabric: Fabric, tmp_path: Path) -> None:
    _e1, e2 = fabric.endpoints
    before = counters(e2.stats())
    data = tmp_path / "4mib"
    data.write_bytes(os.urandom(4 << 20))
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    assert tcp_transfer(fabric.ns["vm1"], fabric.ns["vm2"], VM2, data, 60.0) == (4 << 20, digest)
    moved = delta(before, counters(e2.stats()))
    assert moved["reasm_complete"] > 0  # SCLP payloads reassembled from segments
    assert moved["rx_packets"] > moved["reasm_complete"]  # several segments each


def test_a_detached_port_is_withdrawn_within_3_s(fabric: Fabric) -> None:
    host1 = fabric.ns["vm1-host"]
    vmx = fabric.topo.container(host1, "evmx", f"{VMX}/24", 1450)
    mac = link_mac(vmx, "eth0")
    wait_for(lambda: any(r["name"] == "evmx" for r in fabric.show(0, "ports")), 10.0, what="attach")
    assert ping(vmx, VMF, count=2, wait=3.0)
    wait_for(lambda: fabric.frr.remote_macs().get(mac) == H1, 10.0, what="FRR lists vmx's MAC")
    run_in(host1, ["ip", "link", "del", "evmx"])
    gone = time.monotonic()
    wait_for(lambda: mac not in fabric.frr.remote_macs(), 3.0, what="FRR drops vmx's MAC in 3 s")
    print(f"withdrawn at FRR {time.monotonic() - gone:.2f} s after the port went")


def test_bgpd_killed_its_routes_go_after_the_hold_time_and_ours_keep_forwarding(
    fabric: Fabric,
) -> None:
    e1 = fabric.endpoints[0]
    vmf_mac = link_mac(fabric.ns["vmf"], "eth0")
    fabric.frr.kill("bgpd")
    killed = time.monotonic()
    while time.monotonic() - killed < HOLD - 0.5:
        peers = {r["address"] for r in fabric.show(0, "peers")}
        assert HF in peers, "FRR's routes went before the hold time"
        assert ping(fabric.ns["vm1"], VM2, count=1, wait=1.0)
    wait_for(
        lambda: HF not in {r["address"] for r in fabric.show(0, "peers")},
        HOLD + 5.0,
        what="FRR's VTEP removed after the hold time",
    )
    assert not [r for r in fabric.show(0, "fdb") if r["mac"] == vmf_mac and r["origin"] == "evpn"]
    assert ping(fabric.ns["vm1"], VM2, count=3)
    assert re.search(r"session with 10\.0\.0\.3 down", e1.log_text())

"""Our VXLAN talks to Linux's: an ``sclp run`` endpoint with ``protocol = "vxlan"`` in
host 1 and a kernel ``vxlan`` device (VNI 42) in host 2, bridged to a veth into VM 2,
every device with its default offloads (no ``ethtool``: the kernel peer leaves inner
checksums partial over its veth underlay).  Ping and 20 MiB TCP transfers in both
directions must work, which checks our RFC 7348 encapsulation, the VM MTU (1450 on a
1500-byte underlay, the same as the kernel's), the software segmentation of TSO frames
and the delivery of partial inner checksums against an independent implementation.

Two kernel devices, each test runs against both: one made with ``dstport 4789`` (the
IANA port, our default), and one made the way ``ip link add ... type vxlan`` is most
often typed, without ``dstport``: the kernel then uses its own default, 8472 (iproute2
warns), and our endpoint is configured with ``underlay.vxlan_port = 8472``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sclp.io import netns as nsio
from sclp.lab.testbed import OVERLAY, UNDERLAY, VNI
from sclp.wire.vxlan import VXLAN_PORT

from .helpers import Endpoint, Topology, counters, delta, ping, run_in, tcp_transfer

pytestmark = [pytest.mark.netns]

VXLAN_VM_MTU = 1450  # 1500 - outer IPv4 (20) - UDP (8) - VXLAN (8) - inner Ethernet (14)
LINUX_DEFAULT_PORT = 8472  # what a Linux vxlan device made without dstport uses
# The kernel device's dstport argument (None: not given) and our endpoint's vxlan_port.
CASES = {
    "dstport-4789": (str(VXLAN_PORT), VXLAN_PORT),
    "no-dstport": (None, LINUX_DEFAULT_PORT),
}


@dataclass
class Mixed:
    hosts: list[str]
    vms: list[str]
    endpoint: Endpoint
    port: int  # the UDP port both sides use

    def kernel_vxlan(self) -> nsio.LinkInfo:
        with nsio.NetNS(self.hosts[1]) as ns:
            return ns.link_info("vx0")


def _ip(netns: str, *args: str) -> None:
    run_in(netns, ["ip", *args], timeout=10)


def _kernel_port(netns: str, dev: str) -> int:
    """The UDP destination port the kernel gave ``dev`` (``ip -d -j link``)."""
    shown = run_in(netns, ["ip", "-d", "-j", "link", "show", dev], timeout=10).stdout
    return int(json.loads(shown)[0]["linkinfo"]["info_data"]["port"])


@pytest.fixture(scope="module", params=sorted(CASES))
def mixed(request: pytest.FixtureRequest) -> Iterator[Mixed]:
    dstport, port = CASES[request.param]
    with Topology() as topo:
        hosts = topo.underlay_hosts("h1", "h2")
        vms = [topo.netns("vm1"), topo.netns("vm2")]
        # Host 2: the kernel's VXLAN, bridged to VM 2 (what an operator would type),
        # with dstport 4789 or without dstport (the kernel picks 8472; iproute2 warns).
        h2 = hosts[1]
        vxlan = ["id", str(VNI), "local", UNDERLAY[1], "remote", UNDERLAY[0], "nolearning"]
        if dstport is not None:
            vxlan += ["dstport", dstport]
        _ip(h2, "link", "add", "vx0", "type", "vxlan", *vxlan)
        assert _kernel_port(h2, "vx0") == port
        _ip(h2, "link", "add", "br0", "type", "bridge")
        nsio.create_veth("vm0", h2, "eth0", vms[1], mtu=VXLAN_VM_MTU)
        for dev in ("vx0", "vm0"):
            _ip(h2, "link", "set", dev, "master", "br0", "mtu", str(VXLAN_VM_MTU), "up")
        _ip(h2, "link", "set", "br0", "up")
        with nsio.NetNS(vms[1]) as ns:
            ns.add_address("eth0", f"{OVERLAY[1]}/24")
        # The kernel peer keeps its default offloads: its underlay veth claims transmit
        # checksum offload, so the inner TCP/UDP checksums of what vx0 sends arrive
        # partial (pseudo-header sum only) and our endpoint must hand them to VM 1
        # with NEEDS_CSUM (datapath._PARTIAL_VNET).  No ethtool on either side.
        with nsio.NetNS(h2) as ns:
            assert ns.get_offloads("ul0")["tx-checksum-ip-generic"]
            assert ns.get_offloads("vm0")["tx-checksum-ip-generic"]
        # Host 1: our endpoint, VM MTU left to its default, vxlan_port only when it is
        # not the default.
        name = topo.endpoint_name("h1")
        port_key = "" if port == VXLAN_PORT else f"vxlan_port = {port}\n"
        endpoint = topo.start_endpoint(
            name,
            f'name = "{name}"\n'
            "[underlay]\n"
            f'local = "{UNDERLAY[0]}"\n'
            f'namespace = "{hosts[0]}"\n'
            f"{port_key}"
            "[[network]]\n"
            f"vni = {VNI}\n"
            'protocol = "vxlan"\n'
            'tap = "tap0"\n'
            f'namespace = "{vms[0]}"\n'
            f'address = "{OVERLAY[0]}/24"\n'
            f'peers = ["{UNDERLAY[1]}"]\n',
        )
        yield Mixed(hosts, vms, endpoint, port)
        codes = topo.stop_endpoints()
        assert codes == [0], endpoint.log_text()[-500:]
    assert not topo.leftovers()


@pytest.mark.timeout(60)
def test_endpoint_uses_the_kernel_devices_port(mixed: Mixed) -> None:
    assert _kernel_port(mixed.hosts[1], "vx0") == mixed.port
    assert mixed.endpoint.stats()["underlay"]["vxlan_port"] == mixed.port
    listening = run_in(mixed.hosts[0], ["ss", "-Hlnu", f"sport = :{mixed.port}"]).stdout
    assert f"{UNDERLAY[0]}:{mixed.port}" in listening, listening


@pytest.mark.timeout(60)
def test_vm_mtu_matches_kernel_vxlan(mixed: Mixed) -> None:
    with nsio.NetNS(mixed.vms[0]) as ns:
        assert ns.link_info("tap0").mtu == VXLAN_VM_MTU
    assert mixed.endpoint.stats()["vni"][str(VNI)]["vm_mtu"] == VXLAN_VM_MTU


@pytest.mark.timeout(60)
def test_ping_with_kernel_vxlan(mixed: Mixed) -> None:
    kernel_before = mixed.kernel_vxlan()
    assert ping(mixed.vms[0], OVERLAY[1]), mixed.endpoint.log_text()
    assert ping(mixed.vms[1], OVERLAY[0]), mixed.endpoint.log_text()
    # Large echoes fill the 1450-byte MTU exactly: no fragmentation on either side.
    big = VXLAN_VM_MTU - 28
    result = run_in(
        mixed.vms[0],
        ["ping", "-c", "2", "-i", "0.2", "-W", "2", "-M", "do", "-s", str(big), OVERLAY[1]],
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    kernel_after = mixed.kernel_vxlan()
    assert kernel_after.rx_packets > kernel_before.rx_packets
    assert kernel_after.tx_packets > kernel_before.tx_packets


@pytest.mark.timeout(90)
@pytest.mark.parametrize("direction", ["sclp-to-kernel", "kernel-to-sclp"])
def test_tcp_transfer_with_kernel_vxlan(
    mixed: Mixed, payload: tuple[Path, str], direction: str
) -> None:
    path, digest = payload
    src, dst = (0, 1) if direction == "sclp-to-kernel" else (1, 0)
    before = counters(mixed.endpoint.stats())

    received, received_digest = tcp_transfer(mixed.vms[src], mixed.vms[dst], OVERLAY[dst], path)

    assert (received, received_digest) == (path.stat().st_size, digest)
    change = delta(before, counters(mixed.endpoint.stats()))
    data_bytes = "tx_bytes" if src == 0 else "rx_bytes"
    assert change[data_bytes] >= path.stat().st_size, change
    drops = {k: v for k, v in change.items() if k.startswith("drop_") and v}
    assert not drops, drops

"""``sclp show fdb|peers|ports`` against real endpoints: two VMs in namespaces (the
lab's Testbed), one ping between them, then the listings of host 1's endpoint, run as
``python -m sclp show ...`` in this namespace as an operator would."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from sclp.endpoint.control import query, socket_path
from sclp.io import netns as nsio
from sclp.lab.cluster import ClusterLab
from sclp.lab.testbed import UNDERLAY, VNI, Testbed

from ..endpoint.test_show import LIST_KEYS, documented_keys
from .helpers import Topology, link_mac, sclp_cli, shut_down, wait_for

pytestmark = [pytest.mark.netns]


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    tb = Testbed(protocol="vxlan-sclp", carrier="udp")
    tb.build()
    try:
        assert tb.ping(count=1).returncode == 0, "no ping across the tunnel"
        yield tb
    finally:
        shut_down(tb)


def show(tb: Testbed, what: str, *extra: str) -> list[dict[str, Any]]:
    return show_json(tb.endpoint_name(0), what, *extra)


def show_json(name: str, what: str, *extra: str) -> list[dict[str, Any]]:
    """``sclp show WHAT --name NAME --json``: its rows, whose keys are checked against
    docs/operations.md."""
    result = sclp_cli("show", what, "--name", name, "--json", *extra)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert list(printed) == ["name", LIST_KEYS[what]]
    assert printed["name"] == name
    rows: list[dict[str, Any]] = printed[LIST_KEYS[what]]
    for row in rows:
        assert list(row) == documented_keys()[what]
    return rows


@pytest.mark.timeout(60)
def test_the_fdb_has_the_remote_vm_behind_its_peer_and_the_local_one_behind_the_tap(
    bed: Testbed,
) -> None:
    entries = {row["mac"]: row for row in show(bed, "fdb")}
    remote = entries[link_mac(bed.vms[1], "tap0")]
    assert (remote["vni"], remote["peer"], remote["port"]) == (VNI, UNDERLAY[1], None)
    assert remote["origin"] == "learned" and 0 <= remote["age_s"] < 60
    local = entries[link_mac(bed.vms[0], "tap0")]
    assert (local["port"], local["peer"], local["origin"]) == ("tap0", None, "learned")


@pytest.mark.timeout(60)
def test_peers_list_the_configured_peer_with_frames_both_ways(bed: Testbed) -> None:
    (peer,) = show(bed, "peers")
    assert peer["address"] == UNDERLAY[1] and peer["origin"] == "static"
    assert (peer["vni"], peer["protocol"], peer["carrier"]) == (VNI, "vxlan-sclp", "udp")
    assert peer["tx_frames"] > 0 and peer["rx_frames"] > 0
    assert peer["tx_bytes"] >= 42 * peer["tx_frames"] and peer["rx_bytes"] > 0
    assert peer["last_heard_s"] is not None and peer["last_heard_s"] >= 0


@pytest.mark.timeout(60)
def test_ports_list_the_tap_with_its_mtu_and_ifindex(bed: Testbed) -> None:
    (port,) = show(bed, "ports")
    with nsio.NetNS(bed.vms[0]) as vm:
        info = vm.link_info("tap0")
        ifindex = vm.link_index("tap0")
    assert (port["name"], port["kind"], port["vni"]) == ("tap0", "tap", VNI)
    assert (port["mtu"], port["ifindex"]) == (info.mtu, ifindex)
    assert port["tx_frames"] > 0 and port["rx_frames"] > 0


@pytest.mark.timeout(60)
def test_the_table_and_the_errors(bed: Testbed) -> None:
    name = bed.endpoint_name(0)
    table = sclp_cli("show", "fdb", "--name", name, "--vni", str(VNI))
    assert table.returncode == 0, table.stderr
    assert f"vni {VNI}" in table.stdout and UNDERLAY[1] in table.stdout
    assert link_mac(bed.vms[1], "tap0") in table.stdout
    wrong = sclp_cli("show", "peers", "--name", name, "--vni", "4242")
    assert wrong.returncode == 1 and wrong.stdout == ""
    assert wrong.stderr == f"sclp: error: endpoint {name!r} has no vni 4242 (it serves: {VNI})\n"
    gone = sclp_cli("show", "ports", "--name", f"{name}x")
    assert gone.returncode == 1
    assert gone.stderr.startswith("sclp: error: no endpoint control socket")
    assert gone.stderr.count("\n") == 1


@pytest.mark.timeout(120)
def test_a_peer_found_through_the_cluster_registry_says_so() -> None:
    if shutil.which("etcd") is None and not os.access("/usr/bin/etcd", os.X_OK):
        pytest.fail("etcd is not installed: apt-get install etcd-server (./quickstart.sh does)")
    with ClusterLab(hosts=2, lease_ttl=3) as lab:
        lab.wait_full_mesh(timeout=30.0)
        first, second = lab.members
        assert lab.ping(first, second, count=1)
        name = first.name
        result = sclp_cli("show", "peers", "--name", name, "--control-dir", lab.control_dir)
        assert result.returncode == 0 and second.address in result.stdout, result
        (peer,) = show_json(name, "peers", "--control-dir", lab.control_dir)
        assert (peer["address"], peer["origin"]) == (second.address, "cluster")
        assert peer["tx_frames"] > 0 and peer["rx_frames"] > 0
    assert not lab.namespaces


@pytest.mark.timeout(90)
def test_an_attached_interface_is_listed_as_attached_with_its_ifindex() -> None:
    with Topology() as topo:
        host, _ = topo.underlay_hosts("sh1", "sh2")
        name = topo.endpoint_name("s1")
        topo.start_endpoint(
            name,
            f'name = "{name}"\n[underlay]\nlocal = "{UNDERLAY[0]}"\nnamespace = "{host}"\n'
            f'[[network]]\nvni = 43\nprotocol = "vxlan"\nattach = ["c43-*"]\nmtu = 1400\n'
            f'peers = ["{UNDERLAY[1]}"]\n',
        )
        topo.container(host, "c43-web", "192.168.79.1/24", 1400)

        def listed() -> bool:
            rows = query(socket_path(name), "show ports")["rows"]
            return any(row[1] == "c43-web" for row in rows)

        wait_for(listed, 2.0, what="c43-web attached")
        (port,) = show_json(name, "ports", "--vni", "43")
        with nsio.NetNS(host) as ns:
            ifindex = ns.link_index("c43-web")
        assert (port["kind"], port["ifindex"], port["mtu"]) == ("attached", ifindex, 1400)
        assert topo.stop_endpoints() == [0]
    assert not topo.leftovers()

"""The CNI data of ``sclp-cni`` without I/O: the environment, the network
configuration, the IPAM result and the result the runtime gets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sclp.cni import spec
from sclp.cni.ipam import IpamConf
from sclp.cni.spec import CniError, Environment, IpamResult, NetConf

CONTRIB = Path(__file__).resolve().parents[2] / "contrib" / "cni"


def _conf(**kw: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "cniVersion": "1.0.0",
        "name": "overlay42",
        "type": "sclp-cni",
        "endpoint": "host1",
        "vni": 42,
        "ipam": {"type": "host-local"},
    }
    conf.update(kw)
    return conf


def test_network_configuration() -> None:
    conf = NetConf.parse(_conf(controlDir="/tmp/ctl"))
    assert (conf.endpoint, conf.vni, conf.control_dir) == ("host1", 42, "/tmp/ctl")
    assert NetConf.parse(_conf()).control_dir == "/run/sclp"


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        ({"cniVersion": "0.2.0"}, spec.INCOMPATIBLE_VERSION, "cniVersion"),
        ({"vni": 1 << 24}, spec.INVALID_CONFIG, "vni"),
        ({"vni": True}, spec.INVALID_CONFIG, "vni"),
        ({"vni": "42"}, spec.INVALID_CONFIG, "vni"),
        ({"endpoint": "../etc"}, spec.INVALID_CONFIG, "endpoint"),
        ({"endpoint": None}, spec.INVALID_CONFIG, "endpoint"),
        ({"ipam": {}}, spec.INVALID_CONFIG, "ipam"),
        ({"ipam": {"type": "../x"}}, spec.INVALID_CONFIG, "ipam"),
        ({"controlDir": "relative"}, spec.INVALID_CONFIG, "controlDir"),
        ({"attachTimeout": 0}, spec.INVALID_CONFIG, "attachTimeout"),
    ],
)
def test_bad_configuration(change: dict[str, Any], code: int, words: str) -> None:
    with pytest.raises(CniError) as info:
        NetConf.parse(_conf(**change))
    assert info.value.code == code and words in info.value.msg


def test_environment() -> None:
    env = Environment.parse(
        {
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": "abc",
            "CNI_NETNS": "/run/netns/x",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": "/a::/b",
        }
    )
    assert env.path == ("/a", "/b")
    assert Environment.parse({"CNI_COMMAND": "VERSION"}).command == "VERSION"
    # DEL needs no namespace (the runtime may have deleted it already).
    assert (
        Environment.parse(
            {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "abc", "CNI_IFNAME": "eth0"}
        ).netns
        == ""
    )
    for bad in (
        {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc", "CNI_IFNAME": "eth0"},
        {"CNI_COMMAND": "FROB"},
        {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "a", "CNI_IFNAME": "eth0 x"},
    ):
        with pytest.raises(CniError) as info:
            Environment.parse(bad)
        assert info.value.code == spec.INVALID_ENVIRONMENT


def test_host_ifname_is_stable_short_and_distinct() -> None:
    a = spec.host_ifname("c1", "eth0")
    assert a == spec.host_ifname("c1", "eth0") and len(a) == 15 and a.startswith("sclp")
    assert a != spec.host_ifname("c1", "eth1") != spec.host_ifname("c2", "eth0")


def test_result_puts_the_addresses_on_the_container_interface() -> None:
    ipam = IpamResult.parse(
        {
            "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {"nameservers": ["10.1.0.1"]},
        }
    )
    assert str(ipam.route_gateway(ipam.routes[0])) == "10.1.0.1"
    host = spec.Interface("sclpabc", "aa:bb:cc:dd:ee:01")
    ct = spec.Interface("eth0", "aa:bb:cc:dd:ee:02", "/run/netns/x")
    result = spec.build_result("1.0.0", [host, ct], ipam, 1)
    assert result == {
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "sclpabc", "mac": "aa:bb:cc:dd:ee:01"},
            {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/run/netns/x"},
        ],
        "ips": [{"address": "10.1.0.5/24", "interface": 1, "gateway": "10.1.0.1"}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {"nameservers": ["10.1.0.1"]},
    }
    old = spec.build_result("0.4.0", [host, ct], ipam, 1)
    assert old["ips"][0]["version"] == "4"
    json.dumps(result)


def test_ipam_results_that_cannot_be_used() -> None:
    for bad in ({"ips": []}, {"ips": [{"address": "nonsense"}]}, {"ips": [{}]}):
        with pytest.raises(CniError) as info:
            IpamResult.parse(bad)
        assert info.value.code == spec.IPAM_FAILURE


def test_errors_and_version() -> None:
    err = CniError(spec.VNI_NOT_CONFIGURED, "vni 42 is not configured", "more")
    assert err.to_json() == {
        "cniVersion": "1.0.0",
        "code": 100,
        "msg": "vni 42 is not configured",
        "details": "more",
    }
    assert spec.version_result({"cniVersion": "0.4.0"})["cniVersion"] == "0.4.0"
    assert "1.0.0" in spec.version_result()["supportedVersions"]


def test_ipam_configuration() -> None:
    raw = _conf(
        ipam={
            "type": "sclp-ipam",
            "subnet": "10.42.0.0/24",
            "etcd": "http://127.0.0.1:2379",
            "routes": [{"dst": "0.0.0.0/0"}],
        }
    )
    conf = IpamConf.parse(raw)
    assert conf.member == "host1" and conf.pool.block_prefix == 28
    assert conf.root() == "/sclp/ipam/overlay42"
    for bad, words in (
        ({"subnet": "10.42.0.0/24"}, "etcd"),
        ({"etcd": ["http://x"]}, "subnet"),
        ({"etcd": ["http://x"], "subnet": "10.42.0.0/24", "blockSize": 20}, "blockSize"),
        ({"etcd": ["http://x"], "subnet": "10.42.0.0/24", "prefix": "sclp"}, "prefix"),
        ({"etcd": ["http://x"], "subnet": "10.42.0.0/24", "routes": [{}]}, "routes"),
    ):
        with pytest.raises(CniError) as info:
            IpamConf.parse(_conf(ipam={"type": "sclp-ipam", **bad}))
        assert info.value.code == spec.INVALID_CONFIG and words in info.value.msg


@pytest.mark.parametrize("name", ["overlay42.conflist", "overlay42-cluster.conflist"])
def test_the_shipped_conflists_are_valid(name: str) -> None:
    """contrib/cni/ (docs/containers.md): each plugin object parses as sclp-cni's
    configuration, and the cluster one's ipam as sclp-ipam's."""
    conflist = json.loads((CONTRIB / name).read_text())
    (plugin,) = conflist["plugins"]
    conf = {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **plugin}
    net = NetConf.parse(conf)
    assert (net.endpoint, net.vni) == ("host1", 42)
    if net.ipam["type"] == "sclp-ipam":
        ipam = IpamConf.parse(conf)
        assert ipam.member == "host1" and ipam.pool.block_prefix == 28
    else:
        assert net.ipam["type"] == "host-local"

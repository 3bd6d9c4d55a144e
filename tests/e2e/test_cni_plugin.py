"""``sclp-cni`` driven directly by the test acting as the runtime (the spec's
``CNI_*`` variables and the configuration on stdin), against two running endpoints
that have no ``attach`` pattern: ADD puts a namespace on VNI 42 (the endpoint attaches
the host end on request, before ADD returns), CHECK verifies, DEL undoes and is
idempotent, and every error is the spec's error object with a code and a fix."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sclp.cni.spec import host_ifname
from sclp.endpoint.control import query, socket_path
from sclp.io import netns as nsio

from .cni_helpers import VNI, TwoHosts, invoke
from .helpers import Topology, ping, wait_for

pytestmark = [pytest.mark.netns]


@pytest.fixture(scope="module")
def two() -> Iterator[TwoHosts]:
    with Topology() as topo:
        hosts = TwoHosts.start(topo)
        yield hosts
        codes = topo.stop_endpoints()
        assert codes == [0, 0], [ep.log_text()[-800:] for ep in hosts.endpoints]
    assert not topo.leftovers()


def _cni(two: TwoHosts) -> Path:
    return two.plugins / "sclp-cni"


def _add(two: TwoHosts, i: int, container: str, netns: str, **kw: object) -> dict:
    conf = two.network(i)
    conf.update(kw)
    code, out = invoke(
        _cni(two), "ADD", conf, container=container, netns=nsio.netns_path(netns),
        path=two.cni_path(),
    )  # fmt: skip
    assert code == 0, out
    assert out is not None
    return out


def _del(two: TwoHosts, i: int, container: str, netns: str) -> tuple[int, dict | None]:
    return invoke(
        _cni(two), "DEL", two.network(i), container=container, netns=netns,
        path=two.cni_path(),
    )  # fmt: skip


def _ports(two: TwoHosts, i: int) -> dict:
    ports: dict = two.endpoints[i].stats()["ports"]
    return ports


def _links(netns: str) -> set[str]:
    with nsio.NetNS(netns) as ns:
        return {link.get_attr("IFLA_IFNAME") for link in ns.ipr.get_links()}


def test_add_check_del_across_two_hosts(two: TwoHosts) -> None:
    ns = [two.topo.netns("ctA"), two.topo.netns("ctB")]
    ids = ["a" * 64, "b" * 64]
    results = [_add(two, i, ids[i], ns[i]) for i in range(2)]
    for i, result in enumerate(results):
        host = host_ifname(ids[i], "eth0")
        # The spec's result: the host end, the container end in its sandbox, the
        # address on interface 1 (the container's).
        assert result["cniVersion"] == "1.0.0"
        assert [iface["name"] for iface in result["interfaces"]] == [host, "eth0"]
        assert result["interfaces"][1]["sandbox"] == nsio.netns_path(ns[i])
        assert result["interfaces"][1]["mac"]
        assert result["ips"][0]["interface"] == 1
        assert result["ips"][0]["address"].startswith("192.168.83.")
        # Attached before ADD returned: no polling here.
        assert _ports(two, i)[host]["vni"] == VNI
        assert f"attached {host} (ifindex" in two.endpoints[i].log_text()
        # The container end has the network's VM MTU (1500 over VXLAN over SCLP);
        # the host end sits in the endpoint's namespace, not the runtime's.
        with nsio.NetNS(ns[i]) as inside:
            assert inside.link_info("eth0").mtu == 1500
        assert host in _links(two.hosts[i])
        assert host not in _links(None)  # type: ignore[arg-type]
    peer = results[1]["ips"][0]["address"].split("/")[0]
    assert ping(ns[0], peer, count=3)

    conf = two.network(0)
    conf["prevResult"] = results[0]
    code, out = invoke(
        _cni(two), "CHECK", conf, container=ids[0], netns=nsio.netns_path(ns[0]),
        path=two.cni_path(),
    )  # fmt: skip
    assert (code, out) == (0, None)

    # DEL: the port is detached (its FDB entries flushed), the veth gone, the
    # host-local lease released; a second DEL is no error.
    host = host_ifname(ids[0], "eth0")
    code, out = _del(two, 0, ids[0], nsio.netns_path(ns[0]))
    assert (code, out) == (0, None)
    assert host not in _ports(two, 0)
    log = two.endpoints[0].log_text()
    assert f"detached {host} from vni 42: detach requested" in log
    assert host not in _links(two.hosts[0])
    assert "eth0" not in _links(ns[0])
    lease_dir = two.topo.workdir / "host-local0" / "overlay42"
    assert not [p for p in lease_dir.iterdir() if p.name[0].isdigit()]
    assert _del(two, 0, ids[0], nsio.netns_path(ns[0])) == (0, None)
    # CHECK after DEL fails and says what is missing.
    code, out = invoke(
        _cni(two), "CHECK", conf, container=ids[0], netns=nsio.netns_path(ns[0]),
        path=two.cni_path(),
    )  # fmt: skip
    assert code != 0 and out is not None and "eth0" in out["msg"]

    # The runtime deleted the namespace first: DEL still succeeds and frees all.
    nsio.delete_netns(ns[1])
    wait_for(lambda: host_ifname(ids[1], "eth0") not in _ports(two, 1), 5, what="port detached")
    assert _del(two, 1, ids[1], nsio.netns_path(ns[1])) == (0, None)
    assert "interface gone" in two.endpoints[1].log_text()


def test_check_notices_a_missing_address(two: TwoHosts) -> None:
    ns = two.topo.netns("ctC")
    cid = "c" * 64
    result = _add(two, 0, cid, ns)
    try:
        with nsio.NetNS(ns) as inside:
            inside.ipr.flush_addr(label="eth0")
        conf = two.network(0)
        conf["prevResult"] = result
        code, out = invoke(
            _cni(two), "CHECK", conf, container=cid, netns=nsio.netns_path(ns),
            path=two.cni_path(),
        )  # fmt: skip
        assert code == 1 and out is not None
        assert out["code"] == 104 and result["ips"][0]["address"] in out["msg"]
    finally:
        assert _del(two, 0, cid, nsio.netns_path(ns)) == (0, None)


def _error(two: TwoHosts, conf: dict | bytes, netns: str, **kw: str) -> dict:
    kw.setdefault("path", two.cni_path())
    code, out = invoke(_cni(two), "ADD", conf, container="e" * 64, netns=netns, **kw)  # type: ignore[arg-type]
    assert code == 1, out
    assert out is not None and set(out) >= {"cniVersion", "code", "msg"}, out
    return out


def test_errors_are_the_specs_and_name_the_fix(two: TwoHosts) -> None:
    ns = two.topo.netns("ctE")
    path = nsio.netns_path(ns)
    host = host_ifname("e" * 64, "eth0")

    conf = two.network(0)
    conf["endpoint"] = "nosuchendpoint"
    out = _error(two, conf, path)
    assert out["code"] == 11 and "not running" in out["msg"] and "sclp run" in out["msg"]

    conf = two.network(0)
    conf["vni"] = 43
    out = _error(two, conf, path)
    assert out["code"] == 100 and "vni 43 is not configured" in out["msg"]
    assert "sclp reload" in out["msg"]

    conf = two.network(0)
    conf["ipam"] = {"type": "no-such-ipam"}
    out = _error(two, conf, path)
    assert out["code"] == 102 and "CNI_PATH" in out["msg"]

    # The IPAM plugin's own error comes through with its code; nothing is left over.
    conf = two.network(0)
    conf["ipam"] = {"type": "host-local"}  # no ranges: host-local refuses
    out = _error(two, conf, path)
    assert out["msg"].startswith("IPAM plugin host-local:")

    conf = two.network(0)
    conf["cniVersion"] = "9.9.9"
    assert _error(two, conf, path)["code"] == 1
    assert _error(two, b"{not json", path)["code"] == 6
    conf = two.network(0)
    del conf["vni"]
    assert _error(two, conf, path)["code"] == 7
    assert _error(two, two.network(0), path, path="")["code"] == 4  # no CNI_PATH
    assert _error(two, two.network(0), "/run/netns/no-such-ns")["code"] == 3

    assert host not in _links(two.hosts[0])
    assert "eth0" not in _links(ns)
    assert host not in _links(None)  # type: ignore[arg-type]
    lease_dir = two.topo.workdir / "host-local0" / "overlay42"
    if lease_dir.exists():
        assert not [p for p in lease_dir.iterdir() if p.name[0].isdigit()]


def test_version(two: TwoHosts) -> None:
    code, out = invoke(_cni(two), "VERSION", b'{"cniVersion": "1.0.0"}')
    assert code == 0 and out is not None
    assert out["cniVersion"] == "1.0.0" and "1.0.0" in out["supportedVersions"]
    code, out = invoke(_cni(two), "NOPE", b"{}")
    assert code == 1 and out is not None and out["code"] == 4
    assert "ADD, DEL, CHECK, VERSION" in out["msg"]
    # A person running it gets a word on what it is.
    help_text = subprocess.run(
        [str(_cni(two)), "--help"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert "container runtimes run it" in help_text and "docs/containers.md" in help_text


def test_a_port_follows_its_network_through_a_reload(two: TwoHosts) -> None:
    """A reload that re-creates the network (another protocol) detaches the port with
    it and attaches it again; one that removes the VNI detaches it."""
    ns = two.topo.netns("ctR")
    cid = "d" * 64
    host = host_ifname(cid, "eth0")
    _add(two, 0, cid, ns)
    endpoint = two.endpoints[0]
    path = two.topo.workdir / f"{endpoint.name}.toml"
    original = path.read_text()
    try:
        path.write_text(original.replace('protocol = "vxlan-sclp"', 'protocol = "geneve-sclp"'))
        assert _reload(two)["ok"]
        assert _ports(two, 0)[host]["vni"] == VNI
        assert "to vni 42 geneve-sclp" in endpoint.log_text()
        path.write_text(original.replace("vni = 42", "vni = 44"))
        assert _reload(two)["ok"]
        assert host not in _ports(two, 0)
        path.write_text(original)
        assert _reload(two)["ok"]
        assert _ports(two, 0)[host]["vni"] == VNI  # still requested: attached again
    finally:
        path.write_text(original)
        _reload(two)
        assert _del(two, 0, cid, nsio.netns_path(ns)) == (0, None)
    assert host not in _ports(two, 0)


def _reload(two: TwoHosts) -> dict:
    answer: dict = query(socket_path(two.endpoints[0].name), "reload")
    return answer

"""SIGHUP reconciles a running endpoint to its edited file: a network added and then
removed, peers replaced, while the traffic of the network that did not change goes on
(a ping running across both reloads loses nothing).

Two hosts on a veth underlay; containers (namespaces behind veths) attached by
pattern, as in test_attach.py.  VNI 42 stays; VNI 43 comes and goes.

``sclp reload --name N`` does the same over the control socket and prints what
changed; an invalid file is one error line, exit 1, and the endpoint serves on.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sclp.io import nft
from sclp.io.linux import IPPROTO_SCLP
from sclp.lab.testbed import OVERLAY, UNDERLAY, Testbed

from .helpers import Endpoint, Topology, ping, popen_in, sclp_cli, shut_down, wait_for

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


# -- sclp reload: the same over the control socket -------------------------------------

EXTRA_PEER = "10.77.0.9"  # on the underlay's subnet, nobody there: a peer that never answers


@pytest.fixture(scope="module")
def testbed() -> Iterator[Testbed]:
    tb = Testbed(protocol="vxlan-sclp", carrier="udp")
    try:
        tb.build()
        yield tb
    finally:
        shut_down(tb)


def _config_file(tb: Testbed) -> Path:
    assert tb.workdir is not None
    return tb.workdir / "h1.toml"


def _reload(tb: Testbed, *extra: str) -> tuple[int, str, str]:
    result = sclp_cli("reload", "--name", tb.endpoint_name(0), *extra)
    return result.returncode, result.stdout, result.stderr


@pytest.mark.timeout(90)
def test_sclp_reload_prints_the_peers_that_changed(testbed: Testbed) -> None:
    path, name = _config_file(testbed), testbed.endpoint_name(0)
    original = testbed.config_text(0)
    assert ping(testbed.vms[0], OVERLAY[1], count=1)
    path.write_text(original.replace(f'peers = ["{UNDERLAY[1]}"]', f'peers = ["{EXTRA_PEER}"]'))
    try:
        code, out, err = _reload(testbed)
        assert code == 0, err
        assert err == ""
        assert out.splitlines() == [
            f"reloaded {name} from {path}:",
            f"  vni 42: peer {EXTRA_PEER} joined",
            f"  vni 42: peer {UNDERLAY[1]} left",
        ], out
        assert testbed.stats(0)["vni"]["42"]["peers"] == [EXTRA_PEER]
        assert not ping(testbed.vms[0], OVERLAY[1], count=1, wait=1.0)  # really replaced
    finally:
        path.write_text(original)
        code, out, err = _reload(testbed, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] and report["path"] == str(path)
    assert report["peers"] == [{"vni": 42, "joined": [UNDERLAY[1]], "left": [EXTRA_PEER]}]
    assert report["added"] == report["removed"] == report["recreated"] == []
    assert ping(testbed.vms[0], OVERLAY[1], count=1)
    code, out, _ = _reload(testbed)  # the same file again: nothing to do
    assert code == 0 and out.splitlines()[1:] == ["  unchanged"], out
    log = testbed.log_text(0)
    assert f"vni 42: peer {EXTRA_PEER} joined" in log  # logged as after SIGHUP
    assert "sclp reload: " in log and "re-read, unchanged" in log


@pytest.mark.timeout(90)
def test_sclp_reload_of_a_broken_file_changes_nothing(testbed: Testbed) -> None:
    path = _config_file(testbed)
    original = testbed.config_text(0)
    path.write_text(original.replace("vni = 42", "vni = 42\npeer = []"))  # unknown key
    try:
        code, out, err = _reload(testbed)
        assert code == 1, (out, err)
        assert out == ""
        lines = err.splitlines()
        assert len(lines) == 1 and "Traceback" not in err, err
        assert lines[0].startswith("sclp: error: "), lines
        assert f"{path}: network[0].peer (line 8): unknown key" in lines[0], lines
        assert "still running the previous configuration" in lines[0], lines
        path.write_text('name = "broken\n')  # not TOML at all
        code, out, err = _reload(testbed)
        assert code == 1 and "not valid TOML" in err and len(err.splitlines()) == 1, err
    finally:
        path.write_text(original)
    assert testbed.endpoints[0].poll() is None
    stats = testbed.stats(0)  # the control socket still answers
    assert stats["vni"]["42"]["peers"] == [UNDERLAY[1]]
    assert ping(testbed.vms[0], OVERLAY[1], count=3)  # and traffic still flows


@pytest.mark.timeout(90)
def test_sclp_reload_names_a_network_it_could_not_add(testbed: Testbed) -> None:
    path, name = _config_file(testbed), testbed.endpoint_name(0)
    original = testbed.config_text(0)
    missing = f"sclp-{testbed.tag}-nosuch"
    path.write_text(
        original + f'[[network]]\nvni = 44\ntap = "tap44"\nnamespace = "{missing}"\n'
        '[[network]]\nvni = 45\nprotocol = "vxlan"\nattach = ["t45-*"]\n'
    )
    try:
        code, out, err = _reload(testbed)
    finally:
        path.write_text(original)
    assert code == 1, (out, err)
    assert out.splitlines() == [
        f"reloaded {name} from {path}:",
        "  vni 45 added",
        f"  vni 44 not added: network namespace '{missing}' (vni 44) does not exist; "
        f"create it with: ip netns add {missing}",
    ], out
    assert err == "sclp: error: vni 44 not added (see above); fix the file and reload again\n"
    assert sorted(testbed.stats(0)["vni"]) == ["42", "45"]
    code, out, err = _reload(testbed)  # back to the file it started with
    assert code == 0 and out.splitlines()[1:] == ["  vni 45 removed"], (out, err)
    assert ping(testbed.vms[0], OVERLAY[1], count=1)


@pytest.mark.timeout(30)
def test_sclp_reload_without_an_endpoint_is_one_error_line(tmp_path: Path) -> None:
    result = sclp_cli("reload", "--name", "nosuchep", "--control-dir", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.startswith("sclp: error: no endpoint control socket at ")
    assert len(result.stderr.splitlines()) == 1 and result.stdout == ""

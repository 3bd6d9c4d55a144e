"""``sclp-ipam`` against a real etcd: three hosts allocating at once never hand out
the same address, each from blocks it holds under its member lease; DEL frees an
address; a host whose lease expires loses its blocks and addresses to the others;
and the plugin itself (run as a runtime runs it) answers ADD, CHECK, DEL and errors
with the spec's objects."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sclp.cluster.etcd import Etcd
from sclp.cluster.model import member_key
from sclp.cni.ipam import IpamConf, Leases, allocate, release
from tests.cluster.conftest import EtcdMember

SRC = Path(__file__).resolve().parents[2] / "src"
HOSTS = ("host1", "host2", "host3")
PER_HOST = 20


DATA: dict[str, str] = {}  # dataDir of the test running (its tmp_path)


def _raw(url: str, member: str, subnet: str = "10.42.0.0/24") -> dict[str, Any]:
    ipam = {"type": "sclp-ipam", "subnet": subnet, "blockSize": 28, "etcd": [url]}
    ipam["dataDir"] = f"{DATA['dir']}/{member}"  # each host its own record
    return {
        "cniVersion": "1.0.0",
        "name": "overlay42",
        "type": "sclp-cni",
        "endpoint": member,
        "vni": 42,
        "ipam": ipam,
    }


@pytest.fixture(autouse=True)
def _data_dir(tmp_path: Path) -> Iterator[None]:
    DATA["dir"] = str(tmp_path / "ipam")
    yield
    DATA.clear()


def _register(etcd: Etcd, name: str, ttl: int = 30) -> int:
    """What `sclp run` with [cluster] keeps: the member key under its lease."""
    lease = etcd.grant(ttl)
    etcd.put(member_key("/sclp", name), b'{"address": "10.77.0.1"}', lease)
    return lease


def test_three_hosts_allocating_at_once_never_collide(etcd: EtcdMember) -> None:
    admin = Etcd([etcd.url])
    leases = {host: _register(admin, host) for host in HOSTS}
    got: dict[str, list[ipaddress.IPv4Address | ipaddress.IPv6Address]] = {h: [] for h in HOSTS}
    errors: list[BaseException] = []
    start = threading.Barrier(len(HOSTS))

    def host(name: str) -> None:
        client = Etcd([etcd.url])
        conf = IpamConf.parse(_raw(etcd.url, name))
        try:
            start.wait()
            for n in range(PER_HOST):
                got[name].append(allocate(client, conf, f"{name}-c{n}", "eth0"))
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=host, args=(h,)) for h in HOSTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    everyone = [a for addresses in got.values() for a in addresses]
    assert len(everyone) == len(HOSTS) * PER_HOST
    assert len(set(everyone)) == len(everyone), "an address was handed out twice"

    conf = IpamConf.parse(_raw(etcd.url, "host1"))
    state = Leases.read(admin, conf)
    for name, addresses in got.items():
        for address in addresses:
            holder, lease = state.blocks[conf.pool.block_of(address)]
            assert (holder, lease) == (name, leases[name])
            assert conf.pool.usable(address)
        # 20 addresses in /28 blocks: two blocks (the first one skips .0 if it has it).
        assert 2 <= sum(1 for h, _ in state.blocks.values() if h == name) <= 3

    # DEL frees the address; ADD again for the same container gets the same one back.
    conf1 = IpamConf.parse(_raw(etcd.url, "host1"))
    first = got["host1"][0]
    assert allocate(admin, conf1, "host1-c0", "eth0") == first
    assert release(admin, conf1, "host1-c0", "eth0") == [first]
    assert release(admin, conf1, "host1-c0", "eth0") == []
    assert first not in Leases.read(admin, conf1).addrs

    # host3 dies: its lease expires (revoked here), its blocks and addresses go with it.
    admin.revoke(leases["host3"])
    state = Leases.read(admin, conf1)
    assert not [h for h, _ in state.blocks.values() if h == "host3"]
    assert not [a for a in state.addrs if a in got["host3"]]
    # ... and the others can take them: host2 fills the whole subnet.
    conf2 = IpamConf.parse(_raw(etcd.url, "host2"))
    n = 0
    while True:
        try:
            allocate(admin, conf2, f"fill{n}", "eth0")
        except Exception as exc:
            assert "every /28 block" in str(exc)
            break
        n += 1
    state = Leases.read(admin, conf2)
    assert {h for h, _ in state.blocks.values()} == {"host1", "host2"}
    assert set(got["host3"]) <= set(state.addrs)  # reused by host2
    admin.close()


def _plugin(command: str, conf: dict[str, Any], container: str = "ct1") -> tuple[int, Any]:
    env = dict(os.environ)
    env.update(
        {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container,
            "CNI_NETNS": "/run/netns/whatever",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": "/nonexistent",
            "PYTHONPATH": str(SRC),
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "sclp.cni.ipam"], input=json.dumps(conf).encode(), env=env,
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    out = proc.stdout.strip()
    return proc.returncode, json.loads(out) if out else None


def test_the_plugin_as_a_runtime_runs_it(etcd: EtcdMember) -> None:
    admin = Etcd([etcd.url])
    conf = _raw(etcd.url, "host1")
    code, out = _plugin("ADD", conf)
    assert code == 1 and out["code"] == 11
    assert "not registered" in out["msg"] and "sclp run" in out["msg"]

    _register(admin, "host1")
    code, out = _plugin("ADD", conf)
    assert code == 0, out
    assert out["cniVersion"] == "1.0.0"
    (ip,) = out["ips"]
    assert ipaddress.ip_interface(ip["address"]).network == ipaddress.ip_network("10.42.0.0/24")
    assert _plugin("ADD", conf)[1] == out  # ADD again: the same lease
    assert _plugin("CHECK", conf) == (0, None)
    assert _plugin("DEL", conf) == (0, None)
    assert _plugin("DEL", conf) == (0, None)  # idempotent
    code, out = _plugin("CHECK", conf)
    assert code == 1 and "no address lease" in out["msg"]

    bad = _raw("http://127.0.0.1:1", "host1")
    code, out = _plugin("ADD", bad)
    assert code == 1 and out["code"] == 11 and "etcd" in out["msg"]
    small = _raw(etcd.url, "host1", subnet="10.43.0.0/28")
    assert _plugin("ADD", small, "a")[0] == 0
    for n in range(13):
        _plugin("ADD", small, f"b{n}")
    code, out = _plugin("ADD", small, "last")
    assert code == 1 and out["code"] == 103 and "larger subnet" in out["msg"]
    admin.close()


def test_a_restarted_endpoint_gets_its_addresses_back(etcd: EtcdMember) -> None:
    """A clean stop revokes the member lease (its keys go at once); after the restart
    the next plugin run puts the host's addresses back under the new lease, from its
    own record; one taken by another host meanwhile is a conflict CHECK reports."""
    admin = Etcd([etcd.url])
    conf = _raw(etcd.url, "host1")
    old = _register(admin, "host1")
    first = _plugin("ADD", conf, "ct1")[1]["ips"][0]["address"]
    second = _plugin("ADD", conf, "ct2")[1]["ips"][0]["address"]
    admin.revoke(old)  # `sclp run` stopped
    parsed = IpamConf.parse(conf)
    assert Leases.read(admin, parsed).addrs == {}
    new = _register(admin, "host1")  # ... and started again
    code, out = _plugin("ADD", conf, "ct3")
    assert code == 0, out
    third = out["ips"][0]["address"]
    assert third not in (first, second)  # the lost ones were not handed out again
    state = Leases.read(admin, parsed)
    assert {str(a) for a in state.addrs} == {a.split("/")[0] for a in (first, second, third)}
    assert {lease for _, lease in state.blocks.values()} == {new}
    assert _plugin("CHECK", conf, "ct1") == (0, None)

    # Stopped again, and host2 takes host1's block meanwhile: ct1's address is lost.
    admin.revoke(new)
    other = _register(admin, "host2")
    block = parsed.pool.block_of(ipaddress.ip_address(first.split("/")[0]))
    assert admin.create(parsed.block_key(block), b"host2", other)
    _register(admin, "host1")
    code, out = _plugin("CHECK", conf, "ct1")
    assert code == 1 and "now held by host2" in out["msg"] and "re-create" in out["msg"]
    assert _plugin("DEL", conf, "ct1") == (0, None)
    admin.close()

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
from pathlib import Path
from typing import Any

from sclp.cluster.etcd import Etcd
from sclp.cluster.model import member_key
from sclp.cni.ipam import IpamConf, Leases, allocate, release
from tests.cluster.conftest import EtcdMember

SRC = Path(__file__).resolve().parents[2] / "src"
HOSTS = ("host1", "host2", "host3")
PER_HOST = 20


def _raw(url: str, member: str, subnet: str = "10.42.0.0/24") -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "overlay42",
        "type": "sclp-cni",
        "endpoint": member,
        "vni": 42,
        "ipam": {"type": "sclp-ipam", "subnet": subnet, "blockSize": 28, "etcd": [url]},
    }


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

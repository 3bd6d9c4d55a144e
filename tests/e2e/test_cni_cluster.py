"""The whole chain with cluster-wide addresses: two endpoints with ``[cluster]`` (no
peers in their files) and a real etcd; ``sclp-cni`` ADD with ``sclp-ipam`` on both
hosts; the containers get distinct addresses from blocks their host holds under its
member lease, reach each other across the overlay, DEL frees the address in etcd, and
a host that dies loses its blocks when its lease expires.

Here the runtime (this test) runs the plugin inside the host's namespace, where etcd
is reachable over the underlay; the plugin then finds the endpoint's namespace to be
its own."""

from __future__ import annotations

import ipaddress
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from sclp.cluster.etcd import Etcd
from sclp.cni.ipam import IpamConf, Leases
from sclp.io import netns as nsio
from sclp.lab.testbed import UNDERLAY

from .cni_helpers import TwoHosts, invoke
from .helpers import Topology, ping, wait_for

pytestmark = [pytest.mark.netns]

ETCD = "/usr/bin/etcd"
CLIENT = f"http://{UNDERLAY[0]}:2379"


@dataclass
class Cluster:
    two: TwoHosts
    etcd: subprocess.Popen[bytes]

    def conf(self, i: int) -> dict[str, Any]:
        return self.two.network(
            i,
            {
                "type": "sclp-ipam",
                "subnet": "192.168.84.0/24",
                "blockSize": 28,
                "etcd": [CLIENT],
                "dataDir": str(self.two.topo.workdir / f"ipam{i}"),
            },
        )

    def cni(self, i: int, command: str, container: str, netns: str = "") -> tuple[int, Any]:
        return invoke(
            self.two.plugins / "sclp-cni", command, self.conf(i), container=container,
            netns=netns, path=self.two.cni_path(),
            prefix=["ip", "netns", "exec", self.two.hosts[i]],
        )  # fmt: skip

    def leases(self) -> Leases:
        conf = IpamConf.parse(self.conf(0))
        with nsio.run_in_netns(self.two.hosts[0]):
            client = Etcd([CLIENT])
            try:
                return Leases.read(client, conf)
            finally:
                client.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if shutil.which("etcd") is None and not shutil.which(ETCD):
        pytest.fail("etcd is not installed: apt-get install etcd-server (./quickstart.sh does)")
    with Topology() as topo:
        hosts = topo.underlay_hosts("kh1", "kh2")
        data = topo.workdir / "etcd"
        log = (topo.workdir / "etcd.log").open("wb")
        etcd = subprocess.Popen(
            ["ip", "netns", "exec", hosts[0], ETCD, "--name", "e0", "--data-dir", str(data),
             "--listen-client-urls", CLIENT, "--advertise-client-urls", CLIENT,
             "--listen-peer-urls", "http://127.0.0.1:2380",
             "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
             "--initial-cluster", "e0=http://127.0.0.1:2380"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        try:
            extra = f'[cluster]\netcd = ["{CLIENT}"]\nlease_ttl = 3\n'
            two = TwoHosts.start(topo, hosts=hosts, extra=extra, peers=False)
            for ep in two.endpoints:
                wait_for(
                    lambda ep=ep: (ep.stats()["cluster"] or {}).get("members") == 2,
                    20,
                    what=f"{ep.name} sees both members",
                )
            yield Cluster(two, etcd)
        finally:
            etcd.send_signal(signal.SIGTERM)
            etcd.wait(10)
    assert not topo.leftovers()


def test_addresses_from_etcd_across_two_hosts(cluster: Cluster) -> None:
    topo = cluster.two.topo
    ns = [topo.netns("kc1"), topo.netns("kc2"), topo.netns("kc3")]
    placed = [(0, "1" * 64, ns[0]), (0, "2" * 64, ns[1]), (1, "3" * 64, ns[2])]
    addresses = []
    for host, cid, netns in placed:
        code, out = cluster.cni(host, "ADD", cid, nsio.netns_path(netns))
        assert code == 0, out
        addresses.append(out["ips"][0]["address"].split("/")[0])
    assert len(set(addresses)) == 3
    state = cluster.leases()
    conf = IpamConf.parse(cluster.conf(0))
    names = [ep.name for ep in cluster.two.endpoints]
    for (host, cid, _), address in zip(placed, addresses, strict=True):
        record, _raw = state.addrs[_ip(address)]
        assert record["container"] == cid and record["member"] == names[host]
        assert state.blocks[conf.pool.block_of(_ip(address))][0] == names[host]
    assert ping(ns[0], addresses[2], count=3)  # host 1 -> host 2, peers found through etcd
    assert ping(ns[2], addresses[1], count=3)

    code, out = cluster.cni(0, "DEL", "1" * 64, nsio.netns_path(ns[0]))
    assert (code, out) == (0, None)
    assert _ip(addresses[0]) not in cluster.leases().addrs

    # Host 2's endpoint dies: within its lease TTL (3 s) its blocks and addresses go.
    ep2 = cluster.two.endpoints[1]
    ep2.proc.send_signal(signal.SIGKILL)
    ep2.proc.wait(5)
    wait_for(
        lambda: not [b for b, (m, _) in cluster.leases().blocks.items() if m == names[1]],
        10,
        what="host 2's blocks reclaimed",
    )
    assert _ip(addresses[2]) not in cluster.leases().addrs
    assert _ip(addresses[1]) in cluster.leases().addrs  # host 1's stay
    # A DEL on the dead host's container is still no error (nothing left to free).
    code, out = cluster.cni(1, "DEL", "3" * 64, nsio.netns_path(ns[2]))
    assert (code, out) == (0, None), out


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)

"""Path MTU inside the tunnel, on real endpoints: containers whose MTU is larger than
the VXLAN network's VM MTU (1450 on a 1500-byte underlay) reach the other host by
path MTU discovery, never by outer IP fragments (RFC 7348 §4.3).

Two host namespaces joined by a veth underlay, a VXLAN endpoint in each attaching
``c42-*``; on each host a container (a namespace behind a veth) with MTU 1500 or 9000.
Checked: a byte-exact TCP transfer (SHA-256) from one container to the other with zero
fragmented packets on the underlay (dumpcap on ``ul0``, counted by tshark with
``ip.flags.mf==1 || ip.frag_offset>0``); the sending container received ICMP
"fragmentation needed" naming 1450 (tshark: type 3, code 4, MTU 1450); a DF ping of
1,472 bytes reports ``mtu = 1450`` instead of failing locally.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sclp.lab.testbed import UNDERLAY

from .helpers import Topology, popen_in, run_in, stop, tcp_transfer, wait_for

pytestmark = [pytest.mark.netns]

SUBNET = "192.168.81"
DUMPCAP = shutil.which("dumpcap")
TSHARK = shutil.which("tshark")


def _config(topo: Topology, i: int, hosts: list[str]) -> str:
    return (
        f'name = "{topo.endpoint_name(f"m{i + 1}")}"\n'
        f'[underlay]\nlocal = "{UNDERLAY[i]}"\nnamespace = "{hosts[i]}"\n'
        '[[network]]\nvni = 42\nprotocol = "vxlan"\nattach = ["c42-*"]\n'
        f'peers = ["{UNDERLAY[1 - i]}"]\n'
    )


def _capture(netns: str, ifname: str, path: Path) -> subprocess.Popen[str]:
    assert DUMPCAP is not None
    proc = popen_in(netns, [DUMPCAP, "-q", "-P", "-i", ifname, "-w", str(path)])
    wait_for(lambda: path.exists() and path.stat().st_size >= 24, 10.0, what="dumpcap")
    return proc


def _tshark(path: Path, display_filter: str, *fields: str) -> list[str]:
    assert TSHARK is not None
    args = [TSHARK, "-r", str(path), "-Y", display_filter, "-T", "fields"]
    for name in fields or ("frame.number",):
        args += ["-e", name]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    return [line for line in out.splitlines() if line.strip()]


@pytest.fixture
def topo() -> Iterator[Topology]:
    with Topology() as topo:
        yield topo
        codes = topo.stop_endpoints()
        assert codes == [0, 0], [ep.log_text()[-800:] for ep in topo.endpoints]
    assert not topo.leftovers()


@pytest.mark.skipif(DUMPCAP is None or TSHARK is None, reason="needs dumpcap and tshark")
@pytest.mark.timeout(150)
@pytest.mark.parametrize("mtu", [1500, 9000])
def test_larger_containers_use_path_mtu_discovery_not_outer_fragments(
    topo: Topology, tmp_path: Path, mtu: int
) -> None:
    hosts = topo.underlay_hosts("mh1", "mh2")
    endpoints = [
        topo.start_endpoint(ep, _config(topo, i, hosts))
        for i, ep in enumerate(topo.endpoint_name(f"m{i + 1}") for i in range(2))
    ]
    src = topo.container(hosts[0], "c42-src", f"{SUBNET}.1/24", mtu)
    dst = topo.container(hosts[1], "c42-dst", f"{SUBNET}.2/24", mtu)
    for ep, name in zip(endpoints, ("c42-src", "c42-dst"), strict=True):
        wait_for(lambda e=ep, n=name: n in e.stats()["ports"], 5.0, what=f"{name} attached")
    assert endpoints[0].stats()["vni"]["42"]["vm_mtu"] == 1450
    wait_for(
        lambda: run_in(src, ["ping", "-c1", "-W1", f"{SUBNET}.2"], check=False).returncode == 0,
        10.0,
        what="src reaches dst",
    )
    underlay_pcap, inner_pcap = tmp_path / "ul0.pcap", tmp_path / "eth0.pcap"
    captures = [_capture(hosts[0], "ul0", underlay_pcap), _capture(src, "eth0", inner_pcap)]
    try:
        data = os.urandom(4 << 20)
        payload = tmp_path / "payload.bin"
        payload.write_bytes(data)
        received = tcp_transfer(src, dst, f"{SUBNET}.2", payload, timeout=60.0)
        assert received == (len(data), hashlib.sha256(data).hexdigest())
        pinged = run_in(
            src,
            ["ping", "-c2", "-i", "0.3", "-W1", "-M", "do", "-s", "1472", f"{SUBNET}.2"],
            check=False,
        )
        assert re.search(r"mtu ?= ?1450", pinged.stdout + pinged.stderr), pinged
        assert "No buffer space" not in pinged.stderr, pinged
    finally:
        for proc in captures:
            stop(proc)
    # The capture saw the transfer (UDP GSO sends show as one large skb each).
    lengths = _tshark(underlay_pcap, "udp.dstport == 4789", "frame.len")
    assert sum(int(n) for n in lengths) > 4 << 20, len(lengths)
    assert _tshark(underlay_pcap, "ip.flags.mf == 1 || ip.frag_offset > 0") == []
    icmp = _tshark(inner_pcap, "icmp.type == 3", "icmp.type", "icmp.code", "icmp.mtu")
    assert icmp and set(icmp) == {"3\t4\t1450"}, icmp
    stats = endpoints[0].stats()["counters"]
    assert stats["icmp_too_big_sent"] >= 1 and stats["drop_too_big"] >= 1, stats

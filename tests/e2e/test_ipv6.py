"""Every tunnel protocol and SCLP carrier over an IPv6 underlay: two VMs (IPv4
overlay) behind two ``sclp run`` endpoints whose underlay veth has only IPv6
addresses (``Testbed(underlay_family=6)``).  Each case pings both ways, moves 20 MiB
over TCP intact (SHA-256), and the endpoints report the IPv6 underlay and, for the
classic tunnels, the VM MTU for IPv6's 40-byte header.  Three cases run again with
loss, reordering and bit errors injected on the underlay, three with the unbatched
receive path, and the classic tunnels with a VM MTU above the default (fragmented
outer packets).

One testbed per case (module scope), shared by the checks on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sclp.io import nft
from sclp.lab import testbed as sclp_testbed
from sclp.lab.testbed import OVERLAY, UNDERLAY6

from .helpers import counters, delta, ping, run_in, shut_down, tcp_transfer

pytestmark = [pytest.mark.netns]

CASES = [
    ("vxlan", "ip"),
    ("geneve", "ip"),
    ("nvgre", "ip"),
    ("stt", "ip"),
    ("vxlan-sclp", "ip"),
    ("vxlan-sclp", "udp"),
    ("geneve-sclp", "ip"),
    ("geneve-sclp", "udp"),
]
# Underlay bytes around an inner Ethernet frame's IP packet over IPv6: IPv6 header,
# UDP (or nothing: GRE on IP), the tunnel header, the inner Ethernet header.
CLASSIC_OVERHEAD_V6 = {
    "vxlan": 40 + 8 + 8 + 14,
    "geneve": 40 + 8 + 8 + 14,
    "nvgre": 40 + 0 + 8 + 14,
}
UNDERLAY_MTU = 1500
FAULTS = "drop = 0.01\nreorder = 0.01\ncorrupt = 0.005\nseed = 3"


def _case_id(case: tuple[str, str]) -> str:
    protocol, carrier = case
    return f"{protocol}-{carrier}" if protocol.endswith("sclp") else protocol


@pytest.fixture(scope="module", params=CASES, ids=_case_id)
def testbed(request: pytest.FixtureRequest) -> Iterator[sclp_testbed.Testbed]:
    protocol, carrier = request.param
    with sclp_testbed.Testbed(protocol, carrier=carrier, underlay_family=6) as tb:
        yield tb
        shut_down(tb)


@pytest.mark.timeout(60)
def test_underlay_is_ipv6(testbed: sclp_testbed.Testbed) -> None:
    for i in range(2):
        stats = testbed.stats(i)
        assert stats["underlay"]["local"] == UNDERLAY6[i], stats["underlay"]
        assert stats["underlay"]["mtu"] == UNDERLAY_MTU
        assert stats["underlay"]["sclp_carrier"] == testbed.carrier
        assert f'peers = ["{UNDERLAY6[1 - i]}"]' in testbed.config_text(i)
        # The VM MTU the endpoint chose for the IPv6 underlay (1500 - 40 - 8 - 8 - 14 =
        # 1430 for VXLAN); the segmenting tunnels keep the underlay's.
        expected = UNDERLAY_MTU - CLASSIC_OVERHEAD_V6.get(testbed.protocol, 0)
        assert stats["vni"][str(sclp_testbed.VNI)]["vm_mtu"] == expected, stats["vni"]
        assert testbed.vm_link_counters(i)["mtu"] == expected


@pytest.mark.timeout(60)
def test_ping_both_ways(testbed: sclp_testbed.Testbed) -> None:
    vm1, vm2 = testbed.vms
    assert ping(vm1, OVERLAY[1]), testbed.log_text(0)
    assert ping(vm2, OVERLAY[0]), testbed.log_text(1)


@pytest.mark.timeout(90)
def test_tcp_transfer_is_intact(testbed: sclp_testbed.Testbed, payload: tuple[Path, str]) -> None:
    path, digest = payload
    before = [counters(testbed.stats(i)) for i in range(2)]

    received, received_digest = tcp_transfer(testbed.vms[0], testbed.vms[1], OVERLAY[1], path)

    assert received == path.stat().st_size, testbed.log_text(1)[-500:]
    assert received_digest == digest
    sender, receiver = (delta(before[i], counters(testbed.stats(i))) for i in range(2))
    size = path.stat().st_size
    assert sender["tx_frames"] > 0 and sender["tx_bytes"] >= size
    assert receiver["rx_frames"] > 0 and receiver["rx_bytes"] >= size
    drops = {k: v for k, v in receiver.items() if k.startswith("drop_") and v}
    assert not drops, f"receiver dropped packets of a clean transfer: {drops}"
    if testbed.protocol == "stt":
        # No packet taps on IPv6: the receiver read STT from its raw TCP socket, after
        # the kernel's TCP had seen the segments and tried to answer with resets,
        # which the endpoint's nftables guard dropped.
        host = testbed.hosts[1]
        assert nft.stt_rst_guard_drops(testbed.endpoint_name(1), netns=host) > 0
    if testbed.protocol in ("stt", "vxlan-sclp", "geneve-sclp"):
        # Whole TSO frames crossed, reassembled from many IPv6 underlay segments.
        assert receiver["reasm_complete"] > 0
        # (4, not the 8 of test_protocols: 8 failed once here for vxlan-sclp/ip with
        # the machine's load average at 5 on 2 cores; smaller TSO frames then.)
        assert receiver["rx_packets"] >= 4 * receiver["rx_frames"], receiver
    else:
        assert receiver["rx_packets"] == receiver["rx_frames"], receiver


FAULT_CASES = [("vxlan-sclp", "ip"), ("stt", "ip"), ("vxlan-sclp", "udp")]


def _udp6_checksum_errors(netns: str) -> int:
    """``Udp6InCsumErrors`` of ``netns`` (/proc/net/snmp6 as seen from inside it)."""
    out = run_in(netns, ["cat", "/proc/net/snmp6"]).stdout
    values = dict(line.split() for line in out.splitlines() if line.strip())
    return int(values.get("Udp6InCsumErrors", 0))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", FAULT_CASES, ids=_case_id)
def test_transfer_with_faults_is_intact(case: tuple[str, str], payload: tuple[Path, str]) -> None:
    """Loss, reordering and bit errors on the IPv6 underlay: the transfer is still
    byte-exact, and each damaged packet is caught where the carrier checks it: by the
    endpoint's SCLP or STT checksum over the IPv6 pseudo-header, or (UDP carrier,
    sent by the fault injector's IPv6 raw path) by the receiving kernel's UDP."""
    protocol, carrier = case
    path, digest = payload
    with sclp_testbed.Testbed(protocol, carrier=carrier, underlay_family=6, faults=FAULTS) as tb:
        received, received_digest = tcp_transfer(tb.vms[0], tb.vms[1], OVERLAY[1], path, timeout=60)
        assert received == path.stat().st_size
        assert received_digest == digest
        faults = [tb.stats(i)["faults"] for i in range(2)]
        # Both directions lost packets (data one way, ACKs the other).
        assert all(f["fault_dropped"] > 0 for f in faults), faults
        assert faults[0]["fault_reordered"] > 0, faults
        assert faults[0]["fault_corrupted"] > 0, faults
        assert not any(f["fault_send_errors"] for f in faults), faults
        receiver = counters(tb.stats(1))
        if carrier == "ip":
            assert receiver["drop_bad_checksum"] > 0, receiver
        else:
            assert _udp6_checksum_errors(tb.hosts[1]) > 0
        shut_down(tb)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "case", [("vxlan-sclp", "ip"), ("stt", "ip"), ("geneve-sclp", "udp")], ids=_case_id
)
def test_unbatched_receive_is_intact(case: tuple[str, str], payload: tuple[Path, str]) -> None:
    """The one-packet-per-read receive path (``[tuning] rx_batch = false``) over IPv6:
    raw IPv6 sockets without the batch columns, plain UDP reads without GRO."""
    protocol, carrier = case
    path, digest = payload
    extra = "[tuning]\nrx_batch = false\n"
    with sclp_testbed.Testbed(
        protocol, carrier=carrier, underlay_family=6, extra_config=extra
    ) as tb:
        assert ping(tb.vms[0], OVERLAY[1]), tb.log_text(0)
        received, received_digest = tcp_transfer(tb.vms[0], tb.vms[1], OVERLAY[1], path)
        assert received == path.stat().st_size
        assert received_digest == digest
        receiver = counters(tb.stats(1))
        drops = {k: v for k, v in receiver.items() if k.startswith("drop_") and v}
        assert not drops, drops
        shut_down(tb)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "protocol",
    ["vxlan", "geneve", "nvgre"],
)
def test_vm_mtu_above_default_fragments(protocol: str) -> None:
    """A VM MTU of 1500 over a 1500-byte IPv6 underlay (the classic tunnels allow it):
    full-size frames cross, the outer packets fragmented by the sending kernel."""
    with sclp_testbed.Testbed(protocol, underlay_family=6, vm_mtu=UNDERLAY_MTU) as tb:
        assert tb.vm_link_counters(0)["mtu"] == UNDERLAY_MTU
        full = ["ping", "-c", "2", "-i", "0.2", "-W", "2", "-M", "do", "-s", "1472", OVERLAY[1]]
        result = run_in(tb.vms[0], full, check=False)
        assert result.returncode == 0, (result.stdout[-300:], tb.log_text(0)[-500:])
        shut_down(tb)

"""Two real virtio-net guests (QEMU) talk through two ``sclp run`` endpoints.

Each guest's TAP is created by QEMU in its host's namespace and adopted by that
host's endpoint by pattern (``attach = ["vm*"]``, :class:`GuestTestbed`); the hosts
are joined by a veth underlay.  For VXLAN over SCLP (both carriers) and plain VXLAN:
ping, a SHA-256-checked 8 MB TCP transfer between the guests, and what the receiving
guest's virtio-net NIC was handed (see :func:`test_guests_over_the_overlay`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sclp.lab.guest import GuestImage
from sclp.lab.guest_testbed import GUEST_TAP, GuestTestbed
from sclp.lab.testbed import OVERLAY, VNI
from tests.e2e.helpers import record_figures
from tests.vm.helpers import offloads, rx_counters, tcp_in_csum_errors, transfer

TRANSFER_BYTES = 8 << 20
ETHERNET_HEADER = 14


@pytest.mark.netns
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("protocol", "carrier"),
    [("vxlan-sclp", "ip"), ("vxlan-sclp", "udp"), ("vxlan", "ip")],
    ids=["vxlan-sclp-ip", "vxlan-sclp-udp", "vxlan"],
)
def test_guests_over_the_overlay(
    guest_image: GuestImage, protocol: str, carrier: str, tmp_path: Path
) -> None:
    """The GSO proof, counted over the transfer and a 3 s iperf3 run (busybox nc
    writes smaller chunks than iperf3, so its TSO frames are smaller): the receiving
    guest's ``eth0`` counts one ``rx_packets`` per buffer chain the host hands its
    virtio-net device, before the guest's own GRO.
    Without GSO no such frame can be longer than the MTU plus the Ethernet header,
    so bytes per packet above twice that means most of the transfer arrived as GSO
    frames (the endpoint's own count for the port must agree).  Over SCLP the
    endpoint reassembles each 64 KB payload and hands it over whole, so that must
    hold.  Plain VXLAN carries one MTU-sized inner frame per packet and hands them
    over one by one, so there the same figure must stay at or below one MTU frame:
    the check can fail both ways and tells the two tunnels apart."""
    with GuestTestbed(protocol=protocol, carrier=carrier, image=guest_image) as tb:
        boot = [g.boot_seconds for g in tb.guests]
        mtu = int(tb.stats(1)["vni"][str(VNI)]["vm_mtu"])
        for i in range(2):
            ports = tb.stats(i)["ports"]
            assert ports.get(GUEST_TAP, {}).get("kind") == "attached", ports

        ping = tb.ping(3)
        assert ping.returncode == 0 and "3 packets received" in ping.stdout, ping.stdout
        features = offloads(tb.guests[0])
        for name in ("tcp-segmentation-offload", "generic-segmentation-offload"):
            assert features.get(name) == "on", f"{name} in the sending guest: {features.get(name)}"

        guest_before = rx_counters(tb.guests[1])
        port_before = tb.stats(1)["ports"][GUEST_TAP]
        csum_before = tcp_in_csum_errors(tb.guests[1])
        split_before = tb.stats(0)["counters"].get("tx_split", 0)
        transfer(tb.guests[0], tb.guests[1], OVERLAY[1], TRANSFER_BYTES)
        report = tb.iperf3(seconds=3)
        guest_after = rx_counters(tb.guests[1])
        port_after = tb.stats(1)["ports"][GUEST_TAP]
        csum_errors = tcp_in_csum_errors(tb.guests[1]) - csum_before
        splits = tb.stats(0)["counters"].get("tx_split", 0) - split_before
        packets = guest_after[0] - guest_before[0]
        received = guest_after[1] - guest_before[1]
        frames = port_after["rx_frames"] - port_before["rx_frames"]
        handed = port_after["rx_bytes"] - port_before["rx_bytes"]
        assert received >= TRANSFER_BYTES and packets > 0
        record_figures(
            tmp_path / "figures.jsonl",
            f"guests/{protocol}/{carrier}",
            {
                "accelerator": tb.accelerator,
                "boot_s": [round(b or 0, 1) for b in boot],
                "vm_mtu": mtu,
                "guest_rx_packets": packets,
                "guest_bytes_per_packet": round(received / packets),
                "endpoint_frames_to_guest": frames,
                "iperf3_gbit_s": round(report["end"]["sum_received"]["bits_per_second"] / 1e9, 3),
                "retransmits": report["end"]["sum_sent"].get("retransmits"),
                "sender_tx_split": splits,
                "receiver_tcp_in_csum_errors": csum_errors,
            },
        )
        largest_plain = mtu + ETHERNET_HEADER
        if protocol.endswith("-sclp"):
            assert received / packets > 2 * largest_plain, (
                f"the receiving guest got {packets} packets for {received} bytes "
                f"({received / packets:.0f} B each): not GSO frames"
            )
            assert handed / frames > 2 * largest_plain, (frames, handed)
        else:
            assert received / packets <= largest_plain, (packets, received)
        # In the UDP carrier the payload limit is below a guest's largest TSO frames,
        # so the sender splits them (tx_split); a split's one-segment remainder once
        # arrived with a partial checksum and the guest dropped it (e6220db).
        assert csum_errors == 0, (
            f"the receiving guest dropped {csum_errors} TCP segments with bad checksums "
            f"({splits} GSO frames split by the sending endpoint)"
        )

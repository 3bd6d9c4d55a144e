"""Two real virtio-net guests on TAPs joined by a Linux bridge: the baseline that
shows the guest, its offloads and the checks of tests/vm work without any endpoint
in the path."""

from __future__ import annotations

import secrets

import pytest

from sclp.io import netns as nsio
from sclp.lab.guest import Guest, GuestImage
from tests.e2e.helpers import run_in
from tests.vm.helpers import offloads, rx_counters, transfer

ADDRESSES = ("192.168.78.1", "192.168.78.2")
MTU = 1500


@pytest.mark.netns
@pytest.mark.timeout(120)
def test_two_guests_on_a_bridge(guest_image: GuestImage) -> None:
    """Ping, a 4 MB SHA-256-checked TCP transfer, TSO/GSO on in the guest, and frames
    longer than the MTU on the receiver's NIC (the bridge forwards the sender's GSO
    frames whole: the same proof tests/vm/test_guests.py asks of the endpoint)."""
    ns = f"sclp-{secrets.token_hex(3)}-br"
    nsio.create_netns(ns).close()
    try:
        with (
            Guest("br1", ns, "tap1", f"{ADDRESSES[0]}/24", MTU, image=guest_image) as one,
            Guest("br2", ns, "tap2", f"{ADDRESSES[1]}/24", MTU, image=guest_image) as two,
        ):
            run_in(ns, ["ip", "link", "add", "br0", "type", "bridge"])
            for dev in ("tap1", "tap2"):
                run_in(ns, ["ip", "link", "set", dev, "master", "br0", "up"])
            run_in(ns, ["ip", "link", "set", "br0", "up"])
            boot = [one.wait_ready(), two.wait_ready()]
            print(f"booted in {boot[0]:.1f} s and {boot[1]:.1f} s under {one.accel}")

            ping = one.run(f"ping -c 3 -W 2 {ADDRESSES[1]}", timeout=15)
            assert "3 packets received" in ping.output, ping.output
            features = offloads(one)
            for name in ("tcp-segmentation-offload", "generic-segmentation-offload"):
                assert features.get(name) == "on", f"{name} in the guest: {features.get(name)}"

            before = rx_counters(two)
            transfer(one, two, ADDRESSES[1], 4 << 20)
            packets, data = (a - b for a, b in zip(rx_counters(two), before, strict=True))
            print(f"receiver: {packets} packets, {data} bytes, {data / packets:.0f} B each")
            assert data >= 4 << 20
            assert data / packets > MTU + 14, "no frame above the MTU: GSO frames were cut"
    finally:
        nsio.delete_netns(ns)

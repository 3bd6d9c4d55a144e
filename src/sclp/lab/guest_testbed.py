"""The testbed with real virtio-net guests as the VMs (the paper's setting).

:class:`GuestTestbed` is :class:`~sclp.lab.testbed.Testbed` with one change: each
"VM" is a QEMU guest (:class:`~sclp.lab.guest.Guest`) instead of a namespace behind
a TAP the endpoint owns.  QEMU creates the guest's TAP, ``vm0``, in the host's
namespace, and the host's endpoint adopts it by pattern (``attach = ["vm*"]``), as
it would adopt a libvirt guest's ``vnet*`` TAP (docs/vms.md).  The guests get the
network's VM MTU, read from the running endpoint (``vm_mtu`` in its stats), both as
the virtio-net device's ``host_mtu`` and on their ``eth0``.

``protocol="bridge"`` is the reference without any tunnel: both guests in host 1's
namespace, their TAPs on a Linux bridge (no endpoint, no underlay).

The driving methods keep :class:`Testbed`'s signatures (``ping``, ``iperf3``,
``vm_link_counters``) but run inside the guests, through their command channels.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sclp.io import netns as nsio
from sclp.lab.guest import Guest, GuestError, GuestImage
from sclp.lab.testbed import OVERLAY, UNDERLAY, VNI, Testbed, TestbedError

GUEST_TAP = "vm0"  # QEMU's TAP for the guest in each host namespace
BRIDGE_MTU = 1500  # the VM MTU of the bridge reference


@dataclass
class GuestTestbed(Testbed):
    """``image``: the built guest (None: the cached one, built if missing);
    ``accel``: ``"auto"``, ``"kvm"`` or ``"tcg"``; ``boot_timeout``: seconds for
    each guest to come up.  ``guests[i]`` is VM ``i`` once built."""

    __test__ = False

    image: GuestImage | None = None
    accel: str = "auto"
    boot_timeout: float = 90.0
    guests: list[Guest] = field(default_factory=list)

    @property
    def vm_interface(self) -> str:
        return "eth0"  # inside the guest

    @property
    def accelerator(self) -> str:
        """The accelerator the guests run under ("kvm" or "tcg"), once built."""
        return self.guests[0].accel if self.guests else ""

    def tap_name(self, i: int) -> str:
        return f"vm{i + 1}" if self.protocol == "bridge" else GUEST_TAP

    def guest_host(self, i: int) -> str:
        """The namespace QEMU (and the TAP) of VM ``i`` live in."""
        return self.hosts[0] if self.protocol == "bridge" else self.hosts[i]

    # -- building ----------------------------------------------------------------

    def __enter__(self) -> GuestTestbed:
        super().__enter__()
        return self

    def build(self) -> None:
        if self.protocol in ("veth", "kernel-vxlan", "tinc"):
            raise TestbedError(
                f"the guest testbed runs sclp endpoints or 'bridge', not {self.protocol!r}"
            )
        if os.geteuid() != 0:
            raise TestbedError("the testbed needs root to create network namespaces; use sudo")
        self.workdir = Path(tempfile.mkdtemp(prefix=f"sclp-{self.tag}-"))
        for name in self.hosts:
            nsio.create_netns(name, loopback_up=True).close()
            self.namespaces.append(name)
        if self.protocol == "bridge":
            mtus = [self.vm_mtu or BRIDGE_MTU] * 2
        else:
            nsio.create_veth("ul0", self.hosts[0], "ul0", self.hosts[1], mtu=self.underlay_mtu)
            if self.underlay_family == 6:
                self._underlay_v6()
            else:
                for host, addr in zip(self.hosts, UNDERLAY, strict=True):
                    with nsio.NetNS(host) as ns:
                        ns.add_address("ul0", f"{addr}/24")
            for i in range(2):
                self._start_endpoint(i)
            for i in range(2):
                self._wait_endpoint(i)
            mtus = [int(self.stats(i)["vni"][str(VNI)]["vm_mtu"]) for i in range(2)]
        try:
            for i in range(2):
                guest = self.make_guest(i, mtus[i])
                self.guests.append(guest)
                guest.start()
            if self.protocol == "bridge":
                self._ip(self.hosts[0], "link", "add", "br0", "type", "bridge")
                for i in range(2):
                    self._ip(self.hosts[0], "link", "set", self.tap_name(i), "master", "br0")
                    self._ip(self.hosts[0], "link", "set", self.tap_name(i), "up")
                self._ip(self.hosts[0], "link", "set", "br0", "up")
            for guest in self.guests:
                guest.wait_ready(self.boot_timeout)
        except GuestError as exc:
            raise TestbedError(str(exc)) from None

    def make_guest(self, i: int, mtu: int) -> Guest:
        """VM ``i`` (not started yet), with address ``OVERLAY[i]`` and ``mtu``."""
        return Guest(
            f"{self.tag}-{i + 1}",
            self.guest_host(i),
            self.tap_name(i),
            f"{OVERLAY[i]}/24",
            mtu,
            image=self.image,
            accel=self.accel,
        )

    def port_keys(self, i: int) -> str:
        """The guest's TAP, made by QEMU in the host namespace, attached by pattern."""
        return 'attach = ["vm*"]\n'

    # -- driving -----------------------------------------------------------------

    def guest_run(self, i: int, script: str, timeout: float = 30.0, check: bool = True) -> str:
        """Run ``script`` in VM ``i``; its output.  TestbedError when it fails."""
        try:
            return self.guests[i].run(script, timeout=timeout, check=check).output
        except GuestError as exc:
            raise TestbedError(str(exc)) from None

    def ping(self, count: int = 3) -> subprocess.CompletedProcess[str]:
        script = f"ping -c {count} -i 0.2 -W 2 {OVERLAY[1]}"
        try:
            result = self.guests[0].run(script, timeout=count + 10, check=False)
        except GuestError as exc:
            raise TestbedError(str(exc)) from None
        return subprocess.CompletedProcess(script.split(), result.returncode, result.output, "")

    def iperf3(
        self,
        seconds: float = 5,
        udp: bool = False,
        bitrate: str = "0",
        extra: list[str] | None = None,
    ) -> dict[str, Any]:
        """Run iperf3 from VM1 to VM2 (both inside the guests); its JSON report."""
        self.guest_run(
            1,
            f"iperf3 -s -1 -D -B {OVERLAY[1]} --logfile /tmp/iperf3-server.log; "
            "i=0; until netstat -ltn | grep -q ':5201 '; do "
            "i=$((i+1)); [ $i -gt 200 ] && exit 1; usleep 50000; done",
            timeout=15,
        )
        args = ["iperf3", "-c", OVERLAY[1], "-t", str(seconds), "-J"]
        if udp:
            args += ["-u", "-b", bitrate]
        args += extra or []
        output = self.guest_run(0, " ".join(args), timeout=seconds + 30, check=False)
        try:
            report: dict[str, Any] = json.loads(output)
        except json.JSONDecodeError:
            raise TestbedError(f"iperf3 in the guest failed: {output.strip()[-300:]}") from None
        if "error" in report:
            raise TestbedError(f"iperf3: {report['error']}")
        return report

    def vm_link_counters(self, i: int) -> dict[str, int]:
        """VM ``i``'s ``eth0`` counters as the guest's virtio-net driver counts them
        (one GSO frame from the host is one ``rx_packets``) and its ``mtu``."""
        names = ("rx_packets", "rx_bytes", "rx_dropped", "tx_packets", "tx_bytes", "tx_dropped")
        paths = " ".join(f"/sys/class/net/eth0/statistics/{n}" for n in names)
        values = self.guest_run(i, f"cat {paths} /sys/class/net/eth0/mtu", timeout=10).split()
        return dict(zip((*names, "mtu"), map(int, values), strict=True))

    # -- teardown ----------------------------------------------------------------

    def close(self) -> None:
        for guest in self.guests:
            guest.close()
        self.guests.clear()
        super().close()

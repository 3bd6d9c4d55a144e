"""Two libvirt guests on the overlay, started by a real ``libvirtd``: the recipe of
docs/vms.md ("libvirt"), run as written.

:class:`~sclp.lab.libvirt.LibvirtTestbed` runs one private libvirtd in each host
namespace (its own runtime, state, cache, log and config directories; stopped at the
end); each creates a transient domain booting the lab's guest whose NIC is an
``ethernet`` interface with the TAP name ``t42-web0`` / ``t42-web1``, and each host's
endpoint adopts it by ``attach = ["t42-*"]``.  Ping and a SHA-256-checked TCP
transfer between the guests over VXLAN over SCLP; ``virsh destroy`` of one guest
detaches its port (one log line, its FDB entries flushed), ``virsh create`` attaches
it again and the traffic resumes.  The ``<network>`` variant of the doc: the guests'
TAPs on a bridge a libvirt network names, the endpoint on one veth from that bridge.

Only a missing root skips this; a missing libvirt or QEMU fails it:
``./quickstart.sh`` installs the packages.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

from sclp.lab.guest import GuestImage
from sclp.lab.libvirt import (
    ATTACH,
    BRIDGE,
    BRIDGED_TAPS,
    GUEST_MACS,
    GUEST_TAPS,
    NETWORK,
    UPLINK,
    LibvirtGuest,
    LibvirtTestbed,
    bridge_commands,
    interface_xml,
    libvirt_missing,
    network_interface_element,
    network_xml,
)
from sclp.lab.testbed import OVERLAY, VNI
from tests.e2e.helpers import record_figures, wait_for
from tests.vm.helpers import transfer

DOC = Path(__file__).resolve().parents[2] / "docs" / "vms.md"
# Not the directory's `netns` mark, which also skips when QEMU is missing: here only
# a missing root skips; missing packages fail (./quickstart.sh installs them).
NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, libvirtd)")
TRANSFER_BYTES = 4 << 20
DOC_VM_MTU = 1500  # the VM MTU of vxlan-sclp at underlay MTU 1500, as in the doc


def _doc_section() -> str:
    text = DOC.read_text()
    start = text.index("\n## libvirt\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def _canonical(xml: str) -> str:
    """The element without comments and the whitespace between tags."""
    return ET.canonicalize(xml, strip_text=True)


def test_the_docs_recipe_is_the_one_the_test_runs() -> None:
    """docs/vms.md's libvirt interface element is the one the lab gives guest 1
    (same elements, attributes and values; comments and layout aside), and so are
    its network variant's network and interface; its ``attach`` pattern is the
    endpoints' and matches both guests' TAPs (not the bridged ones)."""
    section = _doc_section()
    ethernet, network, on_network = _blocks(section, "xml")
    assert _canonical(ethernet) == _canonical(
        interface_xml(GUEST_TAPS[0], GUEST_MACS[0], DOC_VM_MTU)
    ), "docs/vms.md's <interface> differs from sclp.lab.libvirt.interface_element"
    assert _canonical(network) == _canonical(network_xml(NETWORK, BRIDGE))
    generated = network_interface_element(NETWORK, BRIDGED_TAPS[0], GUEST_MACS[0], DOC_VM_MTU)
    assert _canonical(on_network) == _canonical(ET.tostring(generated, encoding="unicode"))
    (shell,) = _blocks(section, "sh")
    commands = [line.split("#")[0].strip() for line in shell.splitlines()]
    assert [c for c in commands if c.startswith("ip ")] == [
        " ".join(command) for command in bridge_commands(DOC_VM_MTU)
    ], "docs/vms.md's bridge and uplink differ from sclp.lab.libvirt.bridge_commands"
    assert fnmatchcase(UPLINK[0], ATTACH)
    assert all(not fnmatchcase(tap, ATTACH) for tap in (*BRIDGED_TAPS, UPLINK[1], BRIDGE))
    configs = [tomllib.loads(block) for block in _blocks(section, "toml")]
    patterns = [net["attach"] for config in configs for net in config.get("network", [])]
    assert patterns == [[ATTACH]], patterns
    assert LibvirtTestbed().port_keys(0) == f'attach = ["{ATTACH}"]\n'
    for tap in GUEST_TAPS:
        assert fnmatchcase(tap, ATTACH) and not tap.startswith(("vnet", "vif")), tap


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _root_has_link(name: str) -> bool:
    shown = subprocess.run(
        ["ip", "link", "show", name], capture_output=True, timeout=10, check=False
    )
    return shown.returncode == 0


def _detached(tb: LibvirtTestbed, i: int) -> list[str]:
    pattern = (
        rf"detached {re.escape(GUEST_TAPS[i])} from vni {VNI}: interface gone, "
        r"(\d+) FDB entr(?:y|ies) flushed"
    )
    return re.findall(pattern, tb.log_text(i))


def _attach_lines(tb: LibvirtTestbed, i: int) -> int:
    return tb.log_text(i).count(f"attached {GUEST_TAPS[i]} (ifindex")


def _tap_events(tb: LibvirtTestbed, i: int) -> list[str]:
    """The endpoint's log lines about host ``i``'s guest TAP, as "LEVEL verb"."""
    return [
        " ".join(line.split()[2:4])
        for line in tb.log_text(i).splitlines()
        if f" {GUEST_TAPS[i]} " in line
    ]


def _attached(tb: LibvirtTestbed, i: int) -> bool:
    return tb.stats(i)["ports"].get(GUEST_TAPS[i], {}).get("kind") == "attached"


@NEEDS_ROOT
@pytest.mark.timeout(300)
def test_libvirt_guests_over_the_overlay(guest_image: GuestImage, tmp_path: Path) -> None:
    missing = libvirt_missing()
    if missing is not None:
        pytest.fail(f"./quickstart.sh installs libvirt: {missing}")
    pids: list[int] = []
    # The doc's configuration sets no sclp_carrier: the default, IP protocol 234.
    with LibvirtTestbed(protocol="vxlan-sclp", carrier="ip", image=guest_image) as tb:
        one, two = tb.guests
        assert isinstance(one, LibvirtGuest) and isinstance(two, LibvirtGuest)
        pids += [daemon.proc.pid for daemon in tb.daemons if daemon.proc is not None]
        for i, guest in enumerate((one, two)):
            assert isinstance(guest, LibvirtGuest)
            pid = guest.daemon.qemu_pid(guest.domain)
            assert pid is not None and _running(pid)
            pids.append(pid)
            # libvirt kept the name we gave and made the TAP in the host's namespace
            shown = ET.fromstring(guest.daemon.virsh("dumpxml", guest.domain).stdout)
            assert [t.get("dev") for t in shown.iter("target") if t.get("dev")] == [GUEST_TAPS[i]]
            assert not _root_has_link(GUEST_TAPS[i]), "libvirt's TAP is in the root namespace"
            assert _attached(tb, i), tb.stats(i)["ports"]
            assert _attach_lines(tb, i) == 1, tb.log_text(i)[-800:]
        assert int(tb.stats(0)["vni"][str(VNI)]["vm_mtu"]) == DOC_VM_MTU
        assert _canonical(ET.tostring(one.interface, encoding="unicode")) == _canonical(
            _blocks(_doc_section(), "xml")[0]
        ), "guest 1 did not run with docs/vms.md's interface"
        boot = [guest.boot_seconds for guest in tb.guests]
        # The domain has ACPI (<features><acpi/>): without, libvirt passes -no-acpi and
        # the guest keeps time by jiffies (no APIC tables, HPET or ACPI PM timer).
        clock = "/sys/devices/system/clocksource/clocksource0/current_clocksource"
        for guest in tb.guests:
            assert "jiffies" not in guest.run(f"cat {clock}", timeout=10).output

        ping = tb.ping(3)
        assert ping.returncode == 0 and "3 packets received" in ping.stdout, ping.stdout
        transfer(one, two, OVERLAY[1], TRANSFER_BYTES)

        # virsh destroy: libvirt removes the TAP, the endpoint detaches the port.
        fdb_before = tb.stats(1)["vni"][str(VNI)]["fdb_entries"]
        two.stop()
        wait_for(lambda: not _attached(tb, 1), 5.0, what=f"{GUEST_TAPS[1]} detached")
        lines = wait_for(lambda: _detached(tb, 1), 5.0, what="the detach log line")
        assert len(lines) == 1, tb.log_text(1)[-800:]
        flushed = int(lines[0])
        assert flushed >= 1, "guest 2's MAC was not in host 2's FDB"
        assert tb.stats(1)["vni"][str(VNI)]["fdb_entries"] == fdb_before - flushed

        # virsh create again: the same TAP name comes back and is attached again.
        two.start()
        wait_for(lambda: _attached(tb, 1), 5.0, what=f"{GUEST_TAPS[1]} attached again")
        assert _attach_lines(tb, 1) == 2, tb.log_text(1)[-800:]
        reboot = two.wait_ready(tb.boot_timeout)
        ping = tb.ping(3)
        assert ping.returncode == 0 and "3 packets received" in ping.stdout, ping.stdout
        transfer(one, two, OVERLAY[1], TRANSFER_BYTES)
        # One line each for the destroy and the create, nothing else: libvirt deletes
        # a TAP by creating it for an instant, which the endpoint must not report.
        assert _tap_events(tb, 1) == ["INFO attached", "INFO detached", "INFO attached"], (
            tb.log_text(1)[-1200:]
        )
        assert _tap_events(tb, 0) == ["INFO attached"], tb.log_text(0)[-800:]
        restarted = two.daemon.qemu_pid(two.domain)
        assert restarted is not None and restarted not in pids
        pids.append(restarted)
        record_figures(
            tmp_path / "figures.jsonl",
            "libvirt/vxlan-sclp/ip",
            {
                "accelerator": tb.accelerator,
                "libvirtd_ready_s": [round(s, 1) for s in tb.daemon_seconds],
                "boot_s": [round(b or 0, 1) for b in boot],
                "reboot_s": round(reboot, 1),
                "fdb_flushed": flushed,
            },
        )
    # Nothing left running: the daemons and every QEMU they started are gone.
    assert [pid for pid in pids if _running(pid)] == []


def _master(netns: str, name: str) -> str | None:
    shown = subprocess.run(
        ["ip", "-n", netns, "-j", "link", "show", "dev", name],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    master: str | None = json.loads(shown.stdout)[0].get("master")
    return master


@NEEDS_ROOT
@pytest.mark.timeout(240)
def test_a_libvirt_network_on_a_bridge_with_a_veth_to_the_endpoint(
    guest_image: GuestImage,
) -> None:
    """The variant of docs/vms.md for a libvirt ``<network>``: libvirt puts each
    guest's TAP on a bridge of ours (``<forward mode='bridge'/>``), and the endpoint
    adopts the one veth from that bridge; ping and a SHA-256-checked transfer (over
    the UDP carrier, where the other test runs the default IP one)."""
    missing = libvirt_missing()
    if missing is not None:
        pytest.fail(f"./quickstart.sh installs libvirt: {missing}")
    with LibvirtTestbed(
        protocol="vxlan-sclp", carrier="udp", image=guest_image, libvirt_network=True
    ) as tb:
        one, two = tb.guests
        for i in range(2):
            wait_for(
                lambda i=i: tb.stats(i)["ports"].get(UPLINK[0], {}).get("kind") == "attached",
                5.0,
                what=f"{UPLINK[0]} attached in host {i + 1}",
            )
            ports = tb.stats(i)["ports"]
            assert [p for p, v in ports.items() if v.get("kind") == "attached"] == [UPLINK[0]]
            assert _master(tb.hosts[i], BRIDGED_TAPS[i]) == BRIDGE
            assert _master(tb.hosts[i], UPLINK[1]) == BRIDGE
        ping = tb.ping(3)
        assert ping.returncode == 0 and "3 packets received" in ping.stdout, ping.stdout
        transfer(one, two, OVERLAY[1], TRANSFER_BYTES)
        for i in range(2):
            assert "WARNING" not in tb.log_text(i), tb.log_text(i)[-800:]

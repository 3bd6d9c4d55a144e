"""``sclp bench`` configurations: selection by label and name, the quick set, tinc as
a measured reference, the ablation's tuning, the guest set.  No namespaces needed."""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import pytest

from sclp.cli import build_parser
from sclp.lab import tinc
from sclp.lab.bench.configs import (
    GUEST_LABELS,
    QUICK_LABELS,
    BenchConfig,
    all_configs,
    guest_configs,
    select_configs,
)
from sclp.lab.bench.measure import steps_per_config
from sclp.lab.bench.options import BenchOptions
from sclp.lab.bench.udprate import QUICK_SEARCH
from sclp.lab.guest_testbed import GuestTestbed

TINC_INSTALLED = shutil.which("tincd", path=os.environ.get("PATH", "") + ":/usr/sbin") is not None


def test_every_configuration_has_a_unique_label_that_selects_it() -> None:
    configs = all_configs()
    labels = [c.label for c in configs]
    assert len(set(labels)) == len(labels) == 19
    for c in configs:
        assert c in select_configs([c.label])
    assert {c.protocol for c in configs} == {
        "veth",
        "kernel-vxlan",
        "tinc",
        "vxlan",
        "geneve",
        "nvgre",
        "stt",
        "vxlan-sclp",
        "geneve-sclp",
    }


def test_a_name_selects_its_variants_in_table_order() -> None:
    labels = [c.label for c in select_configs(["vxlan-sclp/udp", "vxlan", "kernel-vxlan"])]
    assert labels == [
        "kernel-vxlan",
        "kernel-vxlan/no-offloads",
        "vxlan/mtu1500",
        "vxlan",
        "vxlan-sclp/udp",
        "vxlan-sclp/udp/no-level1",
        "vxlan-sclp/udp/no-level2",
    ]
    assert [c.label for c in select_configs(["veth", "veth", " "])] == ["veth"]
    with pytest.raises(ValueError, match="unknown configuration 'vxlan-sclp/tcp'"):
        select_configs(["vxlan-sclp/tcp"])


def test_quick_configs_are_the_documented_few() -> None:
    assert [c.label for c in BenchOptions(quick=True).configs()] == list(QUICK_LABELS)
    assert BenchOptions(quick=True).seconds == 1 and BenchOptions(quick=True).repeats == 1
    assert BenchOptions().seconds == 10 and BenchOptions().repeats == 3
    assert BenchOptions(quick=True, duration=4).seconds == 4
    assert BenchOptions(quick=True).udp_search == QUICK_SEARCH
    assert "tinc" in QUICK_LABELS and "tinc" in [c.label for c in all_configs()]
    # The progress bar counts the search's probes too.
    assert steps_per_config(("tcp", "udp"), 3, QUICK_SEARCH) == 6 + QUICK_SEARCH.max_runs
    assert steps_per_config(("tcp",), 3, QUICK_SEARCH) == 3


def test_tinc_is_a_reference_whose_daemons_are_measured() -> None:
    cfg = BenchConfig("tinc")
    assert cfg.is_reference and cfg.has_endpoints
    assert not BenchConfig("kernel-vxlan").has_endpoints
    assert cfg.testbed().vm_interface == "eth0"
    conf = tinc.tinc_conf(0)
    assert "Mode = switch\n" in conf and "ConnectTo = h2\n" in conf
    assert "ConnectTo" not in tinc.tinc_conf(1)
    host = tinc.host_conf("10.77.0.2", 1468)
    for line in ("Cipher = none", "Digest = none", "PMTUDiscovery = no", "PMTU = 1468"):
        assert line + "\n" in host
    # 1500 - IPv4 20 - UDP 8 - tinc's seqno 4 = 1468 per frame; the VM gets 14 less.
    assert tinc.path_mtu(1500, 4) == 1468 and tinc.vm_mtu(1500, 4) == 1454
    assert tinc.vm_mtu(1500, 6) == 1434


@pytest.mark.skipif(not TINC_INSTALLED, reason="tinc is not installed")
def test_tinc_configs_have_keys_and_each_other_s_host_file(tmp_path: Path) -> None:
    dirs = tinc.write_configs(tmp_path, ("10.77.0.1", "10.77.0.2"), 1468)
    for confdir in dirs:
        assert "-----BEGIN RSA PRIVATE KEY" in (confdir / "rsa_key.priv").read_text()
        for name in ("h1", "h2"):
            text = (confdir / "hosts" / name).read_text()
            assert "Cipher = none" in text and "BEGIN RSA PUBLIC KEY" in text
    command = tinc.tincd_command(dirs[0], tmp_path / "h1.pid")
    assert "-D" in command and f"--pidfile={tmp_path / 'h1.pid'}" in command


def test_tinc_missing_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(RuntimeError, match=r"^tincd is not installed \(apt-get install tinc\)$"):
        tinc.tincd_path()


def test_ablation_passes_the_tuning_table_to_the_endpoints() -> None:
    tb = BenchConfig("vxlan-sclp", "udp", ablation="no-level1").testbed()
    text = tb.config_text(0)
    assert "[tuning]\nrx_batch = false\n[underlay]" in text
    assert 'sclp_carrier = "udp"' in text
    level2 = BenchConfig("vxlan-sclp", "ip", ablation="no-level2").testbed()
    assert "[tuning]\ndeliver_gso = false\n" in level2.config_text(1)
    assert BenchConfig("kernel-vxlan", kernel_offloads=False).testbed().kernel_offloads is False


def test_guest_configs_are_the_bridge_and_our_tunnels_without_ablations() -> None:
    configs = guest_configs()
    assert configs[0].label == "bridge" and configs[0].is_reference
    assert not configs[0].has_endpoints
    assert all(c.vms == "qemu" and isinstance(c.testbed(), GuestTestbed) for c in configs)
    labels = [c.label for c in configs]
    assert not {"veth", "kernel-vxlan", "tinc"} & set(labels)
    assert not [label for label in labels if "no-level" in label]
    assert {"vxlan", "vxlan/mtu1500", "stt", "vxlan-sclp/ip", "geneve-sclp/udp"} <= set(labels)
    # --protocols filters the guest set; an exact leaf is only itself there.
    chosen = select_configs(["vxlan-sclp/udp", "bridge"], "qemu")
    assert [c.label for c in chosen] == ["bridge", "vxlan-sclp/udp"]
    with pytest.raises(ValueError, match="'veth' with --vms qemu"):
        select_configs(["veth"], "qemu")
    with pytest.raises(ValueError, match="'bridge'"):
        select_configs(["bridge"])


def test_vms_options_default_to_tcp_and_the_guest_set() -> None:
    for quick in (False, True):
        options = BenchOptions(vms="qemu", quick=quick)
        assert options.transports == ("tcp",)
        assert [c.label for c in options.configs()] == list(GUEST_LABELS)
    options = BenchOptions(vms="qemu", protocols=("bridge", "vxlan"), transports=("tcp", "udp"))
    line = options.command_line()
    assert line == "sclp bench --vms qemu --protocols bridge,vxlan --transports tcp,udp"
    args = build_parser().parse_args(shlex.split(line)[1:])
    assert args.vms == "qemu" and args.transports == "tcp,udp"
    assert build_parser().parse_args(["bench"]).transports is None
    assert BenchOptions().transports == ("tcp", "udp")

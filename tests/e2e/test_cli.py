"""The ``sclp`` command's error paths: each failure is one ``sclp: error:`` line on
stderr naming the problem, with a non-zero exit status, and a refused endpoint
leaves the running one (and the namespaces) as they were."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sclp.io import netns as nsio
from sclp.lab import testbed as sclp_testbed
from sclp.lab.testbed import OVERLAY, UNDERLAY

from .helpers import ping, sclp_cli, shut_down


def assert_one_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got: {result.stderr!r}"
    line = lines[0]
    assert line.startswith("sclp: error: "), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert "Traceback" not in result.stderr
    return line


# -- no namespaces needed -----------------------------------------------------------


@pytest.mark.timeout(30)
def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    result = sclp_cli("run", "--config", str(missing))
    assert_one_error(result, str(missing), "No such file")


@pytest.mark.timeout(30)
def test_unknown_key_names_key_and_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        'name = "e2e-bad"\n'  # 1
        "[underlay]\n"  # 2
        'local = "10.77.0.1"\n'  # 3
        'colour = "red"\n'  # 4
        "[[network]]\n"  # 5
        "vni = 42\n"  # 6
        'tap = "tap0"\n'  # 7
    )
    result = sclp_cli("run", "--config", str(config))
    assert_one_error(result, "underlay.colour", "line 4", "unknown key")


@pytest.mark.timeout(30)
def test_unknown_key_in_second_network(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        'name = "e2e-bad"\n'  # 1
        "[underlay]\n"  # 2
        'local = "10.77.0.1"\n'  # 3
        "[[network]]\n"  # 4
        "vni = 42\n"  # 5
        'tap = "tap0"\n'  # 6
        "[[network]]\n"  # 7
        "vni = 43\n"  # 8
        'tap = "tap1"\n'  # 9
        'peer = ["10.77.0.2"]\n'  # 10
    )
    result = sclp_cli("run", "--config", str(config))
    assert_one_error(result, "network[1].peer", "line 10", "unknown key")


@pytest.mark.timeout(30)
def test_invalid_toml(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text('name = "e2e-bad\n')
    assert_one_error(sclp_cli("run", "--config", str(config)), "not valid TOML")


@pytest.mark.timeout(30)
def test_stats_of_unknown_endpoint() -> None:
    name = f"nosuch{secrets.token_hex(3)}"
    result = sclp_cli("stats", "--name", name, "--json")
    assert_one_error(result, f"{name}.sock", "is `sclp run` running")
    assert result.stdout == ""


# -- against a running endpoint -------------------------------------------------------


@pytest.fixture(scope="module")
def running() -> Iterator[sclp_testbed.Testbed]:
    with sclp_testbed.Testbed("vxlan") as tb:
        yield tb
        shut_down(tb)


def _config(
    tb: sclp_testbed.Testbed,
    name: str,
    tap: str,
    vm_namespace: str,
    underlay_namespace: str | None = None,
) -> str:
    return (
        f'name = "{name}"\n'
        "[underlay]\n"
        f'local = "{UNDERLAY[0]}"\n'
        f'namespace = "{underlay_namespace or tb.hosts[0]}"\n'
        "[[network]]\n"
        "vni = 42\n"
        'protocol = "vxlan"\n'
        f'tap = "{tap}"\n'
        f'namespace = "{vm_namespace}"\n'
        f'peers = ["{UNDERLAY[1]}"]\n'
    )


def _links(netns: str) -> list[str]:
    with nsio.NetNS(netns) as ns:
        return sorted(str(m.get_attr("IFLA_IFNAME")) for m in ns.ipr.get_links())


def _run_refused(tb: sclp_testbed.Testbed, tmp_path: Path, config_text: str) -> str:
    """Start a second endpoint that must refuse; check it changed nothing."""
    links_before = {ns: _links(ns) for ns in (tb.hosts[0], tb.vms[0])}
    config = tmp_path / "second.toml"
    config.write_text(config_text)
    result = sclp_cli("run", "--config", str(config), timeout=30)
    line = assert_one_error(result)
    assert {ns: _links(ns) for ns in links_before} == links_before, "refused endpoint left links"
    assert all(proc.poll() is None for proc in tb.endpoints), "the running endpoint died"
    assert ping(tb.vms[0], OVERLAY[1], count=1), "the running endpoint stopped forwarding"
    return line


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_stats_json_of_running_endpoint(running: sclp_testbed.Testbed) -> None:
    assert ping(running.vms[0], OVERLAY[1], count=2)
    result = sclp_cli("stats", "--name", running.endpoint_name(0), "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["name"] == running.endpoint_name(0)
    assert stats["counters"]["tx_frames"] > 0 and stats["counters"]["rx_frames"] > 0
    assert stats["vni"]["42"]["protocol"] == "vxlan"


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_second_endpoint_with_same_name_refuses(
    running: sclp_testbed.Testbed, tmp_path: Path
) -> None:
    name = running.endpoint_name(0)
    line = _run_refused(running, tmp_path, _config(running, name, "tapdup", running.vms[0]))
    assert "already running" in line and repr(name) in line, line


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_tap_name_taken_by_another_interface(running: sclp_testbed.Testbed, tmp_path: Path) -> None:
    # ul0 is the underlay veth in the endpoint's own namespace: not a TAP.
    config = _config(running, f"e2e{secrets.token_hex(3)}", "ul0", running.vms[0])
    line = _run_refused(running, tmp_path, config)
    assert "'ul0' already exists" in line and "choose another tap name" in line, line


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_tap_name_taken_in_vm_namespace(running: sclp_testbed.Testbed, tmp_path: Path) -> None:
    # tap0 already lives in vm1 (the running endpoint's TAP): moving a second one fails.
    config = _config(running, f"e2e{secrets.token_hex(3)}", "tap0", running.vms[0])
    line = _run_refused(running, tmp_path, config)
    assert "'tap0' already exists" in line and running.vms[0] in line, line
    assert "choose another tap name" in line, line


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_missing_vm_namespace(running: sclp_testbed.Testbed, tmp_path: Path) -> None:
    missing = f"sclp-{secrets.token_hex(3)}-nosuch"
    config = _config(running, f"e2e{secrets.token_hex(3)}", "tapnons", missing)
    line = _run_refused(running, tmp_path, config)
    assert f"{missing!r}" in line and "does not exist" in line and "ip netns add" in line, line


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_missing_underlay_namespace(running: sclp_testbed.Testbed, tmp_path: Path) -> None:
    missing = f"sclp-{secrets.token_hex(3)}-nosuch"
    config = _config(running, f"e2e{secrets.token_hex(3)}", "tapnons", running.vms[0], missing)
    line = _run_refused(running, tmp_path, config)
    assert f"underlay namespace {missing!r} does not exist" in line, line

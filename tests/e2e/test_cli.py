"""The ``sclp`` command's error paths: each failure is one ``sclp: error:`` line on
stderr naming the problem, with a non-zero exit status, and a refused endpoint
leaves the running one (and the namespaces) as they were."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
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
def test_run_name_reads_the_file_of_that_name(tmp_path: Path) -> None:
    result = sclp_cli("run", "host7", "--config-dir", str(tmp_path))
    assert_one_error(result, f"{tmp_path}/host7.toml does not exist", "--config FILE")
    assert result.returncode == 1
    (tmp_path / "host7.toml").write_text('name = "host7"\n')  # read, and refused
    result = sclp_cli("run", "host7", "--config-dir", str(tmp_path))
    assert_one_error(result, "underlay: missing")
    assert result.returncode == 1


@pytest.mark.timeout(30)
def test_run_name_and_config_together_is_a_usage_error(tmp_path: Path) -> None:
    result = sclp_cli("run", "host7", "--config", str(tmp_path / "x.toml"))
    assert_one_error(result, "not both")
    assert result.returncode == 2
    result = sclp_cli("run")
    assert_one_error(result, "say which configuration", "/etc/sclp/NAME.toml")
    assert result.returncode == 2
    result = sclp_cli("run", "a/b")
    assert_one_error(result, "'a/b' is not an endpoint name")


CHECKED = (
    'name = "chk1"\n[underlay]\nlocal = "127.0.0.1"\nmtu = 1500\n'
    '[[network]]\nvni = 42\nprotocol = "vxlan"\ntap = "tap42"\npeers = ["10.0.0.2"]\n'
)


@pytest.mark.timeout(30)
def test_check_says_ok_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "chk1.toml"
    config.write_text(CHECKED)
    result = sclp_cli("check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == (
        f"ok: {config}: endpoint chk1, 1 network(s) (vni 42 vxlan mtu 1450), peers 10.0.0.2, "
        "cluster off, underlay mtu 1500 (underlay.mtu)\n"
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (("mtu = 1500", "mtu = 1500\nnamespace = 'sclp-nosuch-chk'"), "underlay namespace"),
        (('"127.0.0.1"', '"192.0.2.1"'), "192.0.2.1 is not an address of this host"),
        (("vni = 42", "vni = 16777216"), "network[0].vni (line 6): 16777216 does not fit"),
        (("peers", "peer"), "network[0].peer (line 9): unknown key"),
        (("[underlay]", "[underlay"), "not valid TOML"),
    ],
)
def test_check_refuses_what_run_refuses(
    tmp_path: Path, change: tuple[str, str], fragment: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(CHECKED.replace(*change))
    checked = sclp_cli("check", "--config", str(config))
    line = assert_one_error(checked, fragment)
    assert checked.returncode == 1 and checked.stdout == ""
    if fragment != "underlay namespace":
        return  # run would create (and remove) its control socket and TAP before these
    assert assert_one_error(sclp_cli("run", "--config", str(config))) == line


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
    # sclp check finds it first, with the same line, without starting anything.
    assert assert_one_error(sclp_cli("check", "--config", str(tmp_path / "second.toml"))) == line


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_check_needs_no_capabilities(running: sclp_testbed.Testbed, tmp_path: Path) -> None:
    """With every capability dropped (uid 0 stays: the interpreter here is not readable
    by another user), check still answers; it only cannot look inside the underlay's
    namespace (setns needs CAP_SYS_ADMIN), so that MTU is the device's at start."""
    config = tmp_path / "nocaps.toml"
    config.write_text(_config(running, f"e2e{secrets.token_hex(3)}", "tapnc", running.vms[0]))
    drop = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all"]
    result = subprocess.run(
        [*drop, sys.executable, "-m", "sclp", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("underlay mtu: from the device at start"), result
    config.write_text(config.read_text().replace(running.vms[0], "sclp-nosuch-nocaps"))
    result = subprocess.run(
        [*drop, sys.executable, "-m", "sclp", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert_one_error(result, "network namespace 'sclp-nosuch-nocaps' (vni 42) does not exist")


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_check_reads_the_underlay_mtu_inside_the_underlay_namespace(
    running: sclp_testbed.Testbed, tmp_path: Path
) -> None:
    config = tmp_path / "ns.toml"
    config.write_text(_config(running, f"e2e{secrets.token_hex(3)}", "tapchk", running.vms[0]))
    result = sclp_cli("check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "(vni 42 vxlan mtu 1450)" in result.stdout, result.stdout
    assert result.stdout.rstrip().endswith("underlay mtu 1500 (device ul0)"), result.stdout


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_missing_underlay_namespace(running: sclp_testbed.Testbed, tmp_path: Path) -> None:
    missing = f"sclp-{secrets.token_hex(3)}-nosuch"
    config = _config(running, f"e2e{secrets.token_hex(3)}", "tapnons", running.vms[0], missing)
    line = _run_refused(running, tmp_path, config)
    assert f"underlay namespace {missing!r} does not exist" in line, line

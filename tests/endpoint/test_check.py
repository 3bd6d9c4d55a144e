"""``sclp check`` and the configuration a command reads, in process and without root:
the checks against this host use the loopback address, which every namespace has."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sclp import cli
from sclp.endpoint.config import ConfigError
from sclp.endpoint.preflight import AT_START, check_config
from sclp.endpoint.provision import EndpointError
from sclp.io import netns as nsio

CONFIG = """name = "host1"
[underlay]
local = "127.0.0.1"
{underlay}
[[network]]
vni = 42
tap = "tap42"
peers = ["10.0.0.2"]
[[network]]
vni = 43
protocol = "vxlan"
attach = ["vnet*"]
peers = ["10.0.0.2", "10.0.0.3"]
{network}
"""


def write(tmp_path: Path, underlay: str = "", network: str = "", extra: str = "") -> Path:
    path = tmp_path / "host1.toml"
    path.write_text(CONFIG.format(underlay=underlay, network=network) + extra)
    return path


def lo_mtu() -> int:
    return int(Path("/sys/class/net/lo/mtu").read_text())


# -- NAME or --config: which file ---------------------------------------------------------


def test_a_name_reads_the_file_of_that_name_in_the_directory(tmp_path: Path) -> None:
    (tmp_path / "host1.toml").write_text("")
    assert cli.config_file("host1", None, str(tmp_path)) == str(tmp_path / "host1.toml")
    assert cli.config_file(None, "elsewhere.toml", str(tmp_path)) == "elsewhere.toml"


def test_a_missing_named_file_names_its_path_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(cli.ConfigChoiceError) as caught:
        cli.config_file("host2", None, str(tmp_path))
    assert caught.value.code == cli.EXIT_ERROR
    message = str(caught.value)
    assert f"{tmp_path}/host2.toml does not exist" in message
    assert "contrib/examples/" in message and "--config FILE" in message


@pytest.mark.parametrize(
    ("name", "config", "fragment"),
    [
        ("host1", "host1.toml", "not both"),
        (None, None, "say which configuration"),
        ("../etc/passwd", None, "is not an endpoint name"),
        ("a" * 33, None, "is not an endpoint name"),
        ("", None, "is not an endpoint name"),
    ],
)
def test_a_bad_choice_is_a_usage_error(
    tmp_path: Path, name: str | None, config: str | None, fragment: str
) -> None:
    with pytest.raises(cli.ConfigChoiceError) as caught:
        cli.config_file(name, config, str(tmp_path))
    assert caught.value.code == cli.EXIT_USAGE
    assert fragment in str(caught.value)


def test_the_default_directory_is_etc_sclp() -> None:
    args = cli.build_parser().parse_args(["run", "host1"])
    assert (args.name, args.config, args.config_dir) == ("host1", None, "/etc/sclp")
    args = cli.build_parser().parse_args(["check", "--config", "f.toml"])
    assert (args.name, args.config, args.config_dir) == (None, "f.toml", "/etc/sclp")


# -- check_config -------------------------------------------------------------------------


def test_the_underlay_mtu_comes_from_the_device_of_the_local_address(tmp_path: Path) -> None:
    report = check_config(write(tmp_path))
    mtu = lo_mtu()
    assert (report.underlay_mtu, report.mtu_source) == (mtu, "device lo")
    # SCLP carries the VM's frames whole; VXLAN over IPv4 takes 50 bytes off.
    assert report.vm_mtus == {42: mtu, 43: mtu - 50}
    assert report.line() == (
        f"ok: {tmp_path}/host1.toml: endpoint host1, 2 network(s) (vni 42 vxlan-sclp mtu "
        f"{mtu}, vni 43 vxlan mtu {mtu - 50}), peers 10.0.0.2, 10.0.0.3, cluster off, "
        f"underlay mtu {mtu} (device lo)"
    )


def test_underlay_mtu_and_a_network_mtu_from_the_file(tmp_path: Path) -> None:
    report = check_config(write(tmp_path, "mtu = 1500", "mtu = 1400"))
    assert (report.underlay_mtu, report.mtu_source) == (1500, "underlay.mtu")
    assert report.vm_mtus == {42: 1500, 43: 1400}
    assert "vni 42 vxlan-sclp mtu 1500, vni 43 vxlan mtu 1400" in report.line()


def test_file_only_does_not_look_at_this_host(tmp_path: Path) -> None:
    path = tmp_path / "other.toml"
    path.write_text(write(tmp_path).read_text().replace("127.0.0.1", "192.0.2.1"))
    with pytest.raises(EndpointError, match=r"192\.0\.2\.1 is not an address of this host"):
        check_config(path)
    report = check_config(path, host=False)
    assert (report.underlay_mtu, report.mtu_source) == (None, AT_START)
    assert report.vm_mtus == {42: None, 43: None}
    assert report.line().endswith("underlay mtu: from the device at start")
    assert "vni 43 vxlan mtu (at start)" in report.line()
    path.write_text(path.read_text().replace("[[network]]", "mtu = 9000\n[[network]]", 1))
    assert check_config(path, host=False).vm_mtus == {42: 9000, 43: 9000 - 50}


def test_without_root_a_device_in_another_namespace_is_known_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Looking into underlay.namespace needs CAP_SYS_ADMIN; a non-root check says so
    instead of failing (the namespace's existence is still checked)."""
    monkeypatch.setattr(nsio, "netns_exists", lambda name: name == "ul-ns")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    report = check_config(write(tmp_path, 'namespace = "ul-ns"'))
    assert (report.underlay_mtu, report.mtu_source) == (None, AT_START)
    report = check_config(write(tmp_path, 'namespace = "ul-ns"\nmtu = 1500'))
    assert (report.underlay_mtu, report.vm_mtus) == (1500, {42: 1500, 43: 1450})


@pytest.mark.parametrize(
    ("underlay", "network", "extra", "error", "fragment"),
    [
        ('namespace = "sclp-nosuch-ul"', "", "", EndpointError, "underlay namespace"),
        ("", "", '[metrics]\nlisten = "192.0.2.7:9723"', EndpointError, "metrics.listen"),
        ("", "colour = 1", "", ConfigError, "network[1].colour (line 14): unknown key"),
        ("mtu = 100", "", "", ConfigError, "underlay.mtu (line 4): 100 is out of range"),
    ],
)
def test_what_run_would_refuse_is_one_error(
    tmp_path: Path,
    underlay: str,
    network: str,
    extra: str,
    error: type[Exception],
    fragment: str,
) -> None:
    with pytest.raises(error) as caught:
        check_config(write(tmp_path, underlay, network, extra))
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_vm_namespace_is_the_error_of_a_start(tmp_path: Path) -> None:
    path = tmp_path / "ns.toml"
    path.write_text(
        write(tmp_path).read_text().replace('tap = "tap42"', 'tap = "tap42"\nnamespace = "vm-x"')
    )
    with pytest.raises(EndpointError) as caught:
        check_config(path)
    assert str(caught.value) == (
        "network namespace 'vm-x' (vni 42) does not exist; create it with: ip netns add vm-x"
    )


def test_a_cluster_is_named_in_the_line(tmp_path: Path) -> None:
    extra = '[cluster]\netcd = ["http://127.0.0.1:2379"]\n'
    assert "cluster on (http://127.0.0.1:2379)" in check_config(write(tmp_path, extra=extra)).line()


# -- the command ----------------------------------------------------------------------------


def test_check_prints_one_ok_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "--config", str(write(tmp_path))]) == 0
    out, err = capsys.readouterr()
    assert err == "" and len(out.splitlines()) == 1 and out.startswith("ok: "), out
    assert cli.main(["check", "host1", "--config-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == out


def test_check_prints_the_error_line_of_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, 'namespace = "sclp-nosuch-ul"')
    assert cli.main(["check", "--config", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "sclp: error: underlay namespace 'sclp-nosuch-ul' does not exist; create it "
        "(ip netns add sclp-nosuch-ul) or remove underlay.namespace\n"
    )
    assert cli.main(["check", "nosuch", "--config-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith(f"sclp: error: {tmp_path}/nosuch.toml does not")
    assert cli.main(["check", "host1", "--config", str(path)]) == cli.EXIT_USAGE
    assert "not both" in capsys.readouterr().err

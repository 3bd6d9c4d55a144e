"""The example configurations in contrib/examples/ pass ``sclp check``, and a few broken
variants of them fail it with one error line and exit status 1 (no root needed).

The examples name addresses and namespaces of machines that are not this one, so they
are checked with ``--file-only``, and again against this host with ``local`` rewritten
to 127.0.0.1 and the VMs' namespaces left out. The cluster example's TLS files must
exist for the file to be valid: the test writes stand-ins and points the keys at them
(check verifies that they are files, not that they are certificates).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "contrib" / "examples"
NAMES = ("host1.toml", "host2.toml", "cluster-tls.toml", "attach-only.toml", "evpn-leaf.toml")


def sclp_check(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sclp", "check", "--config", str(path), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def usable(name: str, tmp_path: Path) -> str:
    """The example's text with its TLS files replaced by stand-ins in ``tmp_path``."""
    text = (EXAMPLES / name).read_text()
    for key in ("ca", "cert", "key"):
        match = re.search(rf'^{key} = "(/etc/sclp/[^"]+)"', text, re.M)
        if match is None:
            continue
        stand_in = tmp_path / Path(match[1]).name
        stand_in.write_text(f"stand-in for {match[1]}\n")
        text = text.replace(match[0], f'{key} = "{stand_in}"')
    return text


def assert_one_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 1, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sclp: error: "), result.stderr
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def test_the_examples_are_all_here() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.toml")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_an_example_passes_check(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_text(usable(name, tmp_path))
    result = sclp_check(path, "--file-only")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith(f"ok: {path}: endpoint "), result.stdout
    assert result.stdout.rstrip().endswith("underlay mtu: from the device at start")
    assert len(result.stdout.splitlines()) == 1


@pytest.mark.parametrize("name", NAMES)
def test_an_example_passes_check_against_this_host(name: str, tmp_path: Path) -> None:
    text = usable(name, tmp_path)
    text = re.sub(r'^local = ".*"', 'local = "127.0.0.1"', text, flags=re.M)
    text = re.sub(r"^(namespace|address) = .*\n", "", text, flags=re.M)
    path = tmp_path / name
    path.write_text(text)
    result = sclp_check(path)
    assert result.returncode == 0, result.stderr
    mtu = int(Path("/sys/class/net/lo/mtu").read_text())
    assert result.stdout.rstrip().endswith(f"underlay mtu {mtu} (device lo)"), result.stdout
    # A leaf of an EVPN fabric may have plain-VXLAN peers: the VM MTU is VXLAN's.
    vm_mtu = mtu - 50 if name == "evpn-leaf.toml" else mtu
    assert f"vxlan-sclp mtu {vm_mtu}" in result.stdout, result.stdout


def test_the_cluster_example_names_its_tls_and_discovers_its_peers(tmp_path: Path) -> None:
    path = tmp_path / "cluster-tls.toml"
    path.write_text(usable("cluster-tls.toml", tmp_path))
    out = sclp_check(path, "--file-only").stdout
    assert "2 network(s) (vni 100 vxlan-sclp mtu (at start), vni 200 geneve-sclp" in out, out
    assert "peers (none in the file)" in out
    assert "cluster on (https://10.0.1.5:2379, https://10.0.1.6:2379, " in out and ", tls)" in out


def test_the_cluster_example_without_its_tls_files_is_refused() -> None:
    # As shipped it points at /etc/sclp/etcd-ca.pem, which this machine does not have.
    assert not Path("/etc/sclp/etcd-ca.pem").exists()
    result = sclp_check(EXAMPLES / "cluster-tls.toml", "--file-only")
    assert_one_error(result, "cluster.ca (line 23): /etc/sclp/etcd-ca.pem is not a readable file")


@pytest.mark.parametrize(
    ("name", "old", "new", "fragment"),
    [
        ("host1.toml", 'peers = ["10.0.0.2"]', 'peers = "10.0.0.2"', "network[0].peers (line 34)"),
        ("host1.toml", 'sclp_carrier = "udp"', 'sclp_carrier = "tcp"', "is not a carrier"),
        ("host2.toml", 'protocol = "vxlan-sclp"', 'protocol = "sclp"', "unknown protocol"),
        ("cluster-tls.toml", "https://10.0.1.5:2379", "http://10.0.1.5:2379", "use https://"),
        ("cluster-tls.toml", 'key = "', 'keyfile = "', "give both cert and key"),
        ("attach-only.toml", '"veth*"]', '"veth/*"]', "is not an interface name or shell-style"),
        ("attach-only.toml", "attach = ", "attached = ", "tap: missing"),
    ],
)
def test_a_broken_example_fails_with_one_line(
    name: str, old: str, new: str, fragment: str, tmp_path: Path
) -> None:
    text = usable(name, tmp_path)
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1))
    assert_one_error(sclp_check(path, "--file-only"), fragment)

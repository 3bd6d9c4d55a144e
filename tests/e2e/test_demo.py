"""``sclp demo`` runs to the end and leaves nothing behind, also when interrupted."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from sclp.endpoint.control import socket_path
from sclp.io import netns as nsio

from .helpers import child_commands, wait_for

pytestmark = [pytest.mark.netns]

_TAG = re.compile(r"sclp-([0-9a-f]{6})-vm1")


def _iperf3_client(pid: int) -> bool:
    return any(argv[:2] == ["iperf3", "-c"] for argv in child_commands(pid).values())


def _leftovers(tag: str) -> list[str]:
    namespaces = [n for n in nsio.list_netns() if n.startswith(f"sclp-{tag}-")]
    sockets = [
        p for p in (socket_path(f"tb{tag}h1"), socket_path(f"tb{tag}h2")) if os.path.exists(p)
    ]
    return namespaces + sockets


@pytest.mark.timeout(90)
def test_demo_runs_and_cleans_up() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sclp", "demo", "--seconds", "2"],
        capture_output=True,
        text=True,
        timeout=80,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found = _TAG.search(result.stdout)
    assert found, result.stdout
    assert "0% packet loss" in result.stdout
    assert "Gbit/s" in result.stdout
    assert not _leftovers(found.group(1))


@pytest.mark.timeout(90)
def test_interrupted_demo_cleans_up() -> None:
    before = set(nsio.list_netns())
    proc = subprocess.Popen(
        [sys.executable, "-m", "sclp", "demo", "--seconds", "10"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        # A harness started in the background (`cmd &` in a script) ignores SIGINT and
        # its children inherit that: give the demo the default handler, as a terminal
        # would, so Ctrl-C is what is tested.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        # Interrupt it once the testbed is up and traffic is flowing.
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("ping"):
                break
        # The demo names its VM namespace (other runs may build testbeds meanwhile).
        found = _TAG.search("".join(lines))
        assert found, "".join(lines)
        tag = found.group(1)
        assert found.group(0) in set(nsio.list_netns()) - before, "".join(lines)
        # Interrupt while the iperf3 client runs (its server is listening by then).
        wait_for(
            lambda: _iperf3_client(proc.pid),
            timeout=30.0,
            what="demo's iperf3 client started",
        )
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, "".join(lines) + rest
    assert "interrupted" in rest
    assert not _leftovers(tag)


@pytest.mark.timeout(120)
def test_cluster_demo_shows_all_pairs_and_cleans_up() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sclp", "demo", "--hosts", "3"],
        capture_output=True,
        text=True,
        timeout=110,
        stdin=subprocess.DEVNULL,
        check=False,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 hosts registered in etcd" in result.stdout
    assert result.stdout.count(" ok ") == 6  # every ordered pair of the 3 VMs
    assert "demo OK" in result.stdout
    found = re.search(r"cl([0-9a-f]{6})h0", result.stdout)
    assert found, result.stdout
    assert not [n for n in nsio.list_netns() if n.startswith(f"sclp-{found.group(1)}-")]


def test_cluster_demo_wants_three_hosts_or_more() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sclp", "demo", "--hosts", "2"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2 and "--hosts: give 3 or more" in result.stderr

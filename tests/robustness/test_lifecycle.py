"""Starting, stopping and crashing: what the endpoint leaves behind.

- SIGTERM while iperf3 runs through the endpoint: it exits 0 and removes its TAP
  (gone from the VM namespace), its nftables table (STT) and its control socket.  How
  long it takes depends on the CPU share, so it is recorded (``record``), not
  asserted; not exiting within 10 s fails.
- ``kill -9``: the kernel removes the TAP with the process (non-persistent TAPs go
  with their descriptor), but the control socket file and STT's nftables table stay;
  the next ``sclp run`` with the same configuration reclaims the socket, replaces
  the table (still exactly one, with one rule) and forwards again.
- A second endpoint whose TAP name is held by a running one, in the same namespace,
  refuses with one clear line (same name and TAP-in-the-VM cases: tests/e2e/test_cli).
- Without root, or as root without CAP_NET_ADMIN: one ``sclp: error:`` line.
- Config errors in the tables this work relies on name the key and the line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sclp.endpoint.config import ConfigError, parse_config
from sclp.endpoint.control import ControlError, query, socket_path
from sclp.io import netns as nsio
from sclp.io.nft import peer_filter_table, stt_guard_table
from sclp.lab import testbed as sclp_testbed
from sclp.lab.testbed import OVERLAY

from ..e2e.helpers import (
    Topology,
    counters,
    ping,
    run_in,
    sclp_cli,
    shut_down,
    wait_for_counters,
)
from .hostile import iperf3_popen, record, stop

LOAD_BYTES = 2 * 1024 * 1024  # sent through the endpoint before the SIGTERM
CASES = [("stt", "ip"), ("vxlan-sclp", "ip"), ("geneve-sclp", "udp"), ("vxlan", "ip")]


def _case_id(case: tuple[str, str]) -> str:
    protocol, carrier = case
    return f"{protocol}-{carrier}" if protocol.endswith("sclp") else protocol


def _sclp_tables(netns: str) -> dict[tuple[str, str], int]:
    """The endpoints' nftables tables in ``netns``: (family, name) -> rule count."""
    ruleset = json.loads(run_in(netns, ["nft", "-j", "list", "ruleset"]).stdout)
    tables: dict[tuple[str, str], int] = {}
    for item in ruleset.get("nftables", []):
        kind, body = next(iter(item.items()))
        if kind in ("table", "rule"):
            key = (body["family"], body["name"] if kind == "table" else body["table"])
            if key[1].startswith("sclp_"):
                tables[key] = tables.get(key, 0) + (kind == "rule")
    return tables


def _links(netns: str) -> list[str]:
    with nsio.NetNS(netns) as ns:
        return sorted(str(m.get_attr("IFLA_IFNAME")) for m in ns.ipr.get_links())


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sclp: error: "), result.stderr
    return lines[0]


@pytest.mark.netns
@pytest.mark.timeout(90)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_sigterm_under_full_load_exits_fast_and_cleans_up(case: tuple[str, str]) -> None:
    protocol, carrier = case
    with sclp_testbed.Testbed(protocol, carrier=carrier) as tb:
        name = tb.endpoint_name(0)
        assert os.path.exists(socket_path(name))
        tables = _sclp_tables(tb.hosts[0])
        assert ("inet", peer_filter_table(name)) in tables  # strangers dropped in the kernel
        assert (("inet", stt_guard_table(name)) in tables) == (protocol == "stt")
        before = counters(tb.stats(0))
        server, client = iperf3_popen(tb.vms[0], tb.vms[1], OVERLAY[1], 10)
        try:
            # Under load: the iperf3 stream is flowing through the endpoint.
            wait_for_counters(
                lambda: tb.stats(0),
                before,
                lambda c: c["tx_bytes"] >= LOAD_BYTES,
                timeout=7.0,
                what=f"{LOAD_BYTES} bytes of iperf3 through the endpoint",
            )
            assert client.poll() is None, "iperf3 ended early"
            proc = tb.endpoints[0]
            start = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=10)
            took = time.monotonic() - start
        finally:
            stop(client)
            stop(server)
        record(f"sigterm[{_case_id(case)}]", {"exit_seconds": round(took, 3)})
        assert code == 0, tb.log_text(0)[-500:]
        assert not os.path.exists(socket_path(name))
        assert "tap0" not in _links(tb.vms[0])
        assert _sclp_tables(tb.hosts[0]) == {}
        assert "stopped; TAPs, rules and sockets removed" in tb.log_text(0)
        shut_down(tb)


def _restart(tb: sclp_testbed.Testbed, i: int, timeout: float = 15.0) -> subprocess.Popen[bytes]:
    """Start endpoint ``i`` again from its configuration file; it replaces the old
    process in ``tb.endpoints`` so that the testbed stops it."""
    assert tb.workdir is not None
    log = open(tb.workdir / f"h{i + 1}-again.log", "wb")  # noqa: SIM115 - the child's
    proc = subprocess.Popen(
        [sys.executable, "-m", "sclp", "run", "--config", str(tb.workdir / f"h{i + 1}.toml")],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    tb.endpoints[i] = proc
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tb.workdir / f"h{i + 1}-again.log").read_text()
        try:
            query(socket_path(tb.endpoint_name(i)), timeout=1.0)
            return proc
        except (ControlError, OSError, json.JSONDecodeError):
            time.sleep(0.05)
    raise AssertionError("the restarted endpoint did not come up")


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_kill_9_leaves_state_that_the_next_start_cleans() -> None:
    with sclp_testbed.Testbed("stt") as tb:
        name = tb.endpoint_name(0)
        try:
            _kill_and_restart(tb, name)
        finally:  # a failure after the kill must not leave the stale socket behind
            if tb.endpoints[0].poll() is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(socket_path(name))
        shut_down(tb)


def _kill_and_restart(tb: sclp_testbed.Testbed, name: str) -> None:
    assert ping(tb.vms[0], OVERLAY[1])
    tables = _sclp_tables(tb.hosts[0])
    assert {t for _, t in tables} == {stt_guard_table(name), peer_filter_table(name)}
    tb.endpoints[0].kill()
    tb.endpoints[0].wait(timeout=5)
    # What a crash leaves: the socket file and the nftables tables.  The TAP went
    # with the process's descriptor.
    assert os.path.exists(socket_path(name))
    assert _sclp_tables(tb.hosts[0]) == tables
    assert "tap0" not in _links(tb.vms[0])

    _restart(tb, 0)
    assert _sclp_tables(tb.hosts[0]) == tables  # replaced, not added to
    assert ping(tb.vms[0], OVERLAY[1])

    tb.endpoints[0].send_signal(signal.SIGTERM)
    assert tb.endpoints[0].wait(timeout=10) == 0
    assert not os.path.exists(socket_path(name))
    assert _sclp_tables(tb.hosts[0]) == {}


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_second_endpoint_with_a_tap_in_use_in_its_namespace_refuses(tmp_path: Path) -> None:
    with Topology() as topo:
        host = topo.netns("h")
        with nsio.NetNS(host) as ns:
            ns.set_link("lo", up=True)
        config = (
            'name = "{name}"\n[underlay]\nlocal = "127.0.0.1"\nmtu = 1500\nnamespace = "{host}"\n'
            '[[network]]\nvni = 42\nprotocol = "{protocol}"\ntap = "dup0"\n'
            'peers = ["127.0.0.2"]\n'
        )
        first = topo.endpoint_name("a")
        topo.start_endpoint(first, config.format(name=first, host=host, protocol="vxlan"))
        second = tmp_path / "second.toml"
        name = topo.endpoint_name("b")
        second.write_text(config.format(name=name, host=host, protocol="geneve"))
        line = _one_error_line(sclp_cli("run", "--config", str(second)))
        assert "'dup0' is in use by another process" in line, line
        assert not os.path.exists(socket_path(name))  # the refused one left nothing
        assert topo.endpoints[0].proc.poll() is None
        assert topo.stop_endpoints() == [0]


def _privileged_helpers() -> str | None:
    if os.geteuid() != 0:
        return "needs root to drop privileges"
    if shutil.which("setpriv") is None:
        return "needs setpriv (util-linux)"
    return None


@pytest.mark.skipif(_privileged_helpers() is not None, reason=str(_privileged_helpers()))
@pytest.mark.timeout(60)
def test_without_root_one_line_error(tmp_path: Path) -> None:
    config = tmp_path / "user.toml"
    config.write_text(
        'name = "nonroot"\n[underlay]\nlocal = "127.0.0.1"\n'
        '[[network]]\nvni = 42\ntap = "tapnr0"\npeers = ["127.0.0.2"]\n'
    )
    # As user nobody.  CAP_DAC_READ_SEARCH only lets it read this interpreter and the
    # configuration wherever they live; it gives no network privilege.
    result = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=+dac_read_search",
            "--ambient-caps=+dac_read_search",
            sys.executable,
            "-m",
            "sclp",
            "run",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    line = _one_error_line(result)
    assert "needs root (CAP_NET_ADMIN)" in line, line


@pytest.mark.skipif(_privileged_helpers() is not None, reason=str(_privileged_helpers()))
@pytest.mark.timeout(60)
def test_root_without_cap_net_admin_one_line_error(tmp_path: Path) -> None:
    config = tmp_path / "nocap.toml"
    name = f"nocap{os.getpid()}"
    config.write_text(
        f'name = "{name}"\n[underlay]\nlocal = "127.0.0.1"\n'
        '[[network]]\nvni = 42\ntap = "tapnc0"\npeers = ["127.0.0.2"]\n'
    )
    result = subprocess.run(
        [
            "setpriv",
            "--bounding-set=-net_admin",
            "--inh-caps=-net_admin",
            *(sys.executable, "-m", "sclp", "run", "--config", str(config)),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    line = _one_error_line(result)
    assert "CAP_NET_ADMIN" in line and "tapnc0" in line, line
    assert not os.path.exists(socket_path(name))  # undone on the way out


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[underlay.faults]\ndrop = 1.5\n", "underlay.faults.drop (line 5): 1.5 is not a fraction"),
        ("[underlay.faults]\ncorupt = 0.1\n", "underlay.faults.corupt (line 5): unknown key"),
        ("[underlay.faults]\nseed = 0.5\n", "underlay.faults.seed (line 5): expected an integer"),
        ("[limits]\nreasm_max_bytes = 0\n", "limits.reasm_max_bytes (line 5): 0 is out of range"),
        ("[limits]\nreasm_timeout = -1\n", "limits.reasm_timeout (line 5): -1 s is out of range"),
        ("[limits]\nfdb_max_entries = true\n", "limits.fdb_max_entries (line 5): expected"),
    ],
)
def test_config_errors_of_the_limits_and_faults_name_key_and_line(text: str, where: str) -> None:
    config = (
        'name = "c"\n'  # 1
        "[underlay]\n"  # 2
        'local = "10.77.0.1"\n'  # 3
        f"{text}"  # 4, 5
        '[[network]]\nvni = 42\ntap = "tap0"\n'
    )
    with pytest.raises(ConfigError) as info:
        parse_config(config, "test.toml")
    assert str(info.value).startswith(where), str(info.value)

"""The systemd notify protocol against a fake manager: a datagram UNIX socket bound in
a temporary directory (and one in the abstract namespace) stands for NOTIFY_SOCKET.
No root, no systemd; the unit file is checked with ``systemd-analyze verify``."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sclp.endpoint import reload
from sclp.endpoint.config import load_config
from sclp.endpoint.nve import Endpoint
from sclp.endpoint.service import Notifier, Watchdog, watchdog_interval

UNIT = Path(__file__).resolve().parents[2] / "contrib" / "systemd" / "sclp@.service"


def _manager(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2.0)
    return sock


@pytest.fixture
def path_manager(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    address = str(tmp_path / "notify")
    sock = _manager(address)
    yield sock, address
    sock.close()


def _received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def _nothing_waiting(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(2.0)
    return False


def test_states_reach_a_path_socket(path_manager: tuple[socket.socket, str]) -> None:
    sock, address = path_manager
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address})
    assert notifier is not None
    with notifier:
        assert notifier.notify("READY=1", "STATUS=serving 2 networks")
        assert _received(sock) == ["READY=1", "STATUS=serving 2 networks"]
        assert notifier.notify("WATCHDOG=1")
        assert _received(sock) == ["WATCHDOG=1"]
        assert notifier.status("line one\nline two")  # a newline would start a new key
        assert _received(sock) == ["STATUS=line one line two"]
        assert notifier.reloading(monotonic_usec=1234)
        assert _received(sock) == ["RELOADING=1", "MONOTONIC_USEC=1234"]
        assert notifier.ready()
        assert _received(sock) == ["READY=1"]
        assert notifier.stopping("bye")
        assert _received(sock) == ["STOPPING=1", "STATUS=bye"]
        assert not notifier.notify()  # nothing to say is not a datagram


def test_reloading_stamps_the_monotonic_clock(path_manager: tuple[socket.socket, str]) -> None:
    sock, address = path_manager
    with Notifier(address) as notifier:
        assert notifier.reloading()
        reloading, stamp = _received(sock)
    assert reloading == "RELOADING=1"
    match = re.fullmatch(r"MONOTONIC_USEC=(\d+)", stamp)
    assert match is not None
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert 0 <= now - int(match[1]) < 5_000_000


ENDPOINT_CONFIG = """
name = "h1"
[underlay]
local = "10.0.0.1"
[[network]]
vni = 42
protocol = "vxlan"
tap = "t42"
peers = ["10.0.0.2"]
"""


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


@pytest.mark.parametrize("edit", ["unchanged", "broken"])
def test_a_reload_tells_systemd_reloading_with_its_time_then_ready(
    path_manager: tuple[socket.socket, str], tmp_path: Path, edit: str
) -> None:
    """``Type=notify-reload`` (sd_notify(3)): RELOADING=1 carries MONOTONIC_USEC, and
    READY=1 follows whatever the reload found (here: the same file, or a broken one)."""
    sock, address = path_manager
    path = tmp_path / "h1.toml"
    path.write_text(ENDPOINT_CONFIG)
    ep = Endpoint(load_config(path), config_path=str(path))
    if edit == "broken":
        path.write_text("this is not toml")
    with Notifier(address) as notifier:
        ep.notifier = notifier
        before = _monotonic_usec()
        report = reload.reload_file(ep, "SIGHUP")
        after = _monotonic_usec()
        reloading = _received(sock)
        ready = _received(sock)
    assert report.ok == (edit == "unchanged")
    assert reloading[0] == "RELOADING=1"
    assert len(reloading) == 2
    match = re.fullmatch(r"MONOTONIC_USEC=(\d+)", reloading[1])
    assert match is not None, reloading
    assert before <= int(match.group(1)) <= after
    assert ready[0] == "READY=1"
    assert ready[1].startswith("STATUS=forwarding")
    assert _nothing_waiting(sock)


def test_states_reach_an_abstract_socket() -> None:
    name = f"sclp-test-notify-{os.getpid()}"
    sock = _manager("\0" + name)
    try:
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        assert notifier is not None
        with notifier:
            assert notifier.ready("up")
            assert _received(sock) == ["READY=1", "STATUS=up"]
    finally:
        sock.close()


def test_no_notify_socket_means_no_notifier() -> None:
    assert Notifier.from_environment({}) is None
    assert Notifier.from_environment({"NOTIFY_SOCKET": ""}) is None
    assert Notifier.from_environment({"NOTIFY_SOCKET": "vsock:2:1234"}) is None
    assert Notifier.from_environment({"NOTIFY_SOCKET": "relative/path"}) is None


def test_a_missing_or_unusable_socket_is_false_not_an_exception(tmp_path: Path) -> None:
    for address in (
        str(tmp_path / "nobody-listens"),
        "@sclp-test-nobody-listens-here",
        "/" + "x" * 200,  # longer than sun_path
    ):
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": address})
        assert notifier is not None
        assert not notifier.notify("READY=1")
        assert not notifier.notify("WATCHDOG=1")
        notifier.close()
        notifier.close()


def test_a_full_socket_never_blocks(path_manager: tuple[socket.socket, str]) -> None:
    _, address = path_manager
    with Notifier(address) as notifier:
        results = [notifier.notify("STATUS=" + "x" * 1000) for _ in range(10_000)]
    assert results[0]
    assert not results[-1]  # the queue filled up; notify returned instead of waiting


def test_watchdog_interval_is_half_the_timeout() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "10000000"}) == 5.0
    me = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": me}) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "77"}, pid=77) == 1.5
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "me"}) is None


def test_watchdog_ticks_at_the_interval(path_manager: tuple[socket.socket, str]) -> None:
    sock, address = path_manager
    with Notifier(address) as notifier:
        watchdog = Watchdog(notifier, interval=5.0)
        sent = [now for now in (x / 10 for x in range(0, 121)) if watchdog.tick(now)]
        assert sent == [0.0, 5.0, 10.0]  # the first tick pings at once
        for _ in sent:
            assert _received(sock) == ["WATCHDOG=1"]
        assert _nothing_waiting(sock)
        assert (watchdog.sent, watchdog.failed) == (3, 0)


def test_watchdog_retries_a_failed_ping_on_the_next_tick(tmp_path: Path) -> None:
    address = str(tmp_path / "late")
    with Notifier(address) as notifier:
        watchdog = Watchdog(notifier, interval=5.0)
        assert not watchdog.tick(0.0)  # no manager yet
        assert watchdog.failed == 1
        sock = _manager(address)
        try:
            assert watchdog.tick(0.1)
            assert _received(sock) == ["WATCHDOG=1"]
            assert not watchdog.tick(5.0)
            assert watchdog.tick(5.1)
        finally:
            sock.close()


def test_watchdog_from_environment(path_manager: tuple[socket.socket, str]) -> None:
    _, address = path_manager
    with Notifier(address) as notifier:
        assert Watchdog.from_environment(None, {"WATCHDOG_USEC": "10000000"}) is None
        assert Watchdog.from_environment(notifier, {}) is None
        watchdog = Watchdog.from_environment(notifier, {"WATCHDOG_USEC": "10000000"})
        assert watchdog is not None
        assert watchdog.interval == 5.0
    with pytest.raises(ValueError):
        Watchdog(notifier, 0.0)


def _verify(unit_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit_dir / "sclp@test.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not found")
def test_the_unit_file_verifies(tmp_path: Path) -> None:
    text = UNIT.read_text()
    for key in ("Type=notify", "NotifyAccess=main", "WatchdogSec=10s", "RuntimeDirectory=sclp"):
        assert f"\n{key}\n" in text
    # As written, verify's only complaint is the binary, where it is not installed ...
    (tmp_path / "sclp@.service").write_text(text)
    result = _verify(tmp_path)
    if Path("/opt/sclp/bin/sclp").exists():
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0
        assert result.stderr.strip().splitlines() == [
            "sclp@test.service: Command /opt/sclp/bin/sclp is not executable: "
            "No such file or directory"
        ], result.stderr
    # ... so point ExecStart at this interpreter, which runs the code under test.
    here = f"ExecStart={sys.executable} -m sclp run %i"
    local = text.replace("ExecStart=/opt/sclp/bin/sclp run %i", here)
    assert here in local
    (tmp_path / "sclp@.service").write_text(local)
    result = _verify(tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "sclp@" not in output, output  # unknown keys and bad values are only warnings

    # ... and the check does catch a broken unit.
    (tmp_path / "sclp@.service").write_text(local.replace("LockPersonality=", "LockPersonalty="))
    assert "LockPersonalty" in _verify(tmp_path).stderr


def test_the_units_command_line_names_the_instances_file() -> None:
    """``sclp run %i`` reads /etc/sclp/%i.toml: the instance name is the NAME."""
    from sclp.cli import build_parser

    line = next(x for x in UNIT.read_text().splitlines() if x.startswith("ExecStart="))
    argv = line.removeprefix("ExecStart=").replace("%i", "host1").split()
    assert argv[0] == "/opt/sclp/bin/sclp"
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.name, args.config, args.config_dir) == (
        "run",
        "host1",
        None,
        "/etc/sclp",
    )
    # No User= (nor DynamicUser=): sclp run refuses any uid but 0.
    keys = [x.split("=")[0] for x in UNIT.read_text().splitlines() if not x.startswith("#")]
    assert "User" not in keys and "DynamicUser" not in keys

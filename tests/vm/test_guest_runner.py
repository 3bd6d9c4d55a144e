"""The guest runner itself: commands with status, output and a time limit the guest
enforces, and a boot that fails ends as one clear error with the console's last
lines, within a bounded time."""

from __future__ import annotations

import dataclasses
import secrets
import time
from pathlib import Path

import pytest

from sclp.io import netns as nsio
from sclp.lab.guest import Guest, GuestError, GuestImage
from tests.e2e.helpers import sclp_cli


@pytest.fixture
def netns() -> object:
    name = f"sclp-{secrets.token_hex(3)}-g"
    nsio.create_netns(name).close()
    try:
        yield name
    finally:
        nsio.delete_netns(name)


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_commands_status_output_and_time_limit(guest_image: GuestImage, netns: str) -> None:
    with Guest("cmd", netns, "tapc", "192.168.79.1/24", mtu=1400, image=guest_image) as guest:
        guest.wait_ready()
        shown = guest.run("cat /sys/class/net/eth0/mtu; ip -4 addr show eth0").output
        assert shown.splitlines()[0] == "1400" and "192.168.79.1/24" in shown
        assert guest.run("echo out; echo err >&2; exit 3", check=False).returncode == 3
        with pytest.raises(GuestError, match="exited 3: out\nerr"):
            guest.run("echo out; echo err >&2; exit 3")
        started = time.monotonic()
        with pytest.raises(GuestError, match="killed after its time limit"):
            guest.run("sleep 30", timeout=1)
        assert time.monotonic() - started < 10
        # The channel serves on after a killed command, binary-safe input included.
        assert guest.run("printf '%s' \"$(echo 'a b\n c' | wc -l)\"").output == "2"


@pytest.mark.netns
@pytest.mark.timeout(150)
def test_every_command_line_reaches_the_guest_whole(guest_image: GuestImage, netns: str) -> None:
    """Hundreds of commands in a row, each answered with its own output.  busybox
    ``timeout`` leaves a watchdog that exits up to a second after its command and,
    orphaned, signals PID 1: while the command loop ran there, a ``read`` that signal
    interrupted started again and lost the start of the next line (one command in
    30 to 120 came back garbled, then the channel hung)."""
    with Guest("many", netns, "tapm", image=guest_image) as guest:
        guest.wait_ready()
        for k in range(250):
            line = f"{k}-" + "x" * 150  # long lines: more time inside each read
            assert guest.run(f"echo {line}", timeout=10).output.strip() == line, k


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_failed_boot_is_one_clear_error(
    guest_image: GuestImage, netns: str, tmp_path: Path
) -> None:
    """A broken initramfs: the kernel panics, QEMU exits (``panic=-1``,
    ``-no-reboot``) and the error carries the console's last lines."""
    broken = tmp_path / "initramfs.gz"
    broken.write_bytes(b"not an archive" * 100)
    image = dataclasses.replace(guest_image, initrd=broken)
    started = time.monotonic()
    with (
        pytest.raises(GuestError, match=r"(?s)QEMU exited.*while booting.*Kernel panic"),
        Guest("broken", netns, "tapb", image=image) as guest,
    ):
        guest.wait_ready(timeout=60)
    assert time.monotonic() - started < 60


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_guest_build_command_finds_the_cache_current(guest_image: GuestImage) -> None:
    """``sclp guest build`` (run by quickstart.sh every time) does no work when the
    cache is current and says which accelerator guests will get.  Run twice: the
    first may rebuild if Debian published a newer kernel since the cache was made."""
    for _ in range(2):
        result = sclp_cli("guest", "build", "--cache", str(guest_image.cache), timeout=25)
        assert result.returncode == 0, result.stderr
    assert "is current" in result.stdout and f"kernel:    {guest_image.kernel}" in result.stdout
    assert "accelerator: " in result.stdout


def test_guest_build_command_error_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = sclp_cli("guest", "build", "--cache", str(blocker / "cache"), timeout=30)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("sclp: error: guest build:")

"""Real virtio-net guests for the lab: QEMU boots the cached test guest
(:mod:`sclp.lab.guest_image`) with its NIC on a TAP in a network namespace.

Strategy: QEMU runs inside the namespace (``ip netns exec NS qemu-system-x86_64``)
and creates the TAP itself (``-netdev tap,ifname=...,script=no``), exactly as a
libvirt host does; whoever switches for the guest (a Linux bridge, an endpoint with
``attach = [...]``) finds the TAP there.  The guest has two serial ports: ``ttyS0``
is the console, written to ``console.log`` in the guest's work directory (its last
lines go into every boot error), and ``ttyS1`` is a command channel on a unix
socket.  QEMU waits for us to connect to that socket before it starts the guest
(``server=on,wait=on``), so no line the guest writes is lost; :meth:`Guest.run`
sends one base64-encoded script per line and reads its output up to an end marker
carrying the exit status.  The guest itself enforces each command's time limit
(busybox ``timeout``), so a hung command does not wedge the channel.

The accelerator: KVM when it can boot this guest, TCG (emulation) otherwise.  On
some machines ``/dev/kvm`` opens but a guest kernel hangs before its first line, so
:func:`accelerator` boots the guest once under KVM with a deadline (a few seconds)
and remembers the answer next to the image (``accelerator.json``, per host kernel).

This module is lab code: it may use :mod:`sclp.io.netns`; nothing under
``sclp.endpoint`` or ``sclp.io`` imports it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Self

from sclp.io import netns as nsio
from sclp.lab.guest_image import (
    END_MARK,
    PROBE_MARK,
    READY_MARK,
    GuestBuildError,
    GuestImage,
    build,
    load_image,
)

__all__ = [
    "QEMU",
    "CommandResult",
    "Guest",
    "GuestBuildError",
    "GuestError",
    "GuestImage",
    "accelerator",
    "build",
    "qemu_missing",
]

QEMU: Final = "qemu-system-x86_64"
KVM_PROBE_SECONDS: Final = 8.0  # a working KVM boots the probe in about one second
# Console lines that say why a boot failed (shown even when a backtrace follows).
_TELLING: Final = re.compile(r"Kernel panic|sclp-guest:|error|fail|Unable|not syncing", re.I)


class GuestError(Exception):
    """Starting, booting or driving a guest failed; the message says what and shows
    the guest's last console lines where they help."""


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What :meth:`Guest.run` got back: the exit status and the combined output."""

    returncode: int
    output: str


def qemu_missing() -> str | None:
    """Why no guest can run here (None when one can): QEMU absent, no root, no TUN."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (apt-get install --no-install-recommends qemu-system-x86)"
    if os.geteuid() != 0:
        return "guests need root (QEMU creates TAP devices in network namespaces)"
    if not os.path.exists("/dev/net/tun"):
        return "guests need /dev/net/tun"
    return None


def _boot_args(image: GuestImage, accel: str, memory: int, append: str) -> list[str]:
    return [
        QEMU,
        "-accel",
        accel,
        "-m",
        str(memory),
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        str(image.kernel),
        "-initrd",
        str(image.initrd),
        "-append",
        # no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer check
        # can miss its window and panic ("IO-APIC + timer doesn't work!").
        f"console=ttyS0 quiet panic=-1 no_timer_check {append}".strip(),
    ]


def _kvm_boots(image: GuestImage, timeout: float) -> tuple[bool, str]:
    """Boot the probe guest under KVM; (True, "") if it reported within ``timeout``."""
    if not os.path.exists("/dev/kvm"):
        return False, "no /dev/kvm"
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError as exc:
        return False, f"/dev/kvm: {exc.strerror}"
    with tempfile.TemporaryDirectory(prefix="sclp-kvm-probe-") as tmp:
        console = Path(tmp) / "console.log"
        args = [*_boot_args(image, "kvm", 128, "sclp.probe=1"), "-serial", f"file:{console}"]
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return False, f"a guest under KVM did not boot within {timeout:g} s"
        text = console.read_text(errors="replace") if console.exists() else ""
        if PROBE_MARK in text:
            return True, ""
        detail = (err.decode(errors="replace").strip() or text.strip()).splitlines()[-1:]
        return False, f"KVM boot failed: {' '.join(detail) or f'exit {proc.returncode}'}"


def accelerator(image: GuestImage, probe_timeout: float = KVM_PROBE_SECONDS) -> tuple[str, str]:
    """``("kvm", "")`` when KVM boots ``image`` here, else ``("tcg", why not KVM)``.
    Probed once per image and host kernel; the answer is kept in the image's cache
    (``accelerator.json``) when that is writable."""
    record = image.cache / "accelerator.json"
    host = os.uname().release
    with contextlib.suppress(OSError, ValueError):
        known = json.loads(record.read_text())
        if known.get("host_kernel") == host and known.get("accel") in ("kvm", "tcg"):
            return str(known["accel"]), str(known.get("reason", ""))
    works, reason = _kvm_boots(image, probe_timeout)
    accel = "kvm" if works else "tcg"
    with contextlib.suppress(OSError):
        record.write_text(json.dumps({"host_kernel": host, "accel": accel, "reason": reason}))
    return accel, reason


def random_mac() -> str:
    """A locally administered unicast MAC in QEMU's 52:54:00 range."""
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


class Guest:
    """One QEMU guest whose virtio-net NIC is the TAP ``tap`` in namespace ``netns``.

    ``address`` (with prefix, e.g. ``"192.168.77.1/24"``) and ``mtu`` are set on the
    guest's ``eth0`` by its init; ``mtu`` also goes to the device as ``host_mtu``
    (the MTU a virtio-net device advertises, VIRTIO_NET_F_MTU).  ``accel``:
    ``"auto"`` (see :func:`accelerator`), ``"kvm"`` or ``"tcg"``.

    Use as a context manager: ``with Guest(...) as g: g.wait_ready(); g.run(...)``.
    :meth:`start` returns once QEMU has created the TAP (the guest is still
    booting); :meth:`wait_ready` waits for its command channel; :meth:`close` (also
    on any failure) kills QEMU and removes the work directory.
    """

    def __init__(
        self,
        name: str,
        netns: str,
        tap: str,
        address: str | None = None,
        mtu: int | None = None,
        mac: str | None = None,
        image: GuestImage | None = None,
        accel: str = "auto",
        memory: int = 256,
    ) -> None:
        if accel not in ("auto", "kvm", "tcg"):
            raise ValueError(f"accel must be auto, kvm or tcg, not {accel!r}")
        self.name = name
        self.netns = netns
        self.tap = tap
        self.address = address
        self.mtu = mtu
        self.mac = mac or random_mac()
        self.memory = memory
        self._image = image
        self._accel_choice = accel
        self.accel = ""  # the accelerator used, once started
        self.accel_reason = ""  # why not KVM, when TCG was chosen automatically
        self.workdir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._chan: socket.socket | None = None
        self._buffer = b""
        self.started_at = 0.0
        self.boot_seconds: float | None = None  # start to command channel ready

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- starting ------------------------------------------------------------------

    def console_tail(self, lines: int = 5) -> str:
        """The last ``lines`` lines of the guest's console and QEMU's own errors."""
        if self.workdir is None:
            return ""
        try:
            text = (self.workdir / "console.log").read_text(errors="replace")
        except OSError:
            text = ""
        console = [line.strip() for line in text.splitlines() if line.strip()]
        # A panic's cause sits above its backtrace: keep the telling lines too.
        telling = [line for line in console if _TELLING.search(line)][-3:]
        tail = console[-lines:]
        shown = [line for line in telling if line not in tail] + tail
        qemu = self._qemu_messages()
        out = "console: " + (" | ".join(shown) or "(empty)")
        return out + (f"; qemu: {' | '.join(qemu[-3:])}" if qemu else "")

    def _qemu_messages(self) -> list[str]:
        """What QEMU itself wrote (its stderr), one entry per non-empty line."""
        assert self.workdir is not None
        try:
            text = (self.workdir / "qemu.err").read_text(errors="replace")
        except OSError:
            return []
        return [
            line.strip()
            for line in text.splitlines()
            if line.strip() and "info: QEMU waiting for connection" not in line
        ]

    def _qemu_args(self, accel: str) -> list[str]:
        assert self.workdir is not None and self._image is not None
        append = " ".join(
            f"{key}={value}"
            for key, value in (("sclp.addr", self.address), ("sclp.mtu", self.mtu))
            if value is not None
        )
        device = f"virtio-net-pci,netdev=n0,mac={self.mac}"
        if self.mtu is not None:
            device += f",host_mtu={self.mtu}"
        return [
            *_boot_args(self._image, accel, self.memory, append),
            "-name",
            f"sclp-guest-{self.name}",
            "-chardev",
            f"file,id=con,path={self.workdir / 'console.log'}",
            "-serial",
            "chardev:con",
            "-chardev",
            f"socket,id=cmd,path={self.workdir / 'cmd.sock'},server=on,wait=on",
            "-serial",
            "chardev:cmd",
            "-netdev",
            f"tap,id=n0,ifname={self.tap},script=no,downscript=no,vhost=off",
            "-device",
            device,
        ]

    def start(self, timeout: float = 20.0) -> None:
        """Launch QEMU in the namespace and return once its TAP exists there.
        Raises :class:`GuestError` (QEMU missing or failing, the namespace or TAP
        name taken) or :class:`GuestBuildError` (no image and it cannot be built)."""
        missing = qemu_missing()
        if missing is not None:
            raise GuestError(f"cannot start guest {self.name}: {missing}")
        if not nsio.netns_exists(self.netns):
            raise GuestError(f"guest {self.name}: network namespace {self.netns!r} does not exist")
        if self._image is None:
            self._image = load_image() or build(log=lambda _line: None)
        if self._accel_choice == "auto":
            self.accel, self.accel_reason = accelerator(self._image)
        else:
            self.accel = self._accel_choice
        self.workdir = Path(tempfile.mkdtemp(prefix=f"sclp-guest-{self.name}-"))
        with open(self.workdir / "qemu.err", "wb") as err:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *self._qemu_args(self.accel)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
            )
        self.started_at = time.monotonic()
        deadline = self.started_at + timeout
        self._chan = self._connect(deadline)
        while not self._tap_exists():
            self._check_alive("creating its TAP")
            if time.monotonic() > deadline:
                raise GuestError(
                    f"guest {self.name}: no TAP {self.tap} in {self.netns} after "
                    f"{timeout:g} s: {self.console_tail()}"
                )
            time.sleep(0.02)

    def _connect(self, deadline: float) -> socket.socket:
        assert self.workdir is not None
        path = str(self.workdir / "cmd.sock")
        while True:
            self._check_alive("opening its command channel")
            chan = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                chan.connect(path)
                return chan
            except (FileNotFoundError, ConnectionRefusedError):
                chan.close()
            if time.monotonic() > deadline:
                raise GuestError(
                    f"guest {self.name}: QEMU opened no command channel: {self.console_tail()}"
                )
            time.sleep(0.02)

    def _tap_exists(self) -> bool:
        try:
            with nsio.NetNS(self.netns) as ns:
                ns.link_info(self.tap)
            return True
        except OSError:
            return False

    def _wait_exit(self, timeout: float) -> None:
        """Give an exiting QEMU up to ``timeout`` seconds to be gone."""
        assert self.proc is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)

    def _check_alive(self, doing: str) -> None:
        assert self.proc is not None
        code = self.proc.poll()
        if code is not None:
            raise GuestError(
                f"guest {self.name}: QEMU exited ({code}) while {doing}: {self.console_tail()}"
            )

    def wait_ready(self, timeout: float = 90.0) -> float:
        """Wait for the guest's command channel (its network is configured by then);
        return the seconds since :meth:`start`.  Raises :class:`GuestError` with the
        last console lines if it does not come within ``timeout``."""
        if self.boot_seconds is not None:
            return self.boot_seconds
        try:
            self._read_until(READY_MARK.encode() + b"\n", timeout, "booting")
        except GuestError as exc:
            raise GuestError(f"{exc} (accelerator {self.accel})") from None
        self.boot_seconds = time.monotonic() - self.started_at
        return self.boot_seconds

    def _read_until(self, needle: bytes, timeout: float, doing: str) -> bytes:
        """Everything up to and including ``needle`` from the channel."""
        assert self._chan is not None
        deadline = time.monotonic() + timeout
        while needle not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise GuestError(
                    f"guest {self.name}: nothing within {timeout:g} s while {doing}; "
                    f"{self.console_tail()}"
                )
            self._chan.settimeout(min(left, 0.5))
            try:
                chunk = self._chan.recv(65536)
            except TimeoutError:
                self._check_alive(doing)
                continue
            if not chunk:  # QEMU is exiting (a panic, a power-off): say how it ended
                self._wait_exit(5.0)
                self._check_alive(doing)
                raise GuestError(
                    f"guest {self.name}: command channel closed while {doing}: "
                    f"{self.console_tail()}"
                )
            self._buffer += chunk
        head, _, self._buffer = self._buffer.partition(needle)
        return head

    # -- driving -------------------------------------------------------------------

    def run(self, script: str, timeout: float = 30.0, check: bool = True) -> CommandResult:
        """Run the shell ``script`` in the guest (busybox ``sh``, stdin empty) with a
        time limit the guest enforces; return its status and output.  ``check``:
        raise :class:`GuestError` on a non-zero status.  Start servers with ``&`` and
        their output redirected to a file, or the channel waits for them."""
        if self._chan is None or self.boot_seconds is None:
            raise GuestError(f"guest {self.name}: not ready (call wait_ready first)")
        nonce = secrets.token_hex(4)
        limit = max(1, int(timeout + 0.999))
        encoded = base64.b64encode(script.encode()).decode()
        self._chan.sendall(f"{nonce} {limit} {encoded}\n".encode())
        start = f"\n{END_MARK} {nonce} ".encode()
        head = self._read_until(start, limit + 10.0, f"running {script[:60]!r}")
        status = self._read_until(b"\n", 5.0, "reading an exit status")
        try:
            code = int(status)
        except ValueError:
            raise GuestError(f"guest {self.name}: bad status line {status!r}") from None
        result = CommandResult(code, head.decode(errors="replace"))
        if check and code:
            what = "was killed after its time limit" if code == 137 else f"exited {code}"
            raise GuestError(
                f"guest {self.name}: {script[:80]!r} {what}: {result.output.strip()[-400:]}"
            )
        return result

    # -- stopping ------------------------------------------------------------------

    def close(self) -> None:
        """Kill QEMU (which removes its TAP) and delete the work directory."""
        if self._chan is not None:
            with contextlib.suppress(OSError):
                self._chan.close()
            self._chan = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
            self.proc = None
        if self.workdir is not None and not os.environ.get("SCLP_KEEP_LOGS"):
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

"""libvirt guests for the lab: the test guest (:mod:`sclp.lab.guest_image`) started
by a real ``libvirtd`` as a transient domain whose NIC is an ``ethernet`` interface,
the recipe of docs/vms.md.

Where the TAP appears: libvirtd creates an ``ethernet`` interface's TAP itself, in
its own network namespace, and hands QEMU the file descriptor.  A libvirt host runs
one libvirtd in the root namespace; the lab's two "hosts" are namespaces, so
:class:`Libvirtd` runs one private daemon *inside* each host namespace
(``ip netns exec H``): each domain's TAP is then created in that host's namespace,
where the host's endpoint (``underlay.namespace = H``, ``attach = [...]``) finds it,
and ``virsh destroy`` removes it there: each lab host is what a real one is, a
libvirtd and an endpoint in one namespace.  Measured alternative: moving the TAP
(``ip link set NAME netns H``) after ``virsh create`` works too (the guest's traffic
flows, ``virsh destroy`` removes it without complaint), but needs that step after
every start, racing with the guest's boot; running the endpoints in the root
namespace would put the test's TAPs and underlay next to the machine's own
interfaces.

A private daemon: libvirtd as root always uses fixed paths (``/run/libvirt``,
``/var/lib/libvirt``, ``/var/cache/libvirt``, ``/var/log/libvirt``,
``/etc/libvirt``), so it starts in a mount namespace of its own
(``unshare --mount``) where directories under the daemon's work directory are bound
over those paths; its socket is reached from outside as ``WORKDIR/run/libvirt-sock``
(``qemu:///system?socket=...``), and its PID file is ``WORKDIR/run/libvirtd.pid``.
Its ``qemu.conf`` runs QEMU as root without a security driver (the lab's TCG guests
need nothing else), with QEMU's stdout/stderr in plain files
(``stdio_handler = "file"``: no ``virtlogd``) and without a private ``/dev`` per
guest.  QEMU's capability probe (7–8 s on the test machine, each daemon start) is
kept between runs in the guest cache (``libvirt-qemu-capabilities``) and copied into
each daemon's private cache; libvirt probes again if it is stale.

The command channel works as with plain QEMU (:class:`~sclp.lab.guest.Guest`): the
guest's second serial port is a unix socket, here ``<source mode='connect'>``: we
listen before the domain starts and QEMU connects while it starts up, before the
guest runs, so no line is lost.

Lab code: nothing under ``sclp.endpoint`` or ``sclp.io`` imports it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from sclp.lab.guest import Guest, GuestError, GuestImage, accelerator, qemu_missing
from sclp.lab.guest_image import build, cache_dir, load_image
from sclp.lab.guest_testbed import GuestTestbed
from sclp.lab.testbed import OVERLAY, TestbedError

__all__ = [
    "ATTACH",
    "GUEST_MACS",
    "GUEST_TAPS",
    "PACKAGES",
    "LibvirtError",
    "LibvirtGuest",
    "LibvirtTestbed",
    "Libvirtd",
    "bridge_commands",
    "domain_xml",
    "interface_element",
    "interface_xml",
    "libvirt_missing",
    "network_interface_element",
    "network_xml",
    "prepare_host",
]

LIBVIRTD: Final = "libvirtd"
VIRSH: Final = "virsh"
PACKAGES: Final = ("libvirt-daemon", "libvirt-daemon-driver-qemu", "libvirt-clients")
# The paths a privileged libvirtd uses, each bound to a directory of its own.
PRIVATE_DIRS: Final = {
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
    "etc": "/etc/libvirt",
}
QEMU_CONF: Final = """\
# A private libvirtd of the sclp lab (sclp.lab.libvirt).
user = "root"
group = "root"
security_driver = "none"
stdio_handler = "file"
namespaces = []
"""
LIBVIRTD_CONF: Final = 'unix_sock_dir = "/run/libvirt"\n'
CAPS_CACHE: Final = "libvirt-qemu-capabilities"  # under the guest cache

# The testbed's guests: TAP names an `attach` pattern of each endpoint matches (not
# vnet*/vif*, which libvirt replaces by names of its own) and fixed MACs.
ATTACH: Final = "t42-*"
GUEST_TAPS: Final = ("t42-web0", "t42-web1")
GUEST_MACS: Final = ("52:54:00:42:00:01", "52:54:00:42:00:02")
# The libvirt-network variant: the guests' TAPs (names the pattern does not match) on a
# bridge of our own that a libvirt <network> names, one veth from it to the endpoint.
NETWORK: Final = "sclp42"
BRIDGE: Final = "br42"
UPLINK: Final = ("t42-uplink", "br42-up")  # (the endpoint's end, the bridge's end)
BRIDGED_TAPS: Final = ("n42-web0", "n42-web1")


class LibvirtError(Exception):
    """Preparing, starting or driving libvirtd failed; the message says what."""


def libvirt_missing() -> str | None:
    """Why no libvirt guest can run here (None when one can)."""
    qemu = qemu_missing()
    if qemu is not None:
        return qemu
    for tool in (LIBVIRTD, VIRSH, "unshare"):
        if shutil.which(tool) is None:
            return (
                f"{tool} is not installed (apt-get install --no-install-recommends "
                f"{' '.join(PACKAGES)}; ./quickstart.sh does)"
            )
    return None


def prepare_host() -> None:
    """The one-time set-up a privileged libvirtd needs here, idempotent: the
    ``libvirt-qemu`` user, which its QEMU driver resolves at start even when its
    qemu.conf says ``user = "root"`` (without it: "Failed to parse user
    'libvirt-qemu'"; Debian's ``libvirt-daemon-system`` would create it), and the
    directories :class:`Libvirtd` binds its own over."""
    steps = []
    if _lookup("getent", "passwd", "libvirt-qemu") is None:
        steps.append(["useradd", "-r", "-M", "-s", "/usr/sbin/nologin", "libvirt-qemu"])
    for args in steps:
        result = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
        if result.returncode:
            raise LibvirtError(f"{' '.join(args)} failed: {result.stderr.strip()}")
    for path in PRIVATE_DIRS.values():
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise LibvirtError(f"cannot create {path}: {exc.strerror}") from None


def _lookup(*args: str) -> str | None:
    result = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    return result.stdout if result.returncode == 0 else None


# -- domain XML --------------------------------------------------------------------------


def interface_element(tap: str, mac: str, mtu: int) -> ET.Element:
    """The guest NIC of docs/vms.md: an ``ethernet`` interface whose TAP libvirt
    creates as ``tap`` (and puts on no bridge), virtio-net, with the network's VM MTU
    (libvirt gives it to the device as ``host_mtu`` and to the TAP)."""
    iface = ET.Element("interface", type="ethernet")
    ET.SubElement(iface, "target", dev=tap)
    ET.SubElement(iface, "mac", address=mac)
    ET.SubElement(iface, "model", type="virtio")
    ET.SubElement(iface, "mtu", size=str(mtu))
    return iface


def interface_xml(tap: str, mac: str, mtu: int) -> str:
    """:func:`interface_element` as indented text."""
    return _text(interface_element(tap, mac, mtu))


def network_interface_element(network: str, tap: str, mac: str, mtu: int) -> ET.Element:
    """A guest NIC on the libvirt network ``network`` (libvirt puts its TAP ``tap`` on
    that network's bridge)."""
    iface = ET.Element("interface", type="network")
    ET.SubElement(iface, "source", network=network)
    ET.SubElement(iface, "target", dev=tap)
    ET.SubElement(iface, "mac", address=mac)
    ET.SubElement(iface, "model", type="virtio")
    ET.SubElement(iface, "mtu", size=str(mtu))
    return iface


def network_xml(name: str, bridge: str) -> str:
    """A libvirt network over an existing bridge (``<forward mode='bridge'/>``):
    libvirt only puts its guests' TAPs on ``bridge``, no addresses, no dnsmasq."""
    net = ET.Element("network")
    ET.SubElement(net, "name").text = name
    ET.SubElement(net, "forward", mode="bridge")
    ET.SubElement(net, "bridge", name=bridge)
    return _text(net)


def bridge_commands(mtu: int) -> list[list[str]]:
    """The ``ip`` commands that make :data:`BRIDGE` and the veth pair :data:`UPLINK`
    from it to the endpoint, all at ``mtu`` (the endpoint brings its end up)."""
    return [
        ["ip", "link", "add", BRIDGE, "mtu", str(mtu), "type", "bridge"],
        [
            *("ip", "link", "add", UPLINK[0], "mtu", str(mtu), "type", "veth"),
            *("peer", "name", UPLINK[1], "mtu", str(mtu)),
        ],
        ["ip", "link", "set", UPLINK[1], "master", BRIDGE, "up"],
        ["ip", "link", "set", BRIDGE, "up"],
    ]


def _text(element: ET.Element) -> str:
    ET.indent(element)
    return ET.tostring(element, encoding="unicode")


def domain_xml(
    name: str,
    image: GuestImage,
    accel: str,
    memory: int,
    cmdline: str,
    console: Path,
    channel: Path,
    interface: ET.Element,
) -> str:
    """A transient domain booting ``image`` directly (kernel + initramfs): serial port
    0 (``ttyS0``) appends to the file ``console``, serial port 1 (``ttyS1``, the
    command channel) connects to the unix socket ``channel``; ``accel`` "kvm" or
    "tcg"; it powers off instead of rebooting, like ``-no-reboot``."""
    dom = ET.Element("domain", type="kvm" if accel == "kvm" else "qemu")
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory", unit="MiB").text = str(memory)
    ET.SubElement(dom, "vcpu").text = "1"
    os_ = ET.SubElement(dom, "os")
    ET.SubElement(os_, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_, "kernel").text = str(image.kernel)
    ET.SubElement(os_, "initrd").text = str(image.initrd)
    ET.SubElement(os_, "cmdline").text = cmdline
    # As plain QEMU has them: without <acpi/> libvirt passes -no-acpi, and the guest
    # finds no APIC tables, HPET or ACPI PM timer and keeps time by jiffies; no USB
    # controller (libvirt adds one, which only costs an emulated CPU its polling).
    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    for event in ("on_reboot", "on_crash"):
        ET.SubElement(dom, event).text = "destroy"
    devices = ET.SubElement(dom, "devices")
    ET.SubElement(devices, "controller", type="usb", model="none")
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=str(console))
    ET.SubElement(serial, "target", port="0")
    serial = ET.SubElement(devices, "serial", type="unix")
    ET.SubElement(serial, "source", mode="connect", path=str(channel))
    ET.SubElement(serial, "target", port="1")
    devices.append(interface)
    ET.SubElement(devices, "memballoon", model="none")
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode") + "\n"


# -- the daemon ---------------------------------------------------------------------------


@dataclass
class Libvirtd:
    """A private libvirtd in network namespace ``netns`` (see the module's
    docstring), its files under ``workdir``.  :meth:`start` launches it,
    :meth:`wait_ready` waits for its QEMU driver, :meth:`virsh` drives it and
    :meth:`stop` destroys its domains and stops it.  ``caps_cache``: where QEMU's
    probed capabilities are kept between runs (None: not kept)."""

    netns: str
    workdir: Path
    caps_cache: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def socket(self) -> Path:
        return self.workdir / "run" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.socket}"

    def path(self, private: str, *parts: str) -> Path:
        """Where the daemon's ``/run/libvirt/...`` etc. is from outside: ``private``
        is a key of :data:`PRIVATE_DIRS` ("run", "lib", "cache", "log", "etc")."""
        return self.workdir.joinpath(private, *parts)

    def start(self) -> None:
        """Launch the daemon (it needs a few seconds; see :meth:`wait_ready`)."""
        for key in PRIVATE_DIRS:
            self.path(key).mkdir(parents=True, exist_ok=True)
        self.path("etc", "qemu.conf").write_text(QEMU_CONF)
        self.path("etc", "libvirtd.conf").write_text(LIBVIRTD_CONF)
        self._copy_caps(into_daemon=True)
        binds = " && ".join(
            f'mount --bind "$1/{key}" {target}' for key, target in PRIVATE_DIRS.items()
        )
        script = (
            f"{binds} && exec {LIBVIRTD} -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid"
        )
        with open(self.workdir / "libvirtd.log", "wb") as log:
            self.proc = subprocess.Popen(
                [
                    *("ip", "netns", "exec", self.netns),
                    *("unshare", "--mount", "--propagation", "private"),
                    *("sh", "-c", script, "sh", str(self.workdir)),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = (self.workdir / "libvirtd.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        shown = [line.strip() for line in text.splitlines() if " error : " in line]
        return " | ".join(shown[-lines:]) or "(no errors logged)"

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Wait until the daemon answers with its QEMU driver; the seconds waited."""
        assert self.proc is not None, "start() first"
        start = time.monotonic()
        deadline = start + timeout
        while True:
            if self.proc.poll() is not None:
                raise LibvirtError(
                    f"libvirtd in {self.netns} exited ({self.proc.returncode}): {self.log_tail()}"
                )
            if self.socket.exists():
                shown = self.virsh("version", timeout=10, check=False)
                if shown.returncode == 0 and "Running hypervisor: QEMU" in shown.stdout:
                    self._copy_caps(into_daemon=False)
                    return time.monotonic() - start
            if time.monotonic() > deadline:
                raise LibvirtError(
                    f"libvirtd in {self.netns} not ready within {timeout:g} s: {self.log_tail()}"
                )
            time.sleep(0.1)

    def _copy_caps(self, into_daemon: bool) -> None:
        """Copy QEMU's probed capabilities into the daemon's private cache before it
        starts, or from it into :attr:`caps_cache` once it is up (best effort)."""
        if self.caps_cache is None:
            return
        private = self.path("cache", "qemu", "capabilities")
        src, dst = (self.caps_cache, private) if into_daemon else (private, self.caps_cache)
        with contextlib.suppress(OSError):
            dst.mkdir(parents=True, exist_ok=True)
            for item in src.glob("*.xml"):
                tmp = dst / f".{item.name}.{os.getpid()}"
                shutil.copyfile(item, tmp)
                os.replace(tmp, dst / item.name)

    def virsh(
        self, *args: str, timeout: float = 60.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``virsh -c URI ARGS``; LibvirtError naming the command when ``check`` and
        it fails or takes longer than ``timeout``."""
        command = [VIRSH, "-q", "-c", self.uri, *args]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise LibvirtError(f"virsh {' '.join(args)} took longer than {timeout:g} s") from None
        if check and result.returncode:
            detail = result.stderr.strip() or result.stdout.strip()
            raise LibvirtError(f"virsh {' '.join(args)} ({self.netns}): {detail}")
        return result

    def qemu_pid(self, domain: str) -> int | None:
        """The PID of ``domain``'s QEMU while it runs (libvirt's PID file)."""
        try:
            return int(self.path("run", "qemu", f"{domain}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 15.0) -> None:
        """Destroy every domain it runs, then stop the daemon (SIGTERM, SIGKILL after
        ``timeout``); QEMU processes it left (it was killed) are killed by PID."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(LibvirtError):  # a virsh that hangs: kill below
                running = self.virsh("list", "--name", timeout=20, check=False).stdout.split()
                for name in running:
                    self.virsh("destroy", name, timeout=30, check=False)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        for pidfile in self.path("run", "qemu").glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)


# -- a guest --------------------------------------------------------------------------------


class LibvirtGuest(Guest):
    """The test guest as a transient libvirt domain ``sclp-NAME`` of ``daemon``, its
    NIC the ``ethernet`` interface of :func:`interface_element` (TAP ``tap`` in the
    daemon's namespace).  Drive it like :class:`~sclp.lab.guest.Guest`
    (:meth:`wait_ready`, :meth:`run`); :meth:`start` is ``virsh create`` and may be
    called again after :meth:`stop` (``virsh destroy``); :meth:`close` stops it and
    removes its work directory."""

    def __init__(
        self,
        name: str,
        daemon: Libvirtd,
        tap: str,
        address: str | None = None,
        mtu: int | None = None,
        mac: str | None = None,
        image: GuestImage | None = None,
        accel: str = "auto",
        memory: int = 256,
        network: str | None = None,
    ) -> None:
        super().__init__(name, daemon.netns, tap, address, mtu, mac, image, accel, memory)
        self.daemon = daemon
        self.domain = f"sclp-{name}"
        self.network = network  # a libvirt network's name: an interface on it

    @property
    def interface(self) -> ET.Element:
        if self.network is not None:
            return network_interface_element(self.network, self.tap, self.mac, self.mtu or 1500)
        return interface_element(self.tap, self.mac, self.mtu or 1500)

    def _domain_xml(self) -> str:
        assert self.workdir is not None and self._image is not None
        append = " ".join(
            f"{key}={value}"
            for key, value in (("sclp.addr", self.address), ("sclp.mtu", self.mtu))
            if value is not None
        )
        return domain_xml(
            self.domain,
            self._image,
            self.accel,
            self.memory,
            f"console=ttyS0 quiet panic=-1 no_timer_check {append}".strip(),
            self.workdir / "console.log",
            self.workdir / "cmd.sock",
            self.interface,
        )

    def start(self, timeout: float = 30.0) -> None:
        """``virsh create`` the domain; return once QEMU has connected its command
        channel and libvirt's TAP exists in the namespace (the guest is booting)."""
        if self.daemon.qemu_pid(self.domain) is not None:
            raise GuestError(f"guest {self.name}: domain {self.domain} is already running")
        missing = libvirt_missing()
        if missing is not None:
            raise GuestError(f"cannot start guest {self.name}: {missing}")
        if self._image is None:
            self._image = load_image() or build(log=lambda _line: None)
        if self._accel_choice == "auto":
            self.accel, self.accel_reason = accelerator(self._image)
        else:
            self.accel = self._accel_choice
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"sclp-guest-{self.name}-"))
        channel = self.workdir / "cmd.sock"
        channel.unlink(missing_ok=True)
        xml = self.workdir / "domain.xml"
        xml.write_text(self._domain_xml())
        self._buffer = b""
        self.boot_seconds = None
        self.started_at = time.monotonic()
        deadline = self.started_at + timeout
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(str(channel))
            listener.listen(1)
            try:
                self.daemon.virsh("create", str(xml), timeout=timeout)
            except LibvirtError as exc:
                raise GuestError(f"guest {self.name}: {exc}") from None
            listener.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                self._chan, _ = listener.accept()
            except TimeoutError:
                raise GuestError(
                    f"guest {self.name}: QEMU did not connect its command channel: "
                    f"{self.console_tail()}"
                ) from None
        while not self._tap_exists():
            self._check_alive("creating its TAP")
            if time.monotonic() > deadline:
                raise GuestError(f"guest {self.name}: libvirt made no TAP {self.tap}")
            time.sleep(0.02)

    def _check_alive(self, doing: str) -> None:
        pid = self.daemon.qemu_pid(self.domain)
        alive = pid is not None
        if pid is not None:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                alive = False
        if not alive:
            raise GuestError(
                f"guest {self.name}: domain {self.domain} ended while {doing}: "
                f"{self.console_tail()}"
            )

    def _wait_exit(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.daemon.qemu_pid(self.domain) is not None and time.monotonic() < deadline:
            time.sleep(0.05)

    def _qemu_messages(self) -> list[str]:
        """QEMU's stderr from libvirt's domain log, without libvirt's own lines (the
        command line, start and taint notes)."""
        try:
            text = self.daemon.path("log", "qemu", f"{self.domain}.log").read_text(errors="replace")
        except OSError:
            return []
        skip = re.compile(r"\\$|^-|starting up|is tainted")
        return [line for line in text.splitlines() if line.strip() and not skip.search(line)]

    def stop(self, timeout: float = 30.0) -> None:
        """``virsh destroy`` the domain and wait until its TAP is gone."""
        if self._chan is not None:
            with contextlib.suppress(OSError):
                self._chan.close()
            self._chan = None
        self.boot_seconds = None
        if self.daemon.qemu_pid(self.domain) is None:
            return
        try:
            self.daemon.virsh("destroy", self.domain, timeout=timeout)
        except LibvirtError as exc:
            raise GuestError(f"guest {self.name}: {exc}") from None
        deadline = time.monotonic() + timeout
        while self._tap_exists():
            if time.monotonic() > deadline:
                raise GuestError(f"guest {self.name}: TAP {self.tap} still there after destroy")
            time.sleep(0.02)

    def close(self) -> None:
        with contextlib.suppress(GuestError):
            self.stop()
        if self.workdir is not None and not os.environ.get("SCLP_KEEP_LOGS"):
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


# -- the testbed -----------------------------------------------------------------------------


@dataclass
class LibvirtTestbed(GuestTestbed):
    """:class:`GuestTestbed` with libvirt: a private :class:`Libvirtd` in each host
    namespace starts that host's guest as a domain with an ``ethernet`` interface
    (TAP :data:`GUEST_TAPS` ``[i]``, MAC :data:`GUEST_MACS` ``[i]``, the VM MTU the
    endpoint reports), and each endpoint adopts it by ``attach = ["t42-*"]``.
    ``daemons[i]`` is host ``i``'s libvirtd; ``daemon_seconds`` how long they took
    to come up.

    ``libvirt_network=True``: the libvirt-network variant instead.  Each host has a
    bridge :data:`BRIDGE` and a veth pair :data:`UPLINK` from it to the endpoint
    (which adopts ``t42-uplink``); each daemon has a network :data:`NETWORK`
    (:func:`network_xml`) over that bridge, and each guest's interface is on that
    network (TAP :data:`BRIDGED_TAPS` ``[i]``, which the pattern does not match)."""

    __test__ = False

    libvirt_network: bool = False
    daemons: list[Libvirtd] = field(default_factory=list)
    daemon_seconds: list[float] = field(default_factory=list)

    def build(self) -> None:
        if self.protocol == "bridge":
            raise TestbedError("the libvirt testbed runs sclp endpoints, not 'bridge'")
        missing = libvirt_missing()
        if missing is not None:
            raise TestbedError(missing)
        try:
            prepare_host()
        except LibvirtError as exc:
            raise TestbedError(str(exc)) from None
        super().build()

    def tap_name(self, i: int) -> str:
        return BRIDGED_TAPS[i] if self.libvirt_network else GUEST_TAPS[i]

    def port_keys(self, i: int) -> str:
        return f'attach = ["{ATTACH}"]\n'

    def _start_daemons(self) -> None:
        assert self.workdir is not None
        caps = cache_dir() / CAPS_CACHE
        for i, host in enumerate(self.hosts):
            daemon = Libvirtd(host, self.workdir / f"libvirt-h{i + 1}", caps)
            self.daemons.append(daemon)
            daemon.start()
        try:
            self.daemon_seconds = [daemon.wait_ready() for daemon in self.daemons]
        except LibvirtError as exc:
            raise TestbedError(str(exc)) from None

    def _network(self, i: int, mtu: int) -> None:
        """Host ``i``'s bridge, its uplink to the endpoint, and the libvirt network."""
        assert self.workdir is not None
        for command in bridge_commands(mtu):
            self._ip(self.hosts[i], *command[1:])
        path = self.workdir / f"network-h{i + 1}.xml"
        path.write_text(network_xml(NETWORK, BRIDGE))
        try:
            self.daemons[i].virsh("net-create", str(path))
        except LibvirtError as exc:
            raise TestbedError(str(exc)) from None

    def make_guest(self, i: int, mtu: int) -> Guest:
        if not self.daemons:
            self._start_daemons()
        if self.libvirt_network:
            self._network(i, mtu)
        return LibvirtGuest(
            f"{self.tag}-{i + 1}",
            self.daemons[i],
            self.tap_name(i),
            f"{OVERLAY[i]}/24",
            mtu,
            mac=GUEST_MACS[i],
            image=self.image,
            accel=self.accel,
            network=NETWORK if self.libvirt_network else None,
        )

    def close(self) -> None:
        for guest in self.guests:
            guest.close()
        self.guests.clear()
        for daemon in self.daemons:
            with contextlib.suppress(LibvirtError, OSError):
                daemon.stop()
        self.daemons.clear()
        super().close()

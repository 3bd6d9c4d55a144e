"""Build the test guest: the Debian cloud kernel and a busybox initramfs, cached.

Strategy: everything comes from Debian packages, nothing from elsewhere.  The
kernel is ``apt-get download``-ed (the ``linux-image-cloud-amd64`` meta package
names the versioned image package it depends on) and unpacked with ``dpkg-deb -x``
into a scratch directory, never installed.  The initramfs is written here, in
Python, as a gzip-compressed ``newc`` cpio archive (no ``cpio`` binary needed): the
host's static busybox (package ``busybox-static``), ``iperf3`` and ``ethtool`` with
the shared libraries ``ldd`` names for them, the virtio-net modules (decompressed
here when the package ships them as ``.ko.xz``: busybox ``insmod`` may not
decompress) and :data:`INIT_SCRIPT` as ``/init``.

The cache directory (default :data:`DEFAULT_CACHE`, or ``$SCLP_GUEST_CACHE``) holds
``vmlinuz``, ``initramfs.gz`` and ``manifest.json``; :func:`build` skips the work
when the manifest matches the kernel package apt would fetch now and the host files
that went in (size and mtime), so running it from every ``quickstart.sh`` is cheap.

The guest's ``/init`` reads its settings from the kernel command line
(``sclp.addr=`` an address with prefix for ``eth0``, ``sclp.mtu=`` its MTU,
``sclp.probe=1`` to print a line and power off at once), says what it did on the
console (``ttyS0``) and then serves a command channel on ``ttyS1``:
:class:`sclp.lab.guest.Guest` is the host side.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "DEFAULT_CACHE",
    "GUEST_MODULES",
    "GuestBuildError",
    "GuestImage",
    "build",
    "cache_dir",
    "load_image",
]

DEFAULT_CACHE: Final = Path("/var/cache/sclp/guest")
KERNEL_META_PACKAGE: Final = "linux-image-cloud-amd64"
# Loaded in this order: each needs the ones before it.
GUEST_MODULES: Final = (
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
)
GUEST_PROGRAMS: Final = ("iperf3", "ethtool")
BUSYBOX: Final = "/bin/busybox"
# Bump when the initramfs layout or the way it is built changes: a cache built
# with another format is rebuilt.
FORMAT: Final = 1

READY_MARK: Final = "@@sclp-ready"
END_MARK: Final = "@@sclp-end"
PROBE_MARK: Final = "sclp-guest: probe ok"

INIT_SCRIPT: Final = rf"""#!/bin/busybox sh
# /init of the sclp test guest (written by sclp.lab.guest_image; PID 1).
/bin/busybox mkdir -p /proc /sys /dev /tmp /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() {{ echo "sclp-guest: $*" > /dev/console; }}
addr=
mtu=
probe=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    sclp.addr=*) addr=${{arg#sclp.addr=}} ;;
    sclp.mtu=*) mtu=${{arg#sclp.mtu=}} ;;
    sclp.probe=1) probe=1 ;;
  esac
done
if [ -n "$probe" ]; then
  say "probe ok"
  poweroff -f
fi
for m in {" ".join(GUEST_MODULES)}; do
  insmod /lib/sclp-modules/$m.ko || say "insmod $m failed"
done
ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 200 ]; do usleep 50000; i=$((i + 1)); done
if [ -e /sys/class/net/eth0 ]; then
  [ -n "$mtu" ] && ip link set eth0 mtu "$mtu"
  [ -n "$addr" ] && ip addr add "$addr" dev eth0
  ip link set eth0 up
  say "eth0 up address=$addr mtu=$(cat /sys/class/net/eth0/mtu)"
else
  say "no eth0 after 10 s (virtio-net modules: $(lsmod | tr '\n' ' '))"
fi
# The command channel on ttyS1: a line "NONCE SECONDS BASE64-SCRIPT" runs the script
# under a time limit; its output follows, then a line "{END_MARK} NONCE STATUS".
# The loop runs in a subshell, not in PID 1: busybox timeout leaves a watchdog that
# exits up to a second after the command and, orphaned, signals PID 1 (SIGCHLD); a
# `read` that signal interrupts starts again and loses what it had read of a line.
stty -F /dev/ttyS1 raw -echo
exec 3<>/dev/ttyS1
echo "{READY_MARK}" >&3
say "ready"
(
while read -r nonce limit code <&3; do
  echo "$code" | base64 -d > /tmp/.cmd.sh
  timeout -s KILL "$limit" sh /tmp/.cmd.sh < /dev/null > /tmp/.cmd.out 2>&1
  status=$?
  cat /tmp/.cmd.out >&3
  printf '\n{END_MARK} %s %s\n' "$nonce" "$status" >&3
done
)
say "command channel closed; powering off"
poweroff -f
"""


class GuestBuildError(Exception):
    """Building the guest failed; the message names the problem and the fix."""


@dataclass(frozen=True, slots=True)
class GuestImage:
    """A built guest: boot ``kernel`` with ``initrd``."""

    kernel: Path
    initrd: Path
    kernel_package: str  # e.g. "linux-image-6.1.0-56-cloud-amd64=6.1.192-2"
    cache: Path


def cache_dir(cache: Path | str | None = None) -> Path:
    """``cache``, else ``$SCLP_GUEST_CACHE``, else :data:`DEFAULT_CACHE`."""
    if cache is not None:
        return Path(cache)
    env = os.environ.get("SCLP_GUEST_CACHE")
    return Path(env) if env else DEFAULT_CACHE


def load_image(cache: Path | str | None = None) -> GuestImage | None:
    """The guest built in ``cache`` (see :func:`cache_dir`), or None if there is none."""
    directory = cache_dir(cache)
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    kernel, initrd = directory / "vmlinuz", directory / "initramfs.gz"
    if manifest.get("format") != FORMAT or not kernel.is_file() or not initrd.is_file():
        return None
    return GuestImage(kernel, initrd, str(manifest.get("kernel_package", "?")), directory)


def _run(args: list[str], what: str, cwd: Path | None = None, timeout: float = 600) -> str:
    try:
        result = subprocess.run(
            args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise GuestBuildError(f"{what}: {args[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise GuestBuildError(f"{what}: {' '.join(args)} took over {timeout:.0f} s") from None
    if result.returncode:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:]
        raise GuestBuildError(f"{what}: {' '.join(args)} failed: {' '.join(detail)}")
    return result.stdout


def _kernel_package(update: Callable[[], None]) -> str | None:
    """``name=version`` of the versioned kernel image package the meta package depends
    on, from apt's local lists (after one ``update()`` if they know nothing); None if
    apt cannot say."""
    for attempt in range(2):
        try:
            shown = subprocess.run(
                ["apt-cache", "show", "--no-all-versions", KERNEL_META_PACKAGE],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except (FileNotFoundError, subprocess.TimeoutExpired):
            return None
        match = re.search(r"^Depends:\s*(linux-image-\S+)\s*\(=\s*([^)\s]+)\)", shown.stdout, re.M)
        if match:
            return f"{match.group(1)}={match.group(2)}"
        if attempt == 0:
            update()
    return None


def _apt_update() -> None:
    _run(["apt-get", "update", "-q"], "refreshing apt's package lists")


def _host_files() -> dict[str, Path]:
    """Initramfs path -> host file: busybox, the programs and their libraries."""
    files: dict[str, Path] = {}
    busybox = Path(BUSYBOX)
    if not busybox.is_file():
        raise GuestBuildError(f"{BUSYBOX} is missing: apt-get install busybox-static")
    linked = subprocess.run(["ldd", BUSYBOX], capture_output=True, text=True, check=False)
    if "=>" in linked.stdout:
        raise GuestBuildError(
            f"{BUSYBOX} is dynamically linked: apt-get install busybox-static (it replaces busybox)"
        )
    files["bin/busybox"] = busybox
    for program in GUEST_PROGRAMS:
        found = shutil.which(program, path="/usr/bin:/usr/sbin:/bin:/sbin")
        if found is None:
            raise GuestBuildError(f"{program} is not installed: apt-get install {program}")
        files[f"usr/bin/{program}"] = Path(found)
        for lib in _shared_libraries(found):
            files[lib.lstrip("/")] = Path(lib)
    return files


def _shared_libraries(program: str) -> list[str]:
    """The absolute paths ``ldd`` names for ``program`` (the loader included)."""
    out = _run(["ldd", program], f"listing the libraries of {program}")
    paths = []
    for line in out.splitlines():
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            paths.append(match.group(1))
    if not paths:
        raise GuestBuildError(f"ldd {program} named no libraries: {out.strip()[:200]}")
    return paths


def _inputs_key(files: dict[str, Path]) -> str:
    digest = hashlib.sha256(f"{FORMAT}\n{INIT_SCRIPT}\n{GUEST_MODULES}\n".encode())
    for name, path in sorted(files.items()):
        st = path.stat()
        digest.update(f"{name} {st.st_size} {st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def build(
    cache: Path | str | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> GuestImage:
    """Build (or find current) the guest in ``cache`` (see :func:`cache_dir`) and
    return it.  Needs root (apt's cache), ``apt-get``, ``dpkg-deb``, ``ldd`` and the
    packages ``busybox-static``, ``iperf3`` and ``ethtool``; raises
    :class:`GuestBuildError` naming what is missing.  Concurrent builds of one cache
    wait for each other (a lock file)."""
    directory = cache_dir(cache)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock = open(directory / ".lock", "w")  # noqa: SIM115 - held until the end
    except OSError as exc:
        raise GuestBuildError(
            f"cannot use the guest cache {directory}: {exc.strerror}; run as root or set "
            "SCLP_GUEST_CACHE to a writable directory"
        ) from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(directory, force, log)


def _build_locked(directory: Path, force: bool, log: Callable[[str], None]) -> GuestImage:
    for tool in ("apt-get", "apt-cache", "dpkg-deb", "ldd"):
        if shutil.which(tool) is None:
            raise GuestBuildError(
                f"{tool} is missing: the guest is built from Debian packages, on Debian"
            )
    files = _host_files()
    key = _inputs_key(files)
    manifest_path = directory / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        manifest = {}
    cached = load_image(directory)
    updated = False

    def update() -> None:
        nonlocal updated
        if not updated:
            updated = True
            log("guest: apt knows no kernel package yet; running apt-get update")
            _apt_update()

    # Without apt lists a current cache is still used (offline); with them, a newer
    # kernel package means a rebuild.
    package = _kernel_package(update if cached is None or force else lambda: None)
    if package is None:
        if cached is not None and manifest.get("inputs") == key and not force:
            log(f"guest: {directory} is current ({cached.kernel_package}; apt lists unavailable)")
            return cached
        raise GuestBuildError(
            f"apt cannot name the package behind {KERNEL_META_PACKAGE}: run apt-get update "
            "(Debian's package lists are needed to download the kernel)"
        )
    if (
        cached is not None
        and not force
        and manifest.get("inputs") == key
        and manifest.get("kernel_package") == package
    ):
        log(f"guest: {directory} is current ({package})")
        return cached
    log(f"guest: building into {directory} ({package})")
    with tempfile.TemporaryDirectory(prefix="sclp-guest-", dir=directory) as scratch:
        work = Path(scratch)
        _run(
            ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package],
            f"downloading {package}",
            cwd=work,
        )
        debs = list(work.glob("*.deb"))
        if len(debs) != 1:
            raise GuestBuildError(f"apt-get download {package} left {len(debs)} .deb files")
        root = work / "root"
        _run(["dpkg-deb", "-x", str(debs[0]), str(root)], f"unpacking {debs[0].name}")
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        if not kernels:
            raise GuestBuildError(f"{debs[0].name} has no /boot/vmlinuz-*")
        modules = _find_modules(root)
        initramfs = _initramfs(files, modules)
        _write_atomic(directory / "vmlinuz", kernels[-1].read_bytes())
        _write_atomic(directory / "initramfs.gz", initramfs)
    new_manifest = {
        "format": FORMAT,
        "kernel_package": package,
        "kernel": kernels[-1].name,
        "inputs": key,
        "initramfs_bytes": len(initramfs),
        "initramfs_sha256": hashlib.sha256(initramfs).hexdigest(),
    }
    _write_atomic(manifest_path, (json.dumps(new_manifest, indent=2) + "\n").encode())
    with contextlib.suppress(FileNotFoundError):
        (directory / "accelerator.json").unlink()  # probe again with the new kernel
    log(f"guest: built {kernels[-1].name} and a {len(initramfs) / 1e6:.1f} MB initramfs")
    image = load_image(directory)
    assert image is not None
    return image


def _find_modules(root: Path) -> dict[str, bytes]:
    """Module name -> uncompressed ``.ko`` bytes, for :data:`GUEST_MODULES`."""
    trees = sorted((root / "lib" / "modules").glob("*/kernel")) + sorted(
        (root / "usr" / "lib" / "modules").glob("*/kernel")
    )
    if not trees:
        raise GuestBuildError("the kernel package has no /lib/modules/*/kernel tree")
    found: dict[str, Path] = {}
    for path in trees[-1].rglob("*.ko*"):
        name = path.name.split(".ko", 1)[0]
        if name in GUEST_MODULES:
            found[name] = path
    missing = [m for m in GUEST_MODULES if m not in found]
    if missing:
        raise GuestBuildError(f"the kernel package lacks the modules {', '.join(missing)}")
    modules = {}
    for name, path in found.items():
        data = path.read_bytes()
        if path.name.endswith(".ko.xz"):
            data = lzma.decompress(data)
        elif path.name.endswith(".ko.gz"):
            data = gzip.decompress(data)
        elif not path.name.endswith(".ko"):
            raise GuestBuildError(f"cannot decompress {path.name}: only .ko, .ko.xz, .ko.gz")
        modules[name] = data
    return modules


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# -- the newc cpio archive (the kernel's initramfs format) -----------------------


class _Cpio:
    """Writes a ``newc`` cpio archive (buffer-based, deterministic: mtime 0)."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.ino = 1
        self.dirs: set[str] = set()

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        fields = (
            self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0
        )  # fmt: skip
        self.ino += 1
        header = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
        self.out.write(header + name.encode() + b"\0")
        self.out.write(b"\0" * (-(len(header) + len(name) + 1) % 4))
        self.out.write(data)
        self.out.write(b"\0" * (-len(data) % 4))

    def directory(self, name: str) -> None:
        parts = name.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            path = "/".join(parts[:i])
            if path and path not in self.dirs:
                self.dirs.add(path)
                self._entry(path, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o755) -> None:
        self.directory(os.path.dirname(name))
        self._entry(name, stat.S_IFREG | mode, data)

    def device(self, name: str, major: int, minor: int) -> None:
        self.directory(os.path.dirname(name))
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.out.getvalue()


def _initramfs(files: dict[str, Path], modules: dict[str, bytes]) -> bytes:
    archive = _Cpio()
    for name in ("proc", "sys", "dev", "tmp", "bin", "sbin", "usr/bin", "usr/sbin"):
        archive.directory(name)
    archive.device("dev/console", 5, 1)
    archive.file("init", INIT_SCRIPT.encode())
    for name, path in sorted(files.items()):
        archive.file(name, path.read_bytes(), mode=stat.S_IMODE(path.stat().st_mode) or 0o755)
    for name in GUEST_MODULES:
        archive.file(f"lib/sclp-modules/{name}.ko", modules[name], mode=0o644)
    return gzip.compress(archive.finish(), compresslevel=6, mtime=0)


def describe(image: GuestImage) -> Iterable[str]:
    """Lines for ``sclp guest build``: what was built and where."""
    yield f"kernel:    {image.kernel} ({image.kernel_package})"
    yield f"initramfs: {image.initrd} ({image.initrd.stat().st_size / 1e6:.1f} MB)"

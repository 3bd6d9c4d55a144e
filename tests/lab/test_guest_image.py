"""The guest builder's pieces that need no network, no QEMU and no root: the newc
cpio writer (read back by a small independent reader), the init script, module
lookup and decompression, the cache checks and their errors."""

from __future__ import annotations

import gzip
import json
import lzma
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from sclp.lab import guest_image as gi


def read_newc(archive: bytes) -> list[tuple[str, int, bytes, tuple[int, int]]]:
    """(name, mode, data, (rdevmajor, rdevminor)) per entry, trailer excluded; checks
    magic and 4-byte alignment as the kernel's unpacker does."""
    entries, off = [], 0
    while True:
        assert archive[off : off + 6] == b"070701", f"bad magic at {off}"
        fields = [int(archive[off + 6 + 8 * i : off + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rdev, namesize = fields[1], fields[6], (fields[9], fields[10]), fields[11]
        name_start = off + 110
        name = archive[name_start : name_start + namesize - 1].decode()
        assert archive[name_start + namesize - 1] == 0
        data_start = (name_start + namesize + 3) & ~3
        data = archive[data_start : data_start + size]
        off = (data_start + size + 3) & ~3
        if name == "TRAILER!!!":
            assert off == len(archive)
            return entries
        entries.append((name, mode, data, rdev))


def test_initramfs_holds_init_console_files_and_modules(tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    tool.write_bytes(b"\x7fELF-ish")
    tool.chmod(0o755)
    modules = {name: f"module {name}".encode() for name in gi.GUEST_MODULES}
    entries = read_newc(gzip.decompress(gi._initramfs({"usr/bin/tool": tool}, modules)))
    by_name = {name: (mode, data, rdev) for name, mode, data, rdev in entries}

    mode, data, _ = by_name["init"]
    assert stat.S_ISREG(mode) and mode & 0o111 and data == gi.INIT_SCRIPT.encode()
    mode, _, rdev = by_name["dev/console"]
    assert stat.S_ISCHR(mode) and rdev == (5, 1)
    assert by_name["usr/bin/tool"][1] == b"\x7fELF-ish"
    for name in gi.GUEST_MODULES:
        assert by_name[f"lib/sclp-modules/{name}.ko"][1] == modules[name]
    # Every directory comes before what is in it, once.
    seen: set[str] = set()
    for name, mode, _, _ in entries:
        parent = name.rpartition("/")[0]
        assert not parent or parent in seen, f"{name} before its directory"
        if stat.S_ISDIR(mode):
            assert name not in seen
            seen.add(name)


def test_initramfs_is_deterministic(tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    tool.write_bytes(b"x")
    modules = dict.fromkeys(gi.GUEST_MODULES, b"m")
    assert gi._initramfs({"bin/t": tool}, modules) == gi._initramfs({"bin/t": tool}, modules)


def test_init_loads_the_modules_in_order_and_parses() -> None:
    assert f"for m in {' '.join(gi.GUEST_MODULES)}; do" in gi.INIT_SCRIPT
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed (apt-get install busybox-static)")
    checked = subprocess.run(
        [busybox, "sh", "-n"], input=gi.INIT_SCRIPT, capture_output=True, text=True, timeout=10
    )
    assert checked.returncode == 0, checked.stderr


def test_find_modules_decompresses_xz_and_names_missing_ones(tmp_path: Path) -> None:
    tree = tmp_path / "lib" / "modules" / "6.1.0-test" / "kernel" / "drivers"
    tree.mkdir(parents=True)
    for name in gi.GUEST_MODULES[:-1]:
        (tree / f"{name}.ko.xz").write_bytes(lzma.compress(name.encode()))
    with pytest.raises(gi.GuestBuildError, match="lacks the modules virtio_net"):
        gi._find_modules(tmp_path)
    (tree / "virtio_net.ko").write_bytes(b"plain")
    found = gi._find_modules(tmp_path)
    assert found["virtio_ring"] == b"virtio_ring" and found["virtio_net"] == b"plain"


def test_unusable_cache_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(gi.GuestBuildError, match=r"cannot use the guest cache .*SCLP_GUEST_CACHE"):
        gi.build(blocker / "cache", log=lambda _line: None)


def test_cache_dir_and_load_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCLP_GUEST_CACHE", str(tmp_path))
    assert gi.cache_dir() == tmp_path
    assert gi.cache_dir("/elsewhere") == Path("/elsewhere")
    assert gi.load_image() is None  # nothing built
    (tmp_path / "vmlinuz").write_bytes(b"k")
    (tmp_path / "initramfs.gz").write_bytes(b"i")
    manifest = {"format": gi.FORMAT, "kernel_package": "linux-image-x=1"}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    image = gi.load_image()
    assert image is not None and image.kernel_package == "linux-image-x=1"
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "format": gi.FORMAT + 1}))
    assert gi.load_image() is None  # another layout: rebuild

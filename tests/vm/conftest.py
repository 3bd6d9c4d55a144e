"""Fixtures for the tests with real QEMU guests (virtio-net NICs on TAPs).

The guest (Debian cloud kernel + busybox initramfs, :mod:`sclp.lab.guest_image`) is
built once per session into its cache if ``./quickstart.sh`` has not done so.  The
tests are skipped, with the reason, only where no guest can run at all: not root,
no ``/dev/net/tun``, or no QEMU outside CI.  In CI (``CI`` set) the quick start
installs QEMU, so a missing QEMU there fails the tests instead of hiding them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sclp.lab.guest import GuestBuildError, GuestImage, accelerator, build, qemu_missing
from sclp.lab.guest_image import load_image
from tests.requirements import missing_requirement, skip_netns_tests_under


def _missing() -> str | None:
    missing = missing_requirement(("ip",))
    if missing is not None:
        return missing
    qemu = qemu_missing()
    if qemu is not None and not os.environ.get("CI"):
        return qemu
    return None


MISSING = _missing()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    skip_netns_tests_under(Path(__file__).parent, MISSING, items)


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    """The built guest (built here when its cache is missing or stale), with the
    accelerator QEMU will use printed once."""
    qemu = qemu_missing()
    if qemu is not None:
        pytest.fail(f"CI should have installed QEMU: {qemu}")
    image = load_image()
    if image is None:
        try:
            image = build(log=print)
        except GuestBuildError as exc:
            pytest.fail(f"building the test guest failed: {exc}")
    accel, reason = accelerator(image)
    why = f" ({reason})" if reason else ""
    print(f"guest: {image.kernel_package}, accelerator {accel}{why}")
    return image

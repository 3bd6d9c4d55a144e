"""Fixtures for the end-to-end tests: real ``sclp run`` endpoints between VMs in
network namespaces.

Tests marked ``netns`` need root, ``/dev/net/tun``, ``ip``, ``ping`` and ``iperf3``;
without them they are skipped with the reason.  Each testbed is built once per
protocol (module scope) and shared by the checks on it, which keeps the suite to a
few seconds per protocol.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

PAYLOAD_BYTES = 20 * 1024 * 1024


def _missing_requirement() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, TAP devices)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    for tool in ("ip", "ping", "iperf3"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


MISSING = _missing_requirement()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if MISSING is None:
        return
    skip = pytest.mark.skip(reason=MISSING)
    for item in items:
        if "netns" in item.keywords and str(item.path).startswith(str(Path(__file__).parent)):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def payload(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 20 MiB random file for TCP transfers and its SHA-256."""
    data = os.urandom(PAYLOAD_BYTES)
    path = tmp_path_factory.mktemp("e2e") / "payload.bin"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()

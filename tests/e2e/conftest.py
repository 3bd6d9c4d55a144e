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
from pathlib import Path

import pytest

from tests.requirements import missing_requirement, skip_netns_tests_under

PAYLOAD_BYTES = 20 * 1024 * 1024


MISSING = missing_requirement(("ip", "ping", "iperf3"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    skip_netns_tests_under(Path(__file__).parent, MISSING, items)


@pytest.fixture(scope="session")
def payload(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 20 MiB random file for TCP transfers and its SHA-256."""
    data = os.urandom(PAYLOAD_BYTES)
    path = tmp_path_factory.mktemp("e2e") / "payload.bin"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()

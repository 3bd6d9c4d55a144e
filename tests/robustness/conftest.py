"""Robustness tests: the endpoint under underlay faults, hostile packets and lifecycle
abuse.  Tests marked ``netns`` build namespaces and need root, ``/dev/net/tun``,
``ip``, ``iperf3`` and ``nft``; without them they are skipped with the reason.
Every duration is bounded and every namespace is removed, also on failure.

Set ``SCLP_ROBUSTNESS_LOG=/path/file.jsonl`` to collect the measurements (memory
peaks, throughput during floods, fault counters) as JSON lines.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def _missing_requirement() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, TAP devices)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    for tool in ("ip", "iperf3", "nft", "ping"):
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

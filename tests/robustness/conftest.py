"""Robustness tests: the endpoint under underlay faults, hostile packets and lifecycle
abuse.  Tests marked ``netns`` build namespaces and need root, ``/dev/net/tun``,
``ip``, ``iperf3`` and ``nft``; without them they are skipped with the reason.
Every duration is bounded and every namespace is removed, also on failure.

Set ``SCLP_ROBUSTNESS_LOG=/path/file.jsonl`` to collect the measurements (memory
peaks, throughput during floods, fault counters) as JSON lines.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.requirements import missing_requirement, skip_netns_tests_under

MISSING = missing_requirement(("ip", "iperf3", "nft", "ping"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    skip_netns_tests_under(Path(__file__).parent, MISSING, items)

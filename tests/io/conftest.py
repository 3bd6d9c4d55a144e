"""Fixtures for the I/O adapter tests: uniquely named network namespaces, always removed.

Every test here needs root and creates its own namespaces (``sclpt-<hex>``); traffic
never leaves them (or loopback inside them).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from sclp.io.netns import NetNS, create_netns


def _can_use_netns() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    if not os.path.exists("/proc/thread-self/ns/net"):
        return "needs network namespaces"
    return None


_SKIP = _can_use_netns()


@pytest.fixture
def netns_factory() -> Iterator[Callable[[], NetNS]]:
    """Call it to get a fresh namespace with ``lo`` up; all are deleted afterwards,
    whatever the test did."""
    if _SKIP:
        pytest.skip(_SKIP)
    made: list[NetNS] = []

    def make() -> NetNS:
        ns = create_netns(f"sclpt-{uuid.uuid4().hex[:10]}", loopback_up=True)
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        errors = []
        for ns in made:
            try:
                ns.delete()
            except OSError as exc:  # keep deleting the others, report afterwards
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def netns(netns_factory: Callable[[], NetNS]) -> NetNS:
    return netns_factory()

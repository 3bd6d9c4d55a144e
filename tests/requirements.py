"""What the namespace tests need from the machine, checked once per conftest.

A missing requirement skips the ``netns``-marked tests of that directory with the
reason; on the project's machines (root, with the quick start's packages) nothing is
skipped.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import pytest


def missing_requirement(tools: Iterable[str]) -> str | None:
    """Why namespace tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, TAP devices)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    for tool in tools:
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


def skip_netns_tests_under(directory: Path, missing: str | None, items: list[pytest.Item]) -> None:
    """Mark the ``netns`` tests collected from ``directory`` as skipped for ``missing``."""
    if missing is None:
        return
    skip = pytest.mark.skip(reason=missing)
    for item in items:
        if "netns" in item.keywords and str(item.path).startswith(str(directory)):
            item.add_marker(skip)

"""The typed shape of ``sclp stats`` (sclp.endpoint.stats) holds every counter the code
counts, and the data path's report is exactly what the types say."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

from sclp.endpoint.config import parse_config
from sclp.endpoint.datapath import COUNTER_NAMES, DataPath
from sclp.endpoint.stats import (
    COUNTER_KEYS,
    DataPathStats,
    PortStats,
    VniStats,
    sorted_counters,
)
from sclp.wire.errors import DropReason

SRC = Path(__file__).resolve().parents[2] / "src" / "sclp"
# `counters["tx_local"]`, `counters["cluster_conflicts"] += ...`: a name counted by literal.
_LITERAL_COUNT = re.compile(r"""counters\[\s*["']([a-z_]+)["']\s*\]""")

CONFIG = """
name = "h1"
[underlay]
local = "10.0.0.1"
[[network]]
vni = 42
protocol = "vxlan"
tap = "t42"
peers = ["10.0.0.2"]
"""


def test_every_counter_name_is_declared() -> None:
    assert set(COUNTER_NAMES) <= COUNTER_KEYS
    assert {reason.counter for reason in DropReason} <= COUNTER_KEYS


def test_every_counter_the_code_counts_by_name_is_declared() -> None:
    counted = {
        name for path in SRC.rglob("*.py") for name in _LITERAL_COUNT.findall(path.read_text())
    }
    assert "tx_flooded" in counted  # the scan finds what it is meant to
    assert counted <= COUNTER_KEYS, sorted(counted - COUNTER_KEYS)


def test_sorted_counters_sorts_and_keeps_every_count() -> None:
    assert list(sorted_counters({"tx_frames": 2, "rx_bytes": 1})) == ["rx_bytes", "tx_frames"]
    # An undeclared name is kept (the report never loses a count; the tests above fail).
    assert sorted_counters({"tx_frames": 1, "drop_gremlins": 3}) == {
        "drop_gremlins": 3,
        "tx_frames": 1,
    }
    with pytest.raises(TypeError):
        sorted_counters({"tx_frames": 1.5})


def test_the_data_path_report_has_the_declared_keys() -> None:
    dp = DataPath(parse_config(CONFIG), 1500)
    dp.counters["tx_flooded"] += 1
    report = dp.stats({"drop_tx_busy": 2, "cluster_conflicts": 1})
    assert set(report) == set(typing.get_type_hints(DataPathStats))
    assert list(report["counters"]) == sorted(report["counters"])
    assert set(COUNTER_NAMES) <= set(report["counters"]) <= COUNTER_KEYS
    assert report["counters"]["drop_tx_busy"] == 2
    assert report["counters"]["cluster_conflicts"] == 1
    assert report["counters"]["tx_flooded"] == 1
    required, optional = set(VniStats.__required_keys__), set(VniStats.__optional_keys__)
    entry = report["vni"]["42"]
    assert required <= set(entry) <= required | optional
    assert entry["ports"] == ["t42"] and entry["peers"] == ["10.0.0.2"]
    assert set(report["ports"]["t42"]) == set(typing.get_type_hints(PortStats))
    assert report["peers"] == {"42": 1}

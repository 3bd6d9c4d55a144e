"""``benchmarks/profile.py``: the endpoints' samples by shared object under
``perf record -a -g`` while iperf3 runs (docs/performance.md).  No thresholds on the
shares: they are the machine's; only that they are measured and add up."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLASSES = {"interpreter", "compiled", "kernel", "libc", "numpy", "other"}


@pytest.mark.netns
@pytest.mark.timeout(180)
@pytest.mark.skipif(
    shutil.which("perf") is None, reason="perf missing (apt-get install linux-perf)"
)
def test_profile_prints_each_endpoints_shares_by_shared_object() -> None:
    script = str(ROOT / "benchmarks" / "profile.py")
    args = [sys.executable, script, "--config", "vxlan-sclp/udp", "--seconds", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([*args, "--json"], capture_output=True, text=True, timeout=150, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["config"] == "vxlan-sclp/udp" and report["gbps"] > 0
    assert [e["endpoint"] for e in report["endpoints"]] == [1, 2, "both"]
    for e in report["endpoints"]:
        assert set(e["shares"]) == CLASSES
        assert e["samples"] > 0, e
        assert sum(e["shares"].values()) == pytest.approx(100.0, abs=0.5), e
        assert all(v >= 0 for v in e["shares"].values()), e
    both = report["endpoints"][2]
    assert both["samples"] == sum(e["samples"] for e in report["endpoints"][:2])
    # The endpoints are Python processes: their own code's samples are there.
    assert both["shares"]["interpreter"] > 0 and both["shares"]["kernel"] > 0


def test_profile_classifies_perfs_shared_object_names() -> None:
    spec = importlib.util.spec_from_file_location("sclp_profile", ROOT / "benchmarks/profile.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.dso_class("libpython3.11.so.1.0") == "interpreter"
    assert script.dso_class("python3.11") == "interpreter"
    assert script.dso_class("[kernel.kallsyms]") == "kernel"
    assert script.dso_class("[veth]") == "kernel"
    assert script.dso_class("libc.so.6") == "libc"
    assert script.dso_class("_multiarray_umath.cpython-311-x86_64-linux-gnu.so") == "numpy"
    assert script.dso_class("[vdso]") == "other"
    assert script.dso_class("_socket.cpython-311-x86_64-linux-gnu.so") == "other"
    assert script.dso_class("7ca68d8062ef32d6d88b__mypyc.cpython-311-x86_64-linux-gnu.so") == (
        "compiled"
    )
    text = (
        "# Samples: 4K of event 'cpu-clock:ppp'\n"
        "     6.72%     6326:python           libpython3.11.so.1.0   \n"
        "     3.28%     6326:python           [kernel.kallsyms]      \n"
        "     4.64%     6400:iperf3           [kernel.kallsyms]      \n"
    )
    parsed = script.parse_report(text)
    assert parsed == {
        6326: {"libpython3.11.so.1.0": 6.72, "[kernel.kallsyms]": 3.28},
        6400: {"[kernel.kallsyms]": 4.64},
    }
    shares = script.by_class(parsed[6326])
    assert shares["interpreter"] == pytest.approx(67.2) and shares["kernel"] == pytest.approx(32.8)

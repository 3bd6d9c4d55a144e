"""Where the endpoints' CPU goes, by shared object: the interpreter, the kernel, libc,
NumPy and the rest, while iperf3 runs through a testbed.

Builds the two-VM testbed of one ``sclp bench`` configuration
(:class:`sclp.lab.testbed.Testbed`, as the bench builds it), runs iperf3 TCP VM1 → VM2
for ``--seconds`` under ``perf record -a -g``, then ``perf report --sort dso`` for each
endpoint's process and prints each endpoint's samples by class of shared object:

- **interpreter**: CPython itself (``libpython3.*.so``, or a ``python3.*`` binary that
  links it statically, as Debian's does);
- **kernel**: ``[kernel.kallsyms]`` and kernel modules (system calls, and the softirq
  work, such as the veth peer's receive, that ran in the endpoint's context);
- **libc**; **NumPy** (its extension modules and the BLAS it ships);
- **compiled**: our per-frame modules compiled by mypyc (the ``*__mypyc*`` shared
  object of a wheel built with ``SCLP_MYPYC=1``, docs/performance.md): our code, run
  as C, which calls into the interpreter's C API for objects (those calls count as
  interpreter);
- **other**: other extension modules and libraries, ``[vdso]``, ``[unknown]``.

With ``-g`` the shares are self time (``--no-children``): each sample counts once, for
the object whose code was running.  Figures for the machine at hand, never thresholds.
Needs root (namespaces, system-wide ``perf``) and ``perf`` (Debian: ``linux-perf``).

    sudo python benchmarks/profile.py --config vxlan-sclp/udp            # a table
    sudo python benchmarks/profile.py --config stt --seconds 4 --json    # JSON

Mind the name: a script run from this folder has it first on ``sys.path``, so there
``import profile`` (and ``import cProfile``, which imports it) gets this file, not the
standard library's.  No script here imports either.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sclp.lab.bench.configs import select_configs
from sclp.lab.testbed import TestbedError

CLASSES = ("interpreter", "compiled", "kernel", "libc", "numpy", "other")
_ROW = re.compile(r"^\s*([0-9.]+)%\s+(\d+):\S*\s+(\S.*?)\s*$")


def dso_class(dso: str) -> str:
    """The class of one ``perf report`` DSO name (see the module docstring)."""
    name = dso.rsplit("/", 1)[-1]
    if name.startswith("[") and name not in ("[vdso]", "[unknown]", "[vsyscall]"):
        return "kernel"  # [kernel.kallsyms], [veth], [tun], [nf_tables], ...
    if re.match(r"(lib)?python3(\.\d+)?", name):
        return "interpreter"
    if re.match(r"libc[.-]", name) or name.startswith("libm.so") or name.startswith("ld-linux"):
        return "libc"
    if "__mypyc" in name:
        return "compiled"
    if "numpy" in dso or "openblas" in name or "_multiarray" in name:
        return "numpy"
    return "other"


def parse_report(text: str) -> dict[int, dict[str, float]]:
    """Percent of all samples per process and DSO from ``perf report --stdio --sort
    pid,dso`` output (rows ``  6.72%  6326:python  libpython3.11.so.1.0``)."""
    shares: dict[int, dict[str, float]] = {}
    for line in text.splitlines():
        m = _ROW.match(line)
        if m:
            pid, dso = int(m.group(2)), m.group(3)
            per_pid = shares.setdefault(pid, {})
            per_pid[dso] = per_pid.get(dso, 0.0) + float(m.group(1))
    return shares


def by_class(shares: dict[str, float]) -> dict[str, float]:
    """DSO shares summed per class, scaled to 100 % of the samples listed."""
    total = sum(shares.values())
    classes = dict.fromkeys(CLASSES, 0.0)
    for dso, share in shares.items():
        classes[dso_class(dso)] += share
    return {k: 100.0 * v / total if total else 0.0 for k, v in classes.items()}


def _report(data: Path) -> tuple[dict[int, dict[str, float]], int]:
    """(percent of all samples per process and DSO, total samples) of the recording."""
    args = ["perf", "report", "-i", str(data), "--stdio", "--sort", "pid,dso"]
    args += ["--no-children", "-g", "none"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=300, check=True).stdout
    m = re.search(r"^# Samples:\s*([0-9.]+)([KM]?)", out, re.MULTILINE)
    samples = int(float(m.group(1)) * {"": 1, "K": 1e3, "M": 1e6}[m.group(2)]) if m else 0
    return parse_report(out), samples


def profile(label: str, seconds: float) -> dict[str, Any]:
    (cfg,) = [c for c in select_configs([label]) if c.label == label]
    if not cfg.has_endpoints or cfg.is_reference:
        raise ValueError(f"{label} has no sclp endpoints to profile")
    with tempfile.TemporaryDirectory(prefix="sclp-profile-") as tmp, cfg.testbed() as tb:
        data = Path(tmp) / "perf.data"
        pids = [p.pid for p in tb.endpoints]
        if tb.ping(3).returncode != 0:
            raise TestbedError("VM1 cannot ping VM2 through the tunnel")
        record = subprocess.Popen(
            ["perf", "record", "-a", "-g", "-F", "999", "-o", str(data), "--", "sleep", "3600"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(0.5)  # perf has opened its events
            report = tb.iperf3(seconds=seconds)
        finally:
            record.send_signal(signal.SIGINT)
            _, err = record.communicate(timeout=120)
        if not data.exists():
            raise RuntimeError(f"perf record failed: {err.strip()[-300:]}")
        gbps = report["end"]["sum_received"]["bits_per_second"] / 1e9
        per_pid, samples = _report(data)
        endpoints: list[dict[str, Any]] = []
        both: dict[str, float] = {}
        for i, pid in enumerate(pids, 1):
            shares = per_pid.get(pid, {})
            for dso, share in shares.items():
                both[dso] = both.get(dso, 0.0) + share
            endpoints.append(
                {
                    "endpoint": i,
                    "pid": pid,
                    "samples": round(samples * sum(shares.values()) / 100),
                    "shares": by_class(shares),
                    "top_dsos": dict(sorted(shares.items(), key=lambda kv: -kv[1])[:6]),
                }
            )
        total = {
            "endpoint": "both",
            "samples": sum(e["samples"] for e in endpoints),
            "shares": by_class(both),
        }
    return {"config": label, "seconds": seconds, "gbps": gbps, "endpoints": [*endpoints, total]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="vxlan-sclp/udp", help="a `sclp bench` label")
    parser.add_argument("--seconds", type=float, default=6.0, help="iperf3 duration")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("profile.py builds network namespaces: run it as root", file=sys.stderr)
        return 1
    if shutil.which("perf") is None:
        print("profile.py: perf is missing: apt-get install linux-perf", file=sys.stderr)
        return 1
    try:
        result = profile(args.config, args.seconds)
    except (ValueError, TestbedError, RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"profile.py: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['config']}: {result['gbps']:.2f} Gbit/s, {args.seconds:g} s, perf -a -g")
    print(f"{'endpoint':<10}{'samples':>9}" + "".join(f"{c:>13}" for c in CLASSES))
    for e in result["endpoints"]:
        cells = "".join(f"{e['shares'][c]:>12.1f}%" for c in CLASSES)
        print(f"{e['endpoint']!s:<10}{e['samples']:>9}{cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

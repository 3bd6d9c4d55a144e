"""Figures read from ``/proc`` and the machine description of a report.

Why apart: CPU seconds and peak RSS of a process, and what the figures depend on
(CPU, cores, kernel, versions, load), are plain Linux readings with no knowledge of
testbeds or tunnels.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from typing import Any, Final

from sclp import __version__, native

_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name (field 2) may hold spaces and parentheses; cut after it.
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def process_peak_rss_mb(pid: int) -> float:
    """``VmHWM`` of process ``pid`` in MB (2^20 bytes)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise OSError(f"no VmHWM in /proc/{pid}/status")


def _first_line(args: list[str]) -> str | None:
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0] if lines else None


def machine_description() -> dict[str, Any]:
    """What the figures depend on: CPU, cores, kernel, Python, NumPy, whether the
    per-frame modules run compiled, iperf3, date, and the load average when the run
    started (a busy machine skews everything)."""
    import numpy

    cpu_model = platform.processor() or None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu_model": cpu_model,
        "nproc": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "sclp": __version__,
        # The per-frame modules mypyc compiled (a wheel built with SCLP_MYPYC=1), or none.
        "compiled": f"{n} modules (mypyc)" if (n := len(native.compiled())) else "none",
        "iperf3": _first_line(["iperf3", "--version"]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "loadavg_start": list(os.getloadavg()),
    }

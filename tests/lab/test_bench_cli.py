"""``sclp bench`` on the command line without namespaces: options reproduced, usage
errors, the chart's dependency checked before measuring, the product never loading the
lab, a missing guest setup named."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sclp.cli import build_parser
from sclp.lab.bench.options import BenchOptions
from sclp.lab.bench.run import BenchSetupError, guest_setup
from tests.e2e.helpers import sclp_cli


def test_command_line_reproduces_the_options() -> None:
    options = BenchOptions(
        protocols=("vxlan", "vxlan-sclp/udp"),
        duration=5,
        repeat=2,
        transports=("tcp",),
        json_path=Path("out dir/r.json"),
        markdown_path=Path("docs/results.md"),
    )
    args = build_parser().parse_args(shlex.split(options.command_line())[1:])
    assert options.command_line().startswith("sclp bench --protocols vxlan,vxlan-sclp/udp ")
    assert "'out dir/r.json'" in options.command_line()
    assert args.duration == 5 and args.repeat == 2 and args.transports == "tcp"
    assert options.chart_path == Path("docs/results.png")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--protocols", "vxlan,bogus"], "unknown configuration 'bogus'"),
        (["--transports", "sctp"], "--transports"),
        (["--repeat", "0"], "--repeat: must be at least 1"),
        (["--udp-length", "9000"], "--udp-length"),
    ],
)
def test_bad_options_are_usage_errors(args: list[str], message: str) -> None:
    result = sclp_cli("bench", *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


_WITHOUT_MATPLOTLIB = (
    "import sys; sys.modules['matplotlib'] = None; "
    "from sclp.cli import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--plot", "sclp: error: --plot needs matplotlib: pip install matplotlib (in a "),
        ("--markdown", "sclp: error: --markdown (for its chart) needs matplotlib: "),
    ],
)
def test_chart_without_matplotlib_fails_before_measuring(
    tmp_path: Path, flag: str, message: str
) -> None:
    out = tmp_path / ("x.png" if flag == "--plot" else "x.md")
    result = _python(_WITHOUT_MATPLOTLIB, "bench", "--quick", flag, str(out))
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert result.stdout == "" and not out.exists()


def test_the_product_never_loads_the_lab_or_matplotlib() -> None:
    code = """
import importlib, pkgutil, sys
import sclp.cli, sclp.endpoint
sclp.cli.build_parser()
for info in pkgutil.walk_packages(sclp.endpoint.__path__, "sclp.endpoint."):
    importlib.import_module(info.name)
loaded = [m for m in sys.modules if m.split(".")[0] == "matplotlib" or m.startswith("sclp.lab")]
print(sorted(loaded))
"""
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_vms_setup_names_what_is_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("shutil.which", lambda name, *a, **k: None)
    with pytest.raises(BenchSetupError, match="qemu-system-x86"):
        guest_setup("qemu")
    monkeypatch.undo()
    if os.geteuid() != 0 or shutil.which("qemu-system-x86_64") is None:
        pytest.skip("the image check needs root and QEMU (they are checked first)")
    monkeypatch.setenv("SCLP_GUEST_CACHE", str(tmp_path / "empty"))
    with pytest.raises(BenchSetupError, match="`sclp guest build`"):
        guest_setup("qemu")
    # The command: one line on stderr before anything is built or measured.
    result = sclp_cli("bench", "--vms", "qemu", "--quick")
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("sclp: error: --vms qemu: no guest image in ")
    assert "sclp guest build" in result.stderr and result.stderr.count("\n") == 1

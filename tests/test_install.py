"""Install for real, as docs/operations.md says: a wheel built from this checkout,
installed into a fresh virtual environment, runs ``sclp --version`` and
``sclp selfcheck`` with nothing of the checkout on its path.

Needs the package index (hatchling for the build, the dependencies for the install),
as the quick start does.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import sclp

ROOT = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT = 240.0
INSTALL_TIMEOUT = 420.0
RUN_TIMEOUT = 60.0

pytestmark = pytest.mark.timeout(BUILD_TIMEOUT + INSTALL_TIMEOUT + 4 * RUN_TIMEOUT + 60)


def _clean_env() -> dict[str, str]:
    """The environment without anything that would import sclp from the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        cmd, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{cmd}: exit {result.returncode}\n{result.stderr[-3000:]}"
    return result


def build_wheel(outdir: Path) -> Path:
    if importlib.util.find_spec("build") is not None:
        cmd = [sys.executable, "-m", "build", "--wheel", "--outdir", str(outdir), str(ROOT)]
    else:  # the dev extra has `build`; pip can build the wheel too
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(outdir), str(ROOT)]
    _run(cmd, outdir.parent, BUILD_TIMEOUT)
    (wheel,) = outdir.glob("sclp-*.whl")
    return wheel


def test_the_wheel_installs_into_a_fresh_venv_and_runs(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "dist")
    assert wheel.name == f"sclp-{sclp.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert "sclp/py.typed" in names and "sclp/endpoint/nve.py" in names
    assert f"sclp-{sclp.__version__}.dist-info/licenses/LICENSE" in names
    assert not any(n.startswith(("tests/", "docs/")) for n in names)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, RUN_TIMEOUT)
    _run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], tmp_path, INSTALL_TIMEOUT)

    where = _run(
        [str(venv / "bin" / "python"), "-c", "import sclp; print(sclp.__file__)"],
        tmp_path,
        RUN_TIMEOUT,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    sclp_cmd = str(venv / "bin" / "sclp")
    version = _run([sclp_cmd, "--version"], tmp_path, RUN_TIMEOUT)
    assert version.stdout.strip() == f"sclp {sclp.__version__}"
    check = _run([sclp_cmd, "selfcheck"], tmp_path, RUN_TIMEOUT)
    assert check.stdout.startswith("selfcheck: ") and "checks passed" in check.stdout
    completion = _run([sclp_cmd, "completion", "bash"], tmp_path, RUN_TIMEOUT)
    assert "selfcheck" in completion.stdout

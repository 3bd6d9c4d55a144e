"""The compiled wheel: ``SCLP_MYPYC=1`` builds the per-frame modules with mypyc
(``hatch_build.py``), and the same tests pass on them as on the pure-Python tree.

Builds the wheel with this venv's mypy (``--no-isolation``), unpacks it into a
directory put first on ``PYTHONPATH`` (so neither the checkout nor the editable install
is imported), checks that every module of ``sclp.native.MYPYC_MODULES`` loads
compiled, then runs the tests of those modules, and every tunnel end to end through
real endpoints, against it.  ``white_box`` tests patch methods, which compiled classes
do not allow: they run on the pure tree only.

Needs a C compiler and Python's headers (the quick start installs gcc and python3-dev).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import sclp
from sclp import native

ROOT = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT = 300.0
INSTALL_TIMEOUT = 120.0
TESTS_TIMEOUT = 420.0
# The compiled modules' own tests, and every tunnel through real endpoints.
COMPILED_TESTS = [
    "tests/wire",
    "tests/engine",
    "tests/switch",
    "tests/io/test_udp.py",
    "tests/endpoint/test_datapath.py",
    "tests/endpoint/test_tunnels.py",
    "tests/endpoint/test_path_mtu.py",
    "tests/e2e/test_protocols.py",
]

pytestmark = [
    pytest.mark.netns,
    pytest.mark.timeout(BUILD_TIMEOUT + INSTALL_TIMEOUT + TESTS_TIMEOUT + 120),
]


def _env(site: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SCLP_MYPYC")}
    if site is not None:
        env["PYTHONPATH"] = str(site)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(
    cmd: list[str], timeout: float, site: Path | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = {**_env(site), **extra}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    out = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, f"{cmd[:6]}: exit {result.returncode}\n{out}"
    return result


@pytest.fixture(scope="module")
def compiled_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compiled wheel, unpacked into a directory of its own."""
    tmp = tmp_path_factory.mktemp("native")
    dist = tmp / "dist"
    build = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist)]
    _run([*build, str(ROOT)], BUILD_TIMEOUT, SCLP_MYPYC="1")
    (wheel,) = dist.glob("sclp-*.whl")
    assert wheel.name.startswith(f"sclp-{sclp.__version__}-cp3"), wheel.name  # a platform wheel
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    for module in native.MYPYC_MODULES:
        stem = module.replace(".", "/")
        assert any(n.startswith(stem + ".") and n.endswith(".so") for n in names), module
        assert f"{stem}.py" in names, f"{module}: the source ships too"
    site = tmp / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site)]
    _run([*pip, str(wheel)], INSTALL_TIMEOUT)
    return site


def test_a_plain_build_leaves_the_checkout_without_extension_modules() -> None:
    """The hook compiles in a temporary copy: an extension module left in src/ would
    shadow the source the editable install runs."""
    assert not list((ROOT / "src").rglob("*.so"))
    assert native.compiled() == []  # this tree, the editable install: pure Python


def test_every_listed_module_loads_compiled(compiled_site: Path) -> None:
    probe = "import json, sclp.native as n; print(json.dumps([n.compiled(), n.__file__]))"
    out = _run([sys.executable, "-c", probe], 60, compiled_site).stdout
    compiled, where = __import__("json").loads(out)
    assert Path(where).is_relative_to(compiled_site)
    assert compiled == list(native.MYPYC_MODULES)
    version = _run([sys.executable, "-m", "sclp", "--version"], 60, compiled_site).stdout
    assert version.strip() == f"sclp {sclp.__version__} (mypyc: {len(compiled)} modules)"


def test_the_same_tests_pass_on_the_compiled_modules(compiled_site: Path) -> None:
    args = ["-q", "-p", "no:cacheprovider", "-m", "not white_box", *COMPILED_TESTS]
    result = _run([sys.executable, "-m", "pytest", *args], TESTS_TIMEOUT, compiled_site)
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary

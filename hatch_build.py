"""The wheel's build hook: with ``SCLP_MYPYC=1`` in the environment, mypyc compiles the
per-frame modules (``MYPYC_MODULES`` in ``src/sclp/native.py``) from the same typed
source into the wheel, which then is a platform wheel; without it, nothing happens
and the wheel is pure Python.

    SCLP_MYPYC=1 python -m build --wheel                  # isolated: fetches mypy
    SCLP_MYPYC=1 python -m build --wheel --no-isolation   # the dev venv's mypy

The compiler works on a copy of the package in a temporary directory, so no extension
module is ever left in the checkout, where it would shadow the source an editable
install runs.  Needs a C compiler and Python's headers (Debian: gcc, python3-dev).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

ENV = "SCLP_MYPYC"
MYPYC_TIMEOUT = 900.0


def enabled() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


def mypyc_modules(root: Path) -> list[str]:
    """``MYPYC_MODULES`` of ``src/sclp/native.py``, read without importing sclp."""
    tree = ast.parse((root / "src" / "sclp" / "native.py").read_text())
    for node in tree.body:
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == "MYPYC_MODULES"
            and node.value is not None
        ):
            return list(ast.literal_eval(node.value))
    raise RuntimeError("src/sclp/native.py defines no MYPYC_MODULES")


class MypycHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def dependencies(self) -> list[str]:
        """What an isolated build needs to compile: mypy (mypyc is part of it),
        setuptools (its extension build), and the runtime dependencies, whose types
        the compiled modules use."""
        if not enabled():
            return []
        return ["mypy>=1.10", "setuptools", *self.metadata.core.dependencies]

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable" or not enabled():
            return
        root = Path(self.root)
        self._work = tempfile.TemporaryDirectory(prefix="sclp-mypyc-")
        work = Path(self._work.name)
        shutil.copytree(root / "src" / "sclp", work / "sclp")
        files = [name.replace(".", "/") + ".py" for name in mypyc_modules(root)]
        result = subprocess.run(
            # No pyproject.toml there (setuptools, which builds the extensions, would
            # read it); the strict type check is CI's (`mypy`), this one compiles.
            [sys.executable, "-m", "mypyc", "--ignore-missing-imports", *files],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=MYPYC_TIMEOUT,
        )
        if result.returncode != 0:
            tail = (result.stdout + result.stderr)[-4000:]
            raise RuntimeError(f"{ENV}=1: mypyc failed (exit {result.returncode}):\n{tail}")
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        built = [*work.glob(f"*{suffix}"), *(work / "sclp").rglob(f"*{suffix}")]
        for path in built:
            build_data["force_include"][str(path)] = str(path.relative_to(work))
        build_data["pure_python"] = False
        build_data["infer_tag"] = True

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        work = getattr(self, "_work", None)
        if work is not None:
            work.cleanup()

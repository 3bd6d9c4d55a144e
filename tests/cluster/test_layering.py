"""The cluster package stays below the endpoint (which imports it) and its model stays
pure (docs/architecture.md: dependencies point down only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.structure.test_layering import FORBIDDEN_MODULES, SRC, imported_modules

pytestmark = pytest.mark.timeout(60)

CLUSTER = sorted((SRC / "cluster").glob("*.py"))
IO_LIBRARIES = FORBIDDEN_MODULES | {"threading", "requests", "ssl", "logging"}


@pytest.mark.parametrize("path", CLUSTER, ids=lambda p: p.name)
def test_cluster_does_not_import_the_layers_above(path: Path) -> None:
    for module in imported_modules(path):
        parts = module.split(".")
        if parts[0] == "sclp" and len(parts) > 1:
            assert parts[1] in ("cluster",), f"{path.name} imports {module}"


def test_model_is_pure() -> None:
    imports = imported_modules(SRC / "cluster" / "model.py")
    bad = {m for m in imports if m.split(".")[0] in IO_LIBRARIES}
    assert not bad, f"model.py imports {sorted(bad)}"

"""The pure layers (wire codecs, engines, switching) stay free of I/O and of the
layers above them (docs/architecture.md: dependencies point down only)."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "sclp"
PURE_PACKAGES = ("wire", "engine", "switch")
FORBIDDEN_MODULES = {"socket", "fcntl", "select", "os", "time", "subprocess", "selectors"}
LAYER_ORDER = ["wire", "engine", "switch", "io", "endpoint", "lab", "top", "cli"]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def pure_modules() -> list[Path]:
    return sorted(p for pkg in PURE_PACKAGES for p in (SRC / pkg).rglob("*.py"))


def test_there_are_pure_modules_to_check() -> None:
    assert len(pure_modules()) >= 3


@pytest.mark.parametrize("path", pure_modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_pure_layer_has_no_io_imports(path: Path) -> None:
    bad = {m for m in imported_modules(path) if m.split(".")[0] in FORBIDDEN_MODULES}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", pure_modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_pure_layer_imports_only_downwards(path: Path) -> None:
    own = path.relative_to(SRC).parts[0]
    allowed = set(LAYER_ORDER[: LAYER_ORDER.index(own) + 1])
    for module in imported_modules(path):
        parts = module.split(".")
        if parts[0] == "sclp" and len(parts) > 1:
            assert parts[1] in allowed, f"{path.name} imports {module} from a layer above"


def test_scanner_catches_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom socket import socket\nfrom sclp.io import tap\n")
    assert {"os", "socket", "sclp.io"} <= imported_modules(bad)


def test_lab_stays_above_the_product() -> None:
    """The lab (testbed, demo, bench) imports only from layers at or below it, and no
    product layer imports the lab or the CLI."""
    lab = sorted((SRC / "lab").rglob("*.py"))
    assert len(lab) >= 3
    allowed = set(LAYER_ORDER[: LAYER_ORDER.index("lab") + 1])
    for path in lab:
        for module in imported_modules(path):
            parts = module.split(".")
            if parts[0] == "sclp" and len(parts) > 1:
                assert parts[1] in allowed, f"lab/{path.name} imports {module} from above"
    product = LAYER_ORDER[: LAYER_ORDER.index("lab")]
    for path in sorted(p for pkg in product for p in (SRC / pkg).rglob("*.py")):
        bad = {
            m
            for m in imported_modules(path)
            if m.split(".")[:2] in (["sclp", "lab"], ["sclp", "cli"])
        }
        assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}"


def layered_modules() -> list[Path]:
    return sorted(p for pkg in LAYER_ORDER[:-1] for p in (SRC / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", layered_modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_every_layer_imports_only_downwards(path: Path) -> None:
    """The I/O adapters never import the endpoint, the endpoint never the lab: every
    package of the product imports from its own layer or those below."""
    own = path.relative_to(SRC).parts[0]
    allowed = set(LAYER_ORDER[: LAYER_ORDER.index(own) + 1])
    for module in imported_modules(path):
        parts = module.split(".")
        if parts[0] == "sclp" and len(parts) > 1 and parts[1] in LAYER_ORDER:
            assert parts[1] in allowed, f"{path.relative_to(SRC)} imports {module} from above"


def test_the_data_path_is_sans_io() -> None:
    """endpoint/datapath.py and endpoint/tunnels.py: no sockets, no clock, no I/O
    adapters (docs/architecture.md: the data path is sans-I/O)."""
    for name in ("datapath.py", "tunnels.py"):
        modules = imported_modules(SRC / "endpoint" / name)
        bad = {m for m in modules if m.split(".")[0] in FORBIDDEN_MODULES}
        bad |= {m for m in modules if m.startswith("sclp.io")}
        assert not bad, f"endpoint/{name} imports {sorted(bad)}"

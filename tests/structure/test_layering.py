"""Every module of the package has a layer, and imports only from its own layer or
those below (docs/architecture.md: dependencies point down only); the pure layers
(wire codecs, engines, switching) stay free of I/O."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "sclp"
PURE_PACKAGES = ("wire", "engine", "switch")
FORBIDDEN_MODULES = {"socket", "fcntl", "select", "os", "time", "subprocess", "selectors"}
# Bottom to top: a package (a directory of src/sclp) or a top-level module (its file
# name without .py).  A module may import what is at or below its own place; a module
# in no place fails test_every_module_has_a_layer.
LAYER_ORDER = [
    "__init__",  # the package itself: its version, nothing of ours
    "native",  # which modules run compiled (mypyc): nothing of ours
    "wire",  # 1 wire formats
    "engine",  # 2 engines
    "switch",  # 3 switching
    "logs",  # 4 I/O: logging (JSON lines, rate-limited warnings)
    "io",  # 4 I/O: the Linux adapters
    "cluster",  # 5 control planes: nothing of ours outside (SELF_CONTAINED)
    "bgp",
    "endpoint",  # 6 the NVE
    "cni",  # 7 front ends: the CNI plugins, the lab, then the commands
    "lab",
    "selfcheck",
    "scapy_layer",
    "top",
    "cli",
    "__main__",
]
# Layers that import nothing of ours outside themselves.
SELF_CONTAINED = ("cluster", "bgp")
FRONT_ENDS = LAYER_ORDER[LAYER_ORDER.index("cni") :]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "sclp":  # `from sclp import logs` imports sclp.logs
                names.update(f"sclp.{alias.name}" for alias in node.names)
    return names


def layer_of(path: Path) -> str:
    """A module's place in LAYER_ORDER: its package, or its own name at the top."""
    first = path.relative_to(SRC).parts[0]
    return first.removesuffix(".py")


def modules_of(layer: str) -> list[Path]:
    package = SRC / layer
    return sorted(package.rglob("*.py")) if package.is_dir() else [SRC / f"{layer}.py"]


def all_modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


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
    bad.write_text(
        "import os\nfrom socket import socket\nfrom sclp.io import tap\nfrom sclp import logs\n"
    )
    assert {"os", "socket", "sclp.io", "sclp.logs"} <= imported_modules(bad)


def test_every_module_has_a_layer() -> None:
    """A new package or top-level module must be given its place in LAYER_ORDER (and in
    docs/architecture.md's table) before the layering tests check it."""
    unplaced = sorted(
        str(p.relative_to(SRC)) for p in all_modules() if layer_of(p) not in LAYER_ORDER
    )
    assert not unplaced, f"not in any layer of LAYER_ORDER: {unplaced}"
    for layer in LAYER_ORDER:
        assert all(p.is_file() for p in modules_of(layer)), f"{layer} is in no file"


def test_the_layer_check_sees_an_unplaced_module() -> None:
    assert layer_of(SRC / "newthing.py") not in LAYER_ORDER
    assert layer_of(SRC / "io" / "tap.py") == "io"
    assert layer_of(SRC / "cli.py") == "cli"


def test_lab_stays_above_the_product() -> None:
    """The lab (testbed, demo, bench) imports only from layers at or below it, and no
    product layer imports the lab or the commands."""
    lab = modules_of("lab")
    assert len(lab) >= 3
    product = LAYER_ORDER[: LAYER_ORDER.index(FRONT_ENDS[0])]
    front = {f"sclp.{name}" for name in FRONT_ENDS}
    for path in sorted(p for layer in product for p in modules_of(layer)):
        bad = {m for m in imported_modules(path) if ".".join(m.split(".")[:2]) in front}
        assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", all_modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_every_layer_imports_only_downwards(path: Path) -> None:
    """The I/O adapters never import the endpoint, the endpoint never the lab, the
    commands' modules nothing above them: every module of the package imports from its
    own place in LAYER_ORDER or those below."""
    own = layer_of(path)
    assert own in LAYER_ORDER, f"{path.relative_to(SRC)} has no layer"
    allowed = set(LAYER_ORDER[: LAYER_ORDER.index(own) + 1])
    for module in imported_modules(path):
        parts = module.split(".")
        if parts[0] == "sclp" and len(parts) > 1 and parts[1] in LAYER_ORDER:
            assert parts[1] in allowed, f"{path.relative_to(SRC)} imports {module} from above"
        if own in SELF_CONTAINED and parts[0] == "sclp" and len(parts) > 1:
            assert parts[1] == own, f"{path.relative_to(SRC)} imports {module} from outside"


def test_the_data_path_is_sans_io() -> None:
    """endpoint/datapath.py and endpoint/tunnels.py: no sockets, no clock, no I/O
    adapters (docs/architecture.md: the data path is sans-I/O)."""
    for name in ("datapath.py", "tunnels.py"):
        modules = imported_modules(SRC / "endpoint" / name)
        bad = {m for m in modules if m.split(".")[0] in FORBIDDEN_MODULES}
        bad |= {m for m in modules if m.startswith("sclp.io")}
        assert not bad, f"endpoint/{name} imports {sorted(bad)}"

"""The documentation says what the code does: configuration keys, metric families,
modules, commands, packages and the generated results page, each compared with its
source of truth so a change to one without the other fails here.

No root, no network: the code is read (AST, the argparse parser) or driven in memory.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.core import CounterMetricFamily, InfoMetricFamily, Metric

from sclp.cli import build_parser
from sclp.endpoint import txerrors
from sclp.endpoint.config import parse_config
from sclp.endpoint.datapath import DataPath
from sclp.endpoint.faults import FaultInjector
from sclp.endpoint.metrics import SnapshotCollector
from sclp.lab.bench.report import markdown_report

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "sclp"
README = ROOT / "README.md"
CONFIG_PY = SRC / "endpoint" / "config.py"
CONFIG_MD = ROOT / "docs" / "config.md"

TICKED = re.compile(r"`([^`]+)`")


def _missing(what: str, items: set[str]) -> str:
    return f"{what}: {', '.join(sorted(items))}" if items else ""


def _fail_unless_empty(*parts: str) -> None:
    problems = [p for p in parts if p]
    assert not problems, "\n".join(problems)


# -- configuration keys: endpoint/config.py against docs/config.md ---------------------


def _table_name(header: ast.expr | None) -> str | None:
    """``"[underlay]"`` and ``f"[[network]]#{index}"`` as ``underlay`` and ``network``;
    ``""`` (or no header) as the top level ``""``."""
    if header is None:
        return ""
    if isinstance(header, ast.Constant) and isinstance(header.value, str):
        text = header.value
    elif isinstance(header, ast.JoinedStr):
        text = "".join(
            v.value
            for v in header.values
            if isinstance(v, ast.Constant) and isinstance(v.value, str)
        )
    else:
        return None
    return text.partition("#")[0].strip("[]")


def _reader_table(call: ast.expr) -> str | None:
    """The table of a ``_Reader(table, where, lines, header)`` expression, else None."""
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
        return None
    if call.func.id != "_Reader":
        return None
    header = call.args[3] if len(call.args) > 3 else None
    for kw in call.keywords:
        if kw.arg == "header":
            header = kw.value
    return _table_name(header)


def _str_values(node: ast.expr, loops: dict[str, list[str]]) -> list[str]:
    """The key(s) an argument stands for: a string literal, or a loop variable running
    over a tuple of string literals."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Name):
        return loops.get(node.id, [])
    return []


def _loop_vars(tree: ast.AST) -> dict[str, list[str]]:
    """``for key in ("a", "b")`` (statements and comprehensions): key -> ["a", "b"]."""
    found: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.For | ast.comprehension) and isinstance(node.target, ast.Name):
            it = node.iter
            if not isinstance(it, ast.Tuple):
                continue
            values = [e.value for e in it.elts if isinstance(e, ast.Constant)]
            if values and len(values) == len(it.elts):
                found.setdefault(node.target.id, []).extend(str(v) for v in values)
    return found


def _receiver(node: ast.expr) -> str | None:
    """``u`` of ``u.get`` and of ``u.table.get``."""
    if isinstance(node, ast.Name):
        return node.id
    if (
        isinstance(node, ast.Attribute)
        and node.attr == "table"
        and isinstance(node.value, ast.Name)
    ):
        return node.value.id
    return None


def parsed_config_keys() -> set[str]:
    """Every key config.py reads, as ``table.key`` (``key`` at the top level): the
    string literals passed to a reader's ``.get(...)`` (directly, through a helper
    such as ``_rate(reader, "drop")``, or through a loop over literals), each on the
    table its reader was made for."""
    tree = ast.parse(CONFIG_PY.read_text())
    functions = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}

    # Which table each reader variable reads, per function (module level: "").
    readers: dict[str, dict[str, str]] = {}
    for fn in functions.values():
        scope = readers.setdefault(fn.name, {})
        for node in ast.walk(fn):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                table = _reader_table(node.value)
                if isinstance(target, ast.Name) and table is not None:
                    scope[target.id] = table
    # Helpers called with a reader: _cluster(_Reader(...)), _network(_Reader(...)),
    # _rate(f, "drop"): the parameter gets the table of the argument.
    helper_keys: dict[str, tuple[int, int]] = {}  # fn -> (reader param, key param)
    for fn in functions.values():
        params = [a.arg for a in fn.args.args]
        for node in ast.walk(fn):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and _receiver(node.func.value) in params
                and node.args
                and isinstance(node.args[0], ast.Name)
                and node.args[0].id in params
            ):
                reader = _receiver(node.func.value)
                assert reader is not None
                helper_keys[fn.name] = (params.index(reader), params.index(node.args[0].id))
    for caller in functions.values():
        for node in ast.walk(caller):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            callee = functions.get(node.func.id)
            if callee is None:
                continue
            for index, arg in enumerate(node.args[: len(callee.args.args)]):
                table = _reader_table(arg)
                if table is None and isinstance(arg, ast.Name):
                    table = readers[caller.name].get(arg.id)
                if table is not None:
                    readers[callee.name].setdefault(callee.args.args[index].arg, table)

    keys: set[str] = set()

    def add(table: str, key: str) -> None:
        keys.add(f"{table}.{key}" if table else key)

    for fn in functions.values():
        scope = readers.get(fn.name, {})
        loops = _loop_vars(fn)  # a loop variable is the function's own
        for node in ast.walk(fn):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            if isinstance(node.func, ast.Attribute) and node.func.attr == "get":
                table = scope.get(_receiver(node.func.value) or "")
                if table is not None:
                    for key in _str_values(node.args[0], loops):
                        add(table, key)
            elif isinstance(node.func, ast.Name) and node.func.id in helper_keys:
                reader_at, key_at = helper_keys[node.func.id]
                if len(node.args) > max(reader_at, key_at):
                    arg = node.args[reader_at]
                    table = scope.get(arg.id) if isinstance(arg, ast.Name) else None
                    if table is not None:
                        for key in _str_values(node.args[key_at], loops):
                            add(table, key)
    return keys


def documented_config_keys() -> set[str]:
    """Every key docs/config.md documents, as ``table.key``: the first column of the
    ``| key | ...`` tables under each heading that names a table (``## Top level``,
    ``## `[underlay]` ...``, ``### `[underlay.faults]` ...``), plus each such table's
    own name in its parent (``underlay``, ``underlay.faults``, ``network``)."""
    keys: set[str] = set()
    table: str | None = None
    in_key_table = False
    for line in CONFIG_MD.read_text().splitlines():
        if line.startswith("#"):
            in_key_table = False
            heading = line.lstrip("#").strip()
            named = re.match(r"`\[\[?([A-Za-z0-9_.]+)\]\]?`", heading)
            if heading == "Top level":
                table = ""
            elif named:
                table = named.group(1)
                keys.add(table)
            else:
                table = None
            continue
        if table is None or not line.startswith("|"):
            in_key_table = in_key_table and line.startswith("|")
            continue
        first = line.strip("|").split("|")[0].strip()
        if first == "key":
            in_key_table = True
            continue
        if in_key_table and not set(first) <= set("-: "):
            for key in TICKED.findall(first):
                keys.add(f"{table}.{key}" if table else key)
    return keys


def test_config_keys_are_all_documented_and_all_real() -> None:
    parsed = parsed_config_keys()
    # The extraction itself: keys of every kind of read.
    for key in ("name", "underlay.local", "underlay.faults.drop", "cluster.ca", "network.vni"):
        assert key in parsed, f"the AST extraction lost {key}"
    documented = documented_config_keys()
    assert {"name", "underlay.mtu", "network.attach", "metrics.listen"} <= documented
    _fail_unless_empty(
        _missing(
            "parsed in src/sclp/endpoint/config.py, not in docs/config.md", parsed - documented
        ),
        _missing("in docs/config.md, not parsed by config.py", documented - parsed),
    )


# -- metric families: the exporter against docs/config.md's metrics table --------------


def realistic_stats() -> dict[str, Any]:
    """A snapshot as ``Endpoint.stats`` publishes it, from a real data path (two
    networks, a TAP and an attached port), the fault injector's counters and the
    cluster agent's status keys: every optional section present."""
    cfg = parse_config(
        """
name = "docs1"
[underlay]
local = "10.0.0.1"
sclp_carrier = "udp"
[underlay.faults]
drop = 0.01
[cluster]
etcd = ["http://127.0.0.1:2379"]
[[network]]
vni = 42
protocol = "vxlan-sclp"
tap = "tap42"
peers = ["10.0.0.2"]
[[network]]
vni = 43
protocol = "stt"
attach = ["vnet*"]
peers = ["10.0.0.3"]
"""
    )
    dp = DataPath(cfg, 1500)
    dp.add_port("vnet7", 43)  # the TAP tap42 is a port already
    report = dp.stats()
    report["counters"]["tx_sent"] = txerrors.sent(report["counters"])  # as Endpoint.stats
    assert cfg.underlay.faults.enabled
    return {
        "name": cfg.name,
        "pid": 1,
        "uptime_s": 1.0,
        "underlay": {"local": cfg.underlay.local, "mtu": 1500, "sclp_carrier": "udp"},
        **report,
        "faults": FaultInjector(cfg.underlay.faults).counters(),
        "cluster": {
            "connected": True,
            "endpoint": "http://127.0.0.1:2379",
            "members": 2,
            "revision": 5,
            "last_error": None,
            "lease_id": 7,
            "conflicts": 0,
            "conflicts_now": [],
        },
        "bgp": {
            "asn": 65001,
            "router_id": "10.0.0.1",
            "speaker": {"running": True, "pid": 2, "restarts": 0, "last_exit": None},
            "neighbors": [
                {
                    "address": "10.0.0.254",
                    "asn": 65000,
                    "state": "established",
                    "for_s": 1.0,
                    "flaps": 0,
                    "routes_received": 2,
                }
            ],
            "routes_advertised": 3,
            "bad_messages": 0,
        },
        "tx_errors": {
            "10.0.0.2": {
                "refused": 0,
                "async_errors": 1,
                "failing_since_s": 0.5,
                "last_error": "port_unreachable",
            }
        },
    }


def _exposed_name(metric: Metric) -> str:
    if isinstance(metric, CounterMetricFamily):
        return f"{metric.name}_total"
    if isinstance(metric, InfoMetricFamily):
        return f"{metric.name}_info"
    return metric.name


def served_families() -> set[str]:
    stats = realistic_stats()
    families: Iterator[Metric] = SnapshotCollector(lambda: stats, "docs1").collect()
    return {_exposed_name(m) for m in families}


def documented_families() -> set[str]:
    """The ``sclp_*`` names in the first column of config.md's ``| metric |`` table."""
    names: set[str] = set()
    in_table = False
    for line in CONFIG_MD.read_text().splitlines():
        if not line.startswith("|"):
            in_table = False
            continue
        first = line.strip("|").split("|")[0].strip()
        if first == "metric":
            in_table = True
        elif in_table:
            names.update(n for n in TICKED.findall(first) if n.startswith("sclp_"))
    return names


def test_every_metric_family_is_documented_and_every_documented_one_served() -> None:
    served = served_families()
    assert {"sclp_up", "sclp_port_tx_frames_total", "sclp_cluster_members"} <= served
    documented = documented_families()
    _fail_unless_empty(
        _missing("served by sclp.endpoint.metrics, not in docs/config.md", served - documented),
        _missing("in docs/config.md's metrics table, not served", documented - served),
    )


# -- README: the layout table covers every module --------------------------------------


def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else None]


def layout_rows() -> list[tuple[list[str], list[str]]]:
    """The layout table's rows: the backticked paths of the first column and the
    backticked words of the second."""
    rows = []
    for line in readme_section("Layout").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or cells[0] in ("path", "") or set(cells[0]) <= set("-: "):
            continue
        rows.append((TICKED.findall(cells[0]), TICKED.findall("|".join(cells[1:]))))
    return rows


def test_readme_layout_names_every_module() -> None:
    """The rule: a module directly in src/sclp/ has its path (`src/sclp/NAME.py`) in
    the first column; any other is named (`NAME.py`) in the row of its own folder
    (`src/sclp/FOLDER/`). ``__init__.py`` needs no mention. And nothing named there
    is missing from the tree."""
    rows = layout_rows()
    paths = {p for cells, _ in rows for p in cells}
    in_folder: dict[str, set[str]] = {}
    for cells, words in rows:
        for path in cells:
            if path.endswith("/"):
                in_folder.setdefault(path, set()).update(w for w in words if w.endswith(".py"))
    modules = sorted(p for p in SRC.rglob("*.py") if p.name != "__init__.py")
    unnamed, stale = set(), set()
    for module in modules:
        rel = module.relative_to(ROOT).as_posix()
        if module.parent == SRC:
            if rel not in paths:
                unnamed.add(rel)
        elif module.name not in in_folder.get(module.parent.relative_to(ROOT).as_posix() + "/", ()):
            unnamed.add(rel)
    for path in paths:
        if not (ROOT / path).exists():
            stale.add(path)
    for folder, names in in_folder.items():
        stale.update(f"{folder}{n}" for n in names if not (ROOT / folder / n).is_file())
    _fail_unless_empty(
        _missing("modules the README's layout table does not name", unnamed),
        _missing("named in the README's layout table, not in the tree", stale),
    )


# -- README: the command list covers every subcommand ----------------------------------


def subcommand_paths(parser: argparse.ArgumentParser, prefix: str = "sclp") -> set[str]:
    """``sclp run``, ..., ``sclp guest build``: every leaf command line's words."""
    found: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                deeper = subcommand_paths(child, f"{prefix} {name}")
                found |= deeper or {f"{prefix} {name}"}
    return found


def readme_command_lines() -> list[str]:
    section = readme_section("Using the endpoint")
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip().startswith("sclp ")]


def test_readme_command_list_has_every_subcommand() -> None:
    commands = subcommand_paths(build_parser())
    assert {"sclp run", "sclp guest build", "sclp completion"} <= commands
    lines = readme_command_lines()

    def listed(command: str) -> bool:
        return any(re.match(rf"{re.escape(command)}(\s|$)", line) for line in lines)

    top_level = {c.split()[1] for c in commands}
    unknown = {line.split()[1] for line in lines} - top_level
    _fail_unless_empty(
        _missing(
            "subcommands of sclp.cli.build_parser() missing from the README's list",
            {c for c in commands if not listed(c)},
        ),
        _missing("commands in the README's list that sclp does not have", unknown),
    )


# -- README: the Debian packages quickstart.sh installs --------------------------------


def test_readme_names_every_debian_package_of_the_quick_start() -> None:
    script = (ROOT / "quickstart.sh").read_text()
    words: list[str] = []
    for line in script.split("DEB_PACKAGES=(", 1)[1].splitlines():
        code = line.split("#", 1)[0]  # comments may hold parentheses
        words += code.split(")", 1)[0].split()
        if ")" in code:
            break
    assert {"iperf3", "tinc", "etcd-server", "openssl"} <= set(words)
    quick_start = readme_section("Quick start")
    _fail_unless_empty(
        _missing(
            "Debian packages quickstart.sh installs, not named in the README's quick start",
            {w for w in words if f"`{w}`" not in quick_start},
        )
    )


# -- docs/results.md is the generator's page of docs/results.json ----------------------


def test_results_page_is_what_the_generator_makes_of_its_json() -> None:
    """`sclp bench --markdown` wrote docs/results.md from the run in docs/results.json:
    a change to the page's text goes into the generator (sclp.lab.bench.report), and
    the generator's text shows on the page, without a new run."""
    docs = ROOT / "docs"
    report = json.loads((docs / "results.json").read_text())
    page = markdown_report(report, docs / "results.png", docs / "results.json", docs)
    assert page == (docs / "results.md").read_text()


# -- nothing points readers to a tracker they do not have ------------------------------


def test_no_doc_or_module_cites_an_issue_number() -> None:
    files = [README, *sorted((ROOT / "docs").glob("*.md")), *sorted(SRC.rglob("*.py"))]
    cited = {
        f"{path.relative_to(ROOT)}:{number}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bissues? #?\d+", line, re.IGNORECASE)
    }
    _fail_unless_empty(_missing("issue numbers readers cannot look up", cited))


def test_no_doc_or_message_installs_sclp_from_a_package_index() -> None:
    """sclp is on no index: extras come from a checkout (``-e '.[plot]'``) or a built
    wheel, never ``pip install 'sclp[...]'`` or ``pip install sclp``."""
    files = [README, *sorted((ROOT / "docs").glob("*.md")), *sorted(SRC.rglob("*.py"))]
    wrong = re.compile(r"pip install ['\"]?sclp(\[|['\"\s]|$)")
    found = {
        f"{path.relative_to(ROOT)}:{number}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if wrong.search(line)
    }
    _fail_unless_empty(_missing("pip install of sclp from an index", found))


# -- docs/evpn.md: the FRR configuration is the one the interop test runs --------------


def test_evpn_doc_shows_the_frr_configuration_the_test_runs() -> None:
    from tests.e2e.test_evpn import FRR_BGPD, FRR_KERNEL

    text = (ROOT / "docs" / "evpn.md").read_text()
    assert FRR_BGPD in text and FRR_KERNEL in text
    assert "[docs/evpn.md](docs/evpn.md)" in (ROOT / "README.md").read_text()

"""The results page says which build ran the endpoints: the compiled one (a wheel
built with SCLP_MYPYC=1) in a sentence under the command, the pure one by its
machine row alone."""

from __future__ import annotations

import json
from pathlib import Path

from sclp.lab.bench.report import markdown_report

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _page(compiled: str | None) -> str:
    report = json.loads((DOCS / "results.json").read_text())
    if compiled is None:
        report["machine"].pop("compiled", None)  # a run from before the row existed
    else:
        report["machine"]["compiled"] = compiled
    return markdown_report(report, DOCS / "results.png", DOCS / "results.json", DOCS)


def test_a_compiled_run_says_so_under_the_command() -> None:
    page = _page("15 modules (mypyc)")
    assert "The endpoints ran a wheel built with `SCLP_MYPYC=1`: 15 modules (mypyc)" in page
    assert "| compiled | 15 modules (mypyc) |" in page


def test_a_pure_run_has_no_such_sentence() -> None:
    for compiled in ("none", None):
        assert "SCLP_MYPYC" not in _page(compiled)
    assert "| compiled | none |" in _page("none")

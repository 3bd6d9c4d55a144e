"""Load the golden SCLP segments (shared/vectors/sclp-segments.json, an independent
encoder's output).  The repository keeps its own copy in tests/vectors/ so the tests
never depend on shared/ existing; SCLP_SHARED_DIR or the shared/ folder beside the
checkout are the fall-backs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

NAME = "sclp-segments.json"
REPO_COPY = Path(__file__).resolve().parents[1] / "vectors" / NAME


def shared_copy() -> Path | None:
    """The shared/ original, if it can be found."""
    candidates = []
    if os.environ.get("SCLP_SHARED_DIR"):
        base = Path(os.environ["SCLP_SHARED_DIR"])
        candidates += [base / "vectors" / NAME, base / NAME]
    candidates.append(Path(__file__).resolve().parents[2].parent / "shared" / "vectors" / NAME)
    return next((p for p in candidates if p.is_file()), None)


def vector_path() -> Path:
    if REPO_COPY.is_file():
        return REPO_COPY
    path = shared_copy()
    if path is None:
        raise FileNotFoundError(f"{NAME} not in tests/vectors/ nor in shared/ (SCLP_SHARED_DIR)")
    return path


def load_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads(vector_path().read_text())["cases"]
    return cases


def case_payload(case: dict[str, Any]) -> bytes:
    """The payload a case was computed from (payload_hex, else the stated rule)."""
    if case["payload_hex"] is not None:
        payload = bytes.fromhex(case["payload_hex"])
    else:
        assert case["payload_rule"] == "byte i = (7*i + 3) mod 256", case["payload_rule"]
        payload = bytes((7 * i + 3) % 256 for i in range(case["payload_len"]))
    assert len(payload) == case["payload_len"]
    return payload

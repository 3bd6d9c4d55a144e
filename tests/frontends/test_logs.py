"""Daemon logging: the endpoint's name and the level in every line, JSON that parses,
and per-key rate limiting with one summary line per window (time passed in)."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from sclp.logs import RateLimited, configure


@pytest.fixture
def sclp_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("sclp")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield logger
    for handler in logger.handlers[:]:
        if handler not in saved[0]:
            logger.removeHandler(handler)
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def test_text_lines_carry_time_endpoint_and_level(sclp_logger: logging.Logger) -> None:
    out = io.StringIO()
    configure("host1", stream=out)
    logging.getLogger("sclp.endpoint").info("up with %d networks", 2)
    sclp_logger.debug("not at INFO")
    sclp_logger.warning("peer %s unknown", "10.0.0.9")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ host1 INFO up with 2 networks", lines[0])
    assert lines[1].endswith(" host1 WARNING peer 10.0.0.9 unknown")


def test_json_lines_parse_and_carry_extra_fields(sclp_logger: logging.Logger) -> None:
    out = io.StringIO()
    configure("host2", fmt="json", level=logging.DEBUG, stream=out)
    sclp_logger.debug("tick")
    sclp_logger.warning("dropped %s", "frame", extra={"peer": "10.0.0.2", "level": "not mine"})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        sclp_logger.exception("failed")
    first, second, third = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["level"] == "debug" and first["endpoint"] == "host2" and first["msg"] == "tick"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    assert second == {
        "ts": second["ts"],
        "level": "warning",
        "endpoint": "host2",
        "msg": "dropped frame",
        "peer": "10.0.0.2",
    }  # an extra field cannot replace the four fixed ones
    assert third["level"] == "error" and "RuntimeError: boom" in third["exc"]


def test_configure_again_replaces_the_handler(sclp_logger: logging.Logger) -> None:
    first, second = io.StringIO(), io.StringIO()
    configure("a", stream=first)
    configure("b", fmt="json", stream=second)
    sclp_logger.info("once")
    assert first.getvalue() == ""
    assert json.loads(second.getvalue())["endpoint"] == "b"
    with pytest.raises(ValueError):
        configure("c", fmt="xml")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def collected() -> Iterator[tuple[logging.Logger, _Collect]]:
    logger = logging.getLogger("sclp.test.ratelimit")
    logger.propagate = False
    handler = _Collect()
    logger.addHandler(handler)
    yield logger, handler
    logger.removeHandler(handler)


def test_rate_limited_lets_a_burst_through_then_summarises(
    collected: tuple[logging.Logger, _Collect],
) -> None:
    logger, handler = collected
    limited = RateLimited(logger, interval=10.0, burst=5)
    passed = [
        limited.warning("bad-sclp", "bad header from %s", f"p{i}", now=i * 0.01)
        for i in range(1000)
    ]
    assert passed == [True] * 5 + [False] * 995
    assert handler.lines == [f"bad header from p{i}" for i in range(5)]
    assert limited.warning("other", "another kind", now=1.0)  # keys are counted apart
    handler.lines.clear()

    assert limited.warning("bad-sclp", "bad header from %s", "late", now=10.0)  # window rolled
    assert handler.lines == ["bad header from p999 (995 more suppressed)", "bad header from late"]


def test_rate_limited_flush_summarises_a_burst_that_stopped(
    collected: tuple[logging.Logger, _Collect],
) -> None:
    logger, handler = collected
    limited = RateLimited(logger, interval=1.0, burst=2)
    for i in range(7):
        limited.warning(("short", "10.0.0.2"), "short frame %d", i, now=0.1)
    limited.warning("quiet", "only once", now=0.5)
    handler.lines.clear()
    limited.flush(now=0.5)
    assert handler.lines == []  # the window has not passed
    limited.flush(now=1.2)
    assert handler.lines == ["short frame 6 (5 more suppressed)"]
    limited.flush(now=5.0)  # summarised once; the quiet key had nothing to say
    assert handler.lines == ["short frame 6 (5 more suppressed)"]
    assert limited.warning(("short", "10.0.0.2"), "short frame %d", 7, now=5.0)


def test_rate_limited_keys_are_bounded(collected: tuple[logging.Logger, _Collect]) -> None:
    logger, handler = collected
    limited = RateLimited(logger, interval=10.0, burst=1, max_keys=4)
    for peer in range(100):
        limited.warning(peer, "from %d", peer, now=0.0)
        limited.warning(peer, "from %d", peer, now=0.0)  # suppressed
    assert len(limited._windows) == 4
    assert handler.lines[:3] == ["from 0", "from 1", "from 2"]
    assert "from 0 (1 more suppressed)" in handler.lines

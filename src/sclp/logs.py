"""Logging for the daemon: one handler on the ``"sclp"`` logger, the endpoint's name
in every line, as text or as JSON lines, and :class:`RateLimited` for warnings that
bad input could otherwise turn into one line per packet.

Text: ``2026-11-29T06:32:24Z host1 INFO message``.
JSON: ``{"ts": "2026-11-29T06:32:24.123Z", "level": "info", "endpoint": "host1",
"msg": "message", ...}`` plus the fields of ``extra=``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Hashable, Mapping
from typing import IO, Final

__all__ = ["FORMATS", "JsonFormatter", "RateLimited", "TextFormatter", "configure"]

LOGGER: Final = "sclp"
FORMATS: Final = ("text", "json")

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_FIELDS: Final = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def _utc(created: float, millis: bool = False) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    if millis:
        stamp += f".{int(created * 1000) % 1000:03d}"
    return stamp + "Z"


class TextFormatter(logging.Formatter):
    """``<UTC time> <endpoint> <LEVEL> <message>`` (a traceback follows, if any)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.endpoint = name

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return _utc(record.created)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802
        return f"{record.asctime} {self.endpoint} {record.levelname} {record.message}"

    def usesTime(self) -> bool:  # noqa: N802
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``endpoint``, ``msg``, then the
    ``extra=`` fields (which cannot replace those four) and ``exc`` for a
    traceback.  Values JSON cannot hold are written as ``str()``."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.endpoint = name

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": _utc(record.created, millis=True),
            "level": record.levelname.lower(),
            "endpoint": self.endpoint,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS:
                entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(
    name: str,
    fmt: str = "text",
    level: int = logging.INFO,
    stream: IO[str] | None = None,
) -> None:
    """Set up the ``"sclp"`` logger for endpoint ``name``: one handler writing to
    ``stream`` (standard error by default) in ``fmt`` (``"text"`` or ``"json"``) at
    ``level``.  Calling it again replaces the handler; records do not propagate to
    the root logger, so nothing is written twice."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    logger = logging.getLogger(LOGGER)
    for old in [h for h in logger.handlers if getattr(h, "_sclp_daemon", False)]:
        logger.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(TextFormatter(name) if fmt == "text" else JsonFormatter(name))
    handler._sclp_daemon = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


class _Window:
    __slots__ = ("args", "logged", "msg", "start", "suppressed")

    def __init__(self, start: float, msg: str, args: tuple[object, ...]) -> None:
        self.start = start
        self.logged = 0
        self.suppressed = 0
        self.msg = msg  # the last message of the key, for the summary
        self.args = args


class RateLimited:
    """At most ``burst`` lines per key per ``interval`` seconds.

    A key's window opens with its first line; lines beyond ``burst`` in the window
    are counted, and when the window has passed one summary line goes out: the last
    suppressed message followed by ``(N more suppressed)``.  The window rolls on the
    key's next line or on :meth:`flush` (call it from the loop's timer tick, so a
    burst that stops is still summarised).  At most ``max_keys`` keys are
    remembered (the oldest is summarised and forgotten), so keys made from peer
    addresses cannot grow without bound.  Time is always passed in."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        burst: int = 5,
        level: int = logging.WARNING,
        max_keys: int = 1024,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.burst = burst
        self.level = level
        self.max_keys = max_keys
        self._windows: dict[Hashable, _Window] = {}

    def warning(
        self,
        key: Hashable,
        msg: str,
        *args: object,
        now: float,
        extra: Mapping[str, object] | None = None,
    ) -> bool:
        """Log ``msg % args`` unless ``key`` has used its burst; returns whether
        it was logged."""
        window = self._windows.get(key)
        if window is not None and now - window.start >= self.interval:
            self._summarise(window)
            del self._windows[key]
            window = None
        if window is None:
            while len(self._windows) >= self.max_keys:
                self._summarise(self._windows.pop(next(iter(self._windows))))
            window = self._windows[key] = _Window(now, msg, args)
        if window.logged < self.burst:
            window.logged += 1
            self.logger.log(self.level, msg, *args, extra=extra)
            return True
        window.suppressed += 1
        window.msg, window.args = msg, args
        return False

    def flush(self, now: float) -> None:
        """Summarise and forget every window that has passed."""
        if not self._windows:
            return
        for key in [k for k, w in self._windows.items() if now - w.start >= self.interval]:
            self._summarise(self._windows.pop(key))

    def _summarise(self, window: _Window) -> None:
        if window.suppressed:
            self.logger.log(
                self.level, window.msg + " (%d more suppressed)", *window.args, window.suppressed
            )

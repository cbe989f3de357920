"""Logging set-up shared by every service: one line per event, ids in the message, every value bounded.

A peer controls much of what is logged (ids, names, error texts), so the one handler that
:func:`configure_logging` installs on the root logger

- cuts each argument of a message to ``max_arg_chars`` (``…(+N chars)`` says how much was left out)
  and the whole message to ``max_message_chars``, so one bad call cannot write a 6 MB line;
- escapes control characters (``\\n``, ``\\r``, ``\\x00``, ANSI escapes, …), so a value cannot forge a
  line or repaint the terminal; a traceback keeps its lines, each bounded the same way;
- rate-limits floods: past ``flood_limit`` records of one (logger, message template) pair within
  ``flood_window_s``, records are dropped and one ``suppressed N similar messages`` line is written
  with the first record after the window ends (or when logging shuts down). The window reads an
  injected :class:`~fedn.clock.Clock`, so tests drive it with a ``ManualClock``.

Lines are text by default; ``log_format="json"`` (``--log-format json``, env ``FEDN_LOG_FORMAT``) writes
one JSON object per line instead (time in ISO 8601, level, logger, message, service, and ``exc`` for a
traceback), for log shippers. Its values are bounded and escaped exactly as the text lines are.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TextIO

from fedn.clock import Clock, SystemClock

__all__ = ["LOG_FORMATS", "BoundedFormatter", "FloodFilter", "JsonFormatter", "configure_logging", "escape_controls"]

LOG_FORMATS = ("text", "json")

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape_controls(text: str) -> str:
    """``text`` with every control character (C0, DEL, C1, line and paragraph separators) as a visible escape."""
    return text.translate(_ESCAPES)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}…(+{len(text) - limit} chars)"


class _Bounded:
    """An argument that renders cut to a bound, as ``%s`` (str) and ``%r`` (repr) alike."""

    __slots__ = ("_limit", "_value")

    def __init__(self, value: object, limit: int) -> None:
        self._value = value
        self._limit = limit

    def __str__(self) -> str:
        return _cut(str(self._value), self._limit)

    def __repr__(self) -> str:
        return _cut(repr(self._value), self._limit)


def _bound(value: object, limit: int) -> object:
    if value is None or isinstance(value, numbers.Number):  # %d, %.3f and friends need the number itself
        return value
    return _Bounded(value, limit)


class BoundedFormatter(logging.Formatter):
    """A formatter that bounds each argument and the message, and escapes control characters."""

    def __init__(
        self,
        fmt: str | None = None,
        datefmt: str | None = None,
        *,
        max_arg_chars: int = 200,
        max_message_chars: int = 4000,
    ) -> None:
        super().__init__(fmt, datefmt)
        self.max_arg_chars = max_arg_chars
        self.max_message_chars = max_message_chars

    def format(self, record: logging.LogRecord) -> str:
        return super().format(self._bounded(record))

    def _bounded(self, record: logging.LogRecord) -> logging.LogRecord:
        """A copy of ``record`` whose message is rendered, bounded and escaped (``args`` consumed)."""
        bounded = logging.makeLogRecord(record.__dict__)  # other handlers keep the record as it was
        args = record.args
        if isinstance(args, Mapping):
            bounded.args = {k: _bound(v, self.max_arg_chars) for k, v in args.items()}
        elif args:
            bounded.args = tuple(_bound(a, self.max_arg_chars) for a in args)
        message = bounded.getMessage()
        bounded.msg, bounded.args = escape_controls(_cut(message, self.max_message_chars)), None
        bounded.exc_text = None  # formatted again below, bounded
        return bounded

    def _bound_lines(self, text: str) -> str:
        return "\n".join(escape_controls(_cut(line, self.max_message_chars)) for line in text.splitlines())

    def formatException(self, ei) -> str:
        return self._bound_lines(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return self._bound_lines(super().formatStack(stack_info))


class JsonFormatter(BoundedFormatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, ``service``
    (when given) and ``exc`` (a bounded traceback). The message is bounded and escaped as in text lines,
    so a line parses with ``json.loads`` and holds no raw control character."""

    def __init__(self, *, service: str | None = None, max_arg_chars: int = 200, max_message_chars: int = 4000) -> None:
        super().__init__(max_arg_chars=max_arg_chars, max_message_chars=max_message_chars)
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        bounded = self._bounded(record)
        line = {
            "time": datetime.fromtimestamp(bounded.created, UTC).isoformat(timespec="milliseconds"),
            "level": bounded.levelname,
            "logger": escape_controls(_cut(bounded.name, self.max_arg_chars)),
            "message": bounded.msg,
        }
        if self.service:
            line["service"] = self.service
        if bounded.exc_info:
            line["exc"] = self.formatException(bounded.exc_info)
        if bounded.stack_info:
            line["stack"] = self.formatStack(bounded.stack_info)
        return json.dumps(line, ensure_ascii=False)


class _Window:
    __slots__ = ("count", "levelno", "name", "start", "template")

    def __init__(self, name: str, template: str, levelno: int, start: float) -> None:
        self.name, self.template, self.levelno, self.start, self.count = name, template, levelno, start, 0


class FloodFilter(logging.Filter):
    """Lets ``limit`` records of one (logger, template) pair through per ``window_s``; counts the rest
    and hands one summary record to ``emit`` once the window has ended."""

    _SUMMARY = "suppressed %d similar messages in the last %g s: %s"

    def __init__(
        self,
        *,
        limit: int = 20,
        window_s: float = 10.0,
        clock: Clock | None = None,
        emit: Callable[[logging.LogRecord], object] | None = None,
        max_windows: int = 4096,
    ) -> None:
        super().__init__()
        self.limit = limit
        self.window_s = window_s
        self.emit = emit
        self._clock = clock or SystemClock()
        self._max_windows = max_windows
        self._windows: OrderedDict[tuple[str, str], _Window] = OrderedDict()  # oldest window first
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "fedn_flood_summary", False) or record.name == "fedn.audit":
            return True  # the audit trail is never thinned, nor does it take the windows of other messages
        template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
        key = (record.name, template[:500])
        with self._lock:
            now = self._clock.now()
            ended = self._expire(now)
            window = self._windows.get(key)
            if window is None:
                if len(self._windows) >= self._max_windows:
                    ended.append(self._windows.popitem(last=False)[1])
                window = self._windows[key] = _Window(record.name, key[1], record.levelno, now)
            window.count += 1
            window.levelno = max(window.levelno, record.levelno)
            passed = window.count <= self.limit
        self._summarize(ended)  # outside the lock: emitting runs the handler's filters, this one included
        return passed

    def close(self) -> None:
        """Summarize every window with dropped records, ended or not (logging is shutting down)."""
        with self._lock:
            ended = list(self._windows.values())
            self._windows.clear()
        self._summarize(ended)

    def _expire(self, now: float) -> list[_Window]:
        ended = []
        while self._windows:
            oldest = next(iter(self._windows.values()))
            if now - oldest.start < self.window_s:
                break
            ended.append(self._windows.popitem(last=False)[1])
        return ended

    def _summarize(self, windows: list[_Window]) -> None:
        for window in windows:
            dropped = window.count - self.limit
            if dropped <= 0 or self.emit is None:
                continue
            summary = logging.LogRecord(
                window.name, window.levelno, __file__, 0, self._SUMMARY, (dropped, self.window_s, window.template), None
            )
            summary.fedn_flood_summary = True
            self.emit(summary)


class _Handler(logging.StreamHandler):
    """The stream handler with its flood filter, whose pending summaries are written on close."""

    def __init__(self, stream: TextIO, flood: FloodFilter) -> None:
        super().__init__(stream)
        self.flood = flood
        flood.emit = self.handle
        self.addFilter(flood)

    def close(self) -> None:
        self.flood.close()
        super().close()


def configure_logging(
    level: str = "INFO",
    *,
    service: str | None = None,
    clock: Clock | None = None,
    stream: TextIO | None = None,
    max_arg_chars: int = 200,
    flood_limit: int = 20,
    flood_window_s: float = 10.0,
    log_format: str | None = None,
) -> None:
    """Log to ``stream`` (stderr) at ``level``; ``service`` prefixes every line (useful when processes
    share a terminal). Every value is bounded and floods are rate-limited (see the module docstring).
    ``log_format`` is ``text`` or ``json``; None reads ``FEDN_LOG_FORMAT`` (what ``--log-format`` sets,
    so a tier's own set-up and the processes ``fedn local`` starts keep the choice), else text."""
    asked = (log_format or os.environ.get("FEDN_LOG_FORMAT") or "text").lower()
    log_format = asked if asked in LOG_FORMATS else "text"
    flood = FloodFilter(limit=flood_limit, window_s=flood_window_s, clock=clock)
    handler = _Handler(stream if stream is not None else sys.stderr, flood)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(service=service, max_arg_chars=max_arg_chars))
    else:
        fmt = f"%(asctime)s %(levelname)-7s [{service}] %(name)s: %(message)s" if service else _FORMAT
        handler.setFormatter(BoundedFormatter(fmt, datefmt="%H:%M:%S", max_arg_chars=max_arg_chars))
    root = logging.getLogger()
    for old in root.handlers:
        if isinstance(old, _Handler):
            old.flood.close()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    if asked != log_format:
        logging.getLogger(__name__).warning(
            "unknown log format %r (--log-format, FEDN_LOG_FORMAT): writing %s lines; choose one of %s",
            asked,
            log_format,
            ", ".join(LOG_FORMATS),
        )

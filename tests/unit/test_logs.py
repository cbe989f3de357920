"""Logs bound every value they print and rate-limit floods (issue 14, H): one bad call cannot write a
6 MB line, a control character cannot forge a line, and 10,000 identical warnings write the cap and
one summary line. The flood filter reads an injected clock, so no test sleeps."""

from __future__ import annotations

import io
import logging

import pytest

from fedn.clock import ManualClock
from fedn.logs import BoundedFormatter, FloodFilter, configure_logging


@pytest.fixture
def root():
    """The root logger, restored after the test (configure_logging replaces its handlers)."""
    logger = logging.getLogger()
    handlers, level = logger.handlers[:], logger.level
    yield logger
    for handler in logger.handlers:
        if handler not in handlers:
            handler.close()
    logger.handlers[:] = handlers
    logger.setLevel(level)


def _configured(root: logging.Logger, clock: ManualClock, **kwargs) -> io.StringIO:
    stream = io.StringIO()
    configure_logging("INFO", service="test", clock=clock, stream=stream, **kwargs)
    return stream


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_a_6_mb_argument_is_cut_to_the_bound(root):
    stream = _configured(root, ManualClock())
    huge = "x" * (6 << 20)
    logging.getLogger("fedn.test").warning("combiner %s sent %d bytes", huge, len(huge))
    [line] = _lines(stream)
    assert len(line) < 400, len(line)
    assert "x" * 200 + f"…(+{len(huge) - 200} chars) sent {len(huge)} bytes" in line


def test_non_string_arguments_are_bounded_too_and_keep_their_formats(root):
    stream = _configured(root, ManualClock())
    log = logging.getLogger("fedn.test")
    log.info("ids %s; repr %r; float %.2f; int %5d; none %s", list(range(100_000)), "a'b", 0.125, 42, None)
    log.info("mapping %(who)s", {"who": "y" * 1000})
    first, second = _lines(stream)
    assert first.endswith('repr "a\'b"; float 0.12; int    42; none None')
    assert "…(+" in first and len(first) < 500
    assert second.endswith("y" * 200 + "…(+800 chars)")


def test_control_characters_are_escaped_so_a_value_cannot_forge_a_line(root):
    stream = _configured(root, ManualClock())
    logging.getLogger("fedn.test").warning("unknown model %s", "a\nINFO forged line\r\x00\x1b[31m\x7f\u2028z", extra={})
    logging.getLogger("fedn.test").warning("template\nbreak %s", "ok")
    lines = _lines(stream)
    assert len(lines) == 2, lines
    assert lines[0].endswith("unknown model a\\nINFO forged line\\r\\x00\\x1b[31m\\x7f\\u2028z")
    assert lines[1].endswith("template\\nbreak ok")


def test_a_message_built_before_logging_is_bounded_as_a_whole(root):
    stream = _configured(root, ManualClock())
    logging.getLogger("fedn.test").error("prefix " + "z" * 100_000)
    [line] = _lines(stream)
    assert len(line) < 5000 and line.endswith("…(+96007 chars)")  # 7 + 100,000 - 4000


def test_tracebacks_keep_their_lines_but_each_is_bounded(root):
    stream = _configured(root, ManualClock())
    try:
        raise ValueError("bad value " + "q" * 100_000 + "\x00")
    except ValueError:
        logging.getLogger("fedn.test").exception("handler failed")
    lines = _lines(stream)
    assert lines[0].endswith("handler failed") and lines[1] == "Traceback (most recent call last):"
    assert lines[-1].startswith("ValueError: bad value qqq") and "…(+" in lines[-1]
    assert max(map(len, lines)) < 5000


def test_a_flood_writes_the_cap_and_one_summary_line(root):
    clock = ManualClock()
    stream = _configured(root, clock, flood_limit=20, flood_window_s=10.0)
    log = logging.getLogger("fedn.test")
    for i in range(10_000):
        log.warning("refused update from %s: %s", f"client-{i}", "bad shape")
    assert len(_lines(stream)) == 20
    clock.advance(5.0)
    log.warning("refused update from %s: %s", "client-x", "bad shape")
    assert len(_lines(stream)) == 20  # the window has not ended yet
    clock.advance(5.0)
    log.info("round 3 done")  # the first line after the window ends brings its summary
    lines = _lines(stream)
    assert len(lines) == 22, lines[20:]
    assert "suppressed 9981 similar messages in the last 10 s: refused update from %s: %s" in lines[20]
    assert lines[20].split()[1] == "WARNING" and "fedn.test" in lines[20]
    assert lines[21].endswith("round 3 done")
    log.warning("refused update from %s: %s", "client-y", "bad shape")  # a new window
    assert len(_lines(stream)) == 23


def test_different_templates_and_loggers_have_windows_of_their_own(root):
    clock = ManualClock()
    stream = _configured(root, clock, flood_limit=3, flood_window_s=10.0)
    for _ in range(10):
        logging.getLogger("fedn.a").warning("one %s", 1)
        logging.getLogger("fedn.b").warning("one %s", 1)
        logging.getLogger("fedn.a").warning("two %s", 2)
    assert len(_lines(stream)) == 9


def test_pending_summaries_are_written_when_logging_shuts_down(root):
    clock = ManualClock()
    stream = _configured(root, clock, flood_limit=2, flood_window_s=10.0)
    for _ in range(5):
        logging.getLogger("fedn.test").warning("again")
    for handler in root.handlers:
        handler.close()
    lines = _lines(stream)
    assert len(lines) == 3 and "suppressed 3 similar messages" in lines[2]


def test_the_filter_and_formatter_alone_with_a_clock():
    clock = ManualClock()
    records: list[logging.LogRecord] = []
    flood = FloodFilter(limit=1, window_s=1.0, clock=clock, emit=records.append)
    make = lambda: logging.LogRecord("x", logging.INFO, __file__, 1, "m %s", ("a",), None)  # noqa: E731
    assert [flood.filter(make()) for _ in range(3)] == [True, False, False]
    clock.advance(1.0)
    assert flood.filter(make()) is True
    [summary] = records
    formatted = BoundedFormatter("%(levelname)s %(message)s", max_arg_chars=5).format(summary)
    assert formatted == "INFO suppressed 2 similar messages in the last 1 s: m %s"

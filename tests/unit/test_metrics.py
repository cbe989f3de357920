"""Metric definitions, the combiner's result accounting, and JSON log lines (no sockets)."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from combiner.run import RunContext, Tally, store_result
from fedn.errors import ChecksumMismatch, FednError, InvalidArgument, InvalidModel, NonFiniteValues, PayloadTooLarge
from fedn.logs import configure_logging
from fedn.metrics import REJECT_REASONS, CombinerMetrics, ReducerMetrics, exposition, reject_reason


def _samples(registry) -> dict[tuple[str, tuple], float]:
    text = exposition(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (PayloadTooLarge("x"), "too_large"),
        (ChecksumMismatch("x"), "checksum"),
        (NonFiniteValues("x"), "non_finite"),
        (InvalidModel("x"), "invalid_model"),
        (InvalidArgument("x"), "invalid_argument"),
        (FednError("x"), "other"),
    ],
)
def test_every_refusal_maps_to_one_fixed_reason(exc, reason):
    assert reject_reason(exc) == reason
    assert reason in REJECT_REASONS


def test_both_registries_parse_and_start_with_every_label_at_zero():
    combiner, reducer = _samples(CombinerMetrics().registry), _samples(ReducerMetrics().registry)
    for reason in REJECT_REASONS:
        assert combiner[("fedn_combiner_updates_rejected_total", (("reason", reason),))] == 0
    assert reducer[("fedn_reducer_rounds_total", (("mode", "async"), ("outcome", "failed")))] == 0


def test_updates_are_counted_as_they_fold_or_are_refused_not_at_the_result(clock):
    metrics = CombinerMetrics()
    ctx = RunContext("c", None, None, None, clock, metrics=metrics)  # nothing folded: no store, no clients used
    tally = Tally(metrics=metrics)
    tally.reject("a", NonFiniteValues("w has NaN"))
    tally.reject("b", NonFiniteValues("w has NaN"))
    tally.reject("c", PayloadTooLarge("too big"))
    tally.accept()
    samples = _samples(metrics.registry)  # while the round still runs
    assert samples[("fedn_combiner_updates_rejected_total", (("reason", "non_finite"),))] == 2
    assert samples[("fedn_combiner_updates_rejected_total", (("reason", "too_large"),))] == 1
    assert samples[("fedn_combiner_updates_accepted_total", ())] == 1

    result = asyncio.run(
        store_result(ctx, "r1", None, num_selected=3, tally=tally, metrics=_NoMetrics(), client_ids=[], deadline=0.0)
    )

    samples = _samples(metrics.registry)
    assert result.num_rejected == 3
    assert samples[("fedn_combiner_updates_rejected_total", (("reason", "non_finite"),))] == 2  # not again
    assert samples[("fedn_combiner_updates_accepted_total", ())] == 1
    assert samples[("fedn_combiner_round_seconds_count", ())] == 1


def test_a_tally_without_metrics_counts_nowhere():
    """An evaluation round's refused reports are not updates: its tally has no metrics."""
    metrics = CombinerMetrics()
    Tally().reject("a", InvalidArgument("bad"))
    assert _samples(metrics.registry)[("fedn_combiner_updates_rejected_total", (("reason", "invalid_argument"),))] == 0


def test_taking_a_tally_carries_its_reasons_and_leaves_an_empty_one():
    metrics = CombinerMetrics()
    tally = Tally(metrics=metrics)
    tally.reject("a", InvalidModel("bad shape"))
    taken = tally.take()
    assert taken.rejected == {"invalid_model": 1} and taken.num_rejected == 1
    assert not tally.rejected and tally.num_rejected == 0
    assert tally.metrics is metrics and taken.metrics is metrics


def test_reducer_rounds_are_labelled_only_from_fixed_sets():
    metrics = ReducerMetrics()
    metrics.round_ended("sync", "done", 1.5)
    metrics.round_ended("client-123", "weird", None)  # never a label value from outside the sets
    samples = _samples(metrics.registry)
    assert samples[("fedn_reducer_rounds_total", (("mode", "sync"), ("outcome", "done")))] == 1
    assert samples[("fedn_reducer_rounds_total", (("mode", "sync"), ("outcome", "failed")))] == 1
    assert {labels for name, labels in samples if name == "fedn_reducer_rounds_total"} == {
        (("mode", m), ("outcome", o)) for m in ("sync", "async") for o in ("done", "failed")
    }


class _NoMetrics:
    def summary(self) -> dict:
        return {}


@pytest.fixture
def clock():
    from fedn.clock import ManualClock

    return ManualClock()


@pytest.fixture
def json_log():
    stream = io.StringIO()
    configure_logging("INFO", service="combiner-a", stream=stream, log_format="json", max_arg_chars=50)
    yield stream
    configure_logging("WARNING", stream=io.StringIO(), log_format="text")


def test_json_lines_parse_and_keep_the_bounds_and_escaping_of_text_lines(json_log):
    log = logging.getLogger("fedn.test")
    log.info("client %s sent %d bytes", "evil\nFAKE 00:00:00 ERROR forged\x1b[2J" + "x" * 100, 7)
    try:
        raise ValueError("boom\nline two")
    except ValueError:
        log.exception("failed")

    lines = json_log.getvalue().splitlines()
    first, second = (json.loads(line) for line in lines)
    assert len(lines) == 2  # the newline in the value did not start a line
    assert set(first) == {"time", "level", "logger", "message", "service"}
    assert first["level"] == "INFO" and first["logger"] == "fedn.test" and first["service"] == "combiner-a"
    assert first["time"].endswith("+00:00") and "T" in first["time"]
    assert "\\n" in first["message"] and "\n" not in first["message"] and "\x1b" not in first["message"]
    assert "…(+" in first["message"] and first["message"].endswith("sent 7 bytes")
    assert second["exc"].endswith("ValueError: boom\nline two")  # a traceback keeps its lines, as in text


def test_an_unknown_log_format_writes_text_and_says_so(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setenv("FEDN_LOG_FORMAT", "yaml")
    configure_logging("INFO", stream=stream)
    try:
        assert "unknown log format 'yaml'" in stream.getvalue()
        assert not stream.getvalue().lstrip().startswith("{")
    finally:
        configure_logging("WARNING", stream=io.StringIO(), log_format="text")

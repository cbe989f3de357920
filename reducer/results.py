"""What the reducer accepts from a combiner's RoundResult, and what of it a round record keeps.

The reducer computes what it expects itself (DESIGN §9): the round (or async flush) it asked for,
the combiner it called, and the partial key it derives for them (:func:`fedn.models.partial_key`);
a result that says otherwise, or whose weight or metrics are out of bounds, is that combiner's
failure and its partial is never read. What a result brings into a round record (failures, metrics)
is bounded so a round document stays far below a store's limit (MongoDB: 16 MB).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping

from fedn.errors import FednError
from fedn.models import partial_key
from fedn.records import ClientFailureRecord, MetricSummary, RoundResult
from fedn.store.validation import clip

__all__ = [
    "MAX_ERROR_CHARS",
    "MAX_METRICS",
    "MAX_METRIC_NAME_CHARS",
    "MAX_ROUND_FAILURES",
    "ResultRefused",
    "bound_failures",
    "bound_metrics",
    "check_result",
]

# a round document: about MAX_ROUND_FAILURES x (MAX_ERROR_CHARS + two ids) + MAX_METRICS summaries < 1 MB
MAX_ROUND_FAILURES = 1000
"""Failures a round record lists; the rest are counted in one last entry."""
MAX_ERROR_CHARS = 500
"""Characters of one failure's error kept in a round record."""
MAX_METRICS = 64
"""Metric names a combiner may report in one result, and a round record keeps."""
MAX_METRIC_NAME_CHARS = 64
_MAX_ID_CHARS = 128


class ResultRefused(FednError):
    """A combiner's result is not what the reducer asked for, or is out of bounds: that combiner's
    failure, its partial not merged."""


def check_result(
    result: RoundResult, *, round_id: str, combiner_id: str, max_num_examples: float, max_clients: int
) -> RoundResult:
    """``result`` if it is what round (or flush) ``round_id`` asked of ``combiner_id``: that round,
    that combiner, the partial key the reducer derives for them, a finite weight of at most
    ``num_updates x max_num_examples``, at most MAX_METRICS finite metrics and ``max_clients`` client
    ids. ResultRefused (naming the combiner and the problem) otherwise."""
    if problem := _problem(result, round_id, combiner_id, max_num_examples, max_clients):
        raise ResultRefused(f"combiner {combiner_id} {problem}: not merged")
    return result


def _problem(result: RoundResult, round_id: str, combiner_id: str, max_num_examples: float, max_clients: int) -> str:
    expected_key = partial_key(round_id, combiner_id)
    if result.combiner_id != combiner_id:
        return f"returned a result as combiner {clip(result.combiner_id)!r}"
    if result.round_id != round_id:
        return f"returned a result for round {clip(result.round_id)}, not {round_id}"
    if result.partial_key and result.partial_key != expected_key:
        return f"returned partial key {clip(result.partial_key)!r}, not {expected_key!r}"
    counts = (result.num_updates, result.num_selected, result.num_rejected)
    if min(counts) < 0 or (result.partial_key and result.num_updates < 1):
        return f"returned counts {counts} (updates, selected, rejected) with partial {clip(result.partial_key)!r}"
    weight, cap = result.total_weight, result.num_updates * max_num_examples
    if not (math.isfinite(weight) and 0 <= weight <= cap):
        return (
            f"returned total_weight {weight!r} for {result.num_updates} updates "
            f"(at most {result.num_updates} x max_num_examples {max_num_examples:g})"
        )
    if len(result.metrics) > MAX_METRICS:
        return f"returned {len(result.metrics)} metrics (at most {MAX_METRICS})"
    for name, summary in result.metrics.items():
        if len(name) > MAX_METRIC_NAME_CHARS:
            return f"returned a metric name of {len(name)} characters (at most {MAX_METRIC_NAME_CHARS})"
        if not all(math.isfinite(v) for v in (summary.mean, summary.min, summary.max)) or summary.count < 0:
            return f"returned metric {clip(name)!r} that is not finite"
        if not 0 <= summary.weight <= weight * (1 + 1e-9) + 1e-9:  # its examples are among the result's
            return f"returned metric {clip(name)!r} with weight {summary.weight!r}, more than total_weight {weight!r}"
    if len(result.client_ids) > max_clients:
        return f"returned {len(result.client_ids)} client_ids (at most max_clients_per_combiner {max_clients})"
    return ""


def bound_failures(failures: Iterable[ClientFailureRecord]) -> list[ClientFailureRecord]:
    """At most MAX_ROUND_FAILURES failures, each with ids and error clipped, and one last entry that
    counts those left out: what a round record keeps, whatever its combiners reported."""
    kept: list[ClientFailureRecord] = []
    left_out = 0
    for failure in failures:
        if len(kept) >= MAX_ROUND_FAILURES:
            left_out += 1
            continue
        error = failure.error
        if len(error) > MAX_ERROR_CHARS:
            error = error[: MAX_ERROR_CHARS - 3] + "..."
        client_id, combiner_id = failure.client_id[:_MAX_ID_CHARS], failure.combiner_id[:_MAX_ID_CHARS]
        kept.append(ClientFailureRecord(client_id=client_id, combiner_id=combiner_id, error=error))
    if left_out:
        kept.append(ClientFailureRecord(client_id="", combiner_id="", error=f"{left_out} more failures not listed"))
    return kept


def bound_metrics(metrics: Mapping[str, MetricSummary], results: Iterable[RoundResult]) -> dict[str, MetricSummary]:
    """At most MAX_METRICS of a round's merged ``metrics``: those most of its ``results`` reported."""
    if len(metrics) <= MAX_METRICS:
        return dict(metrics)
    seen = Counter(name for result in results for name in result.metrics)
    keep = sorted(metrics, key=lambda name: (-seen[name], name))[:MAX_METRICS]
    return {name: metrics[name] for name in keep}

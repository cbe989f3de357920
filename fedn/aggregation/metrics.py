"""Summaries of per-client scalar metrics: weighted mean, min, max, count; mergeable across combiners."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from fedn.records import MetricSummary

__all__ = ["MetricsAccumulator", "merge_metric_summaries"]


class MetricsAccumulator:
    """Folds ``{name: value}`` metrics weighted by ``num_examples``; O(number of metric names)."""

    def __init__(self) -> None:
        self._sum: dict[str, float] = {}
        self._weight: dict[str, float] = {}
        self._min: dict[str, float] = {}
        self._max: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def add(self, metrics: Mapping[str, float], weight: float) -> None:
        for name, raw in metrics.items():
            value = float(raw)
            if not math.isfinite(value):
                continue  # a non-finite metric is dropped, not allowed to poison the mean
            self._sum[name] = self._sum.get(name, 0.0) + weight * value
            self._weight[name] = self._weight.get(name, 0.0) + weight
            self._min[name] = min(self._min.get(name, value), value)
            self._max[name] = max(self._max.get(name, value), value)
            self._count[name] = self._count.get(name, 0) + 1

    def summary(self) -> dict[str, MetricSummary]:
        return {
            name: MetricSummary(
                mean=self._sum[name] / self._weight[name] if self._weight[name] > 0 else 0.0,
                min=self._min[name],
                max=self._max[name],
                count=self._count[name],
                weight=self._weight[name],
            )
            for name in self._sum
        }


def merge_metric_summaries(parts: Iterable[tuple[Mapping[str, MetricSummary], float]]) -> dict[str, MetricSummary]:
    """Merge per-combiner summaries, each weighted by the examples behind it (``MetricSummary.weight``; a
    summary that does not say is weighted by its combiner's total weight, the part's second item)."""
    total: dict[str, list[float]] = {}
    out: dict[str, MetricSummary] = {}
    for summaries, combiner_weight in parts:
        for name, s in summaries.items():
            weight = s.weight if s.weight > 0 else combiner_weight
            acc = total.setdefault(name, [0.0, 0.0])
            acc[0] += s.mean * weight
            acc[1] += weight
            prev = out.get(name)
            out[name] = MetricSummary(
                mean=0.0,
                min=s.min if prev is None else min(prev.min, s.min),
                max=s.max if prev is None else max(prev.max, s.max),
                count=s.count + (prev.count if prev else 0),
            )
    for name, (weighted, weight) in total.items():
        out[name] = out[name].model_copy(update={"mean": weighted / weight if weight > 0 else 0.0, "weight": weight})
    return out

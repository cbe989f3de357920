"""Aggregation math: pure functions and small classes over named arrays, no I/O."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedn.aggregation.metrics import MetricsAccumulator, merge_metric_summaries
from fedn.aggregation.weighted_mean import Partial, WeightedMean, merge_partials
from fedn.codec import NamedArrays
from fedn.errors import InvalidArgument

__all__ = [
    "AGGREGATORS",
    "MetricsAccumulator",
    "Partial",
    "WeightedMean",
    "cast_like",
    "get_aggregator",
    "merge_metric_summaries",
    "merge_partials",
]

# name -> aggregator class run at each combiner; more arrive with the strategies issue.
AGGREGATORS: dict[str, type[WeightedMean]] = {"fedavg": WeightedMean}


def get_aggregator(name: str) -> type[WeightedMean]:
    """The aggregator class registered as ``name``; InvalidArgument names the known ones."""
    try:
        return AGGREGATORS[name]
    except KeyError:
        known = ", ".join(sorted(AGGREGATORS))
        raise InvalidArgument(f"unknown aggregator {name!r}; known: {known}") from None


def cast_like(arrays: Mapping[str, np.ndarray], like: Mapping[str, np.ndarray]) -> NamedArrays:
    """Cast float64 aggregates back to the dtypes of ``like`` (integers are rounded)."""
    out: NamedArrays = {}
    for name, ref in like.items():
        a = arrays[name]
        dtype = np.asarray(ref).dtype
        out[name] = (np.rint(a) if dtype.kind in "iub" else a).astype(dtype)
    return out

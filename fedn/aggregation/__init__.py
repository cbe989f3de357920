"""Aggregation math: pure functions and small classes over named arrays, no I/O."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib.metadata import entry_points

import numpy as np
from pydantic import BaseModel, ValidationError

from fedn.aggregation.metrics import MetricsAccumulator, merge_metric_summaries
from fedn.aggregation.robust import CoordinateMedian, Krum, TrimmedMean
from fedn.aggregation.staleness import staleness_weight
from fedn.aggregation.weighted_mean import Partial, PartialMerge, WeightedMean, merge_partials, partial_manifest
from fedn.codec import NamedArrays, TensorSpec
from fedn.errors import InvalidArgument, validation_problem

__all__ = [
    "AGGREGATORS",
    "CoordinateMedian",
    "Krum",
    "MetricsAccumulator",
    "Partial",
    "PartialMerge",
    "TrimmedMean",
    "WeightedMean",
    "add_delta",
    "aggregator_config",
    "cast_like",
    "get_aggregator",
    "make_aggregator",
    "merge_metric_summaries",
    "merge_partials",
    "partial_manifest",
    "staleness_weight",
]

logger = logging.getLogger(__name__)

# name -> aggregation rule run at each combiner. Each takes (manifest, config) and offers
# validate/add/partial; Config is a pydantic model of its parameters.
AGGREGATORS: dict[str, type] = {
    "fedavg": WeightedMean,
    "median": CoordinateMedian,
    "trimmed_mean": TrimmedMean,
    "krum": Krum,
}


def _plugins(group: str, table: dict[str, type]) -> dict[str, type]:
    """Built-ins plus the classes other packages registered under entry-point ``group``.

    Loaded once, on first use; a plug-in that fails to import is logged and left out, and a plug-in
    may not replace a built-in name.
    """
    found = dict(table)
    for ep in entry_points(group=group):
        if ep.name in table:
            logger.warning("plug-in %s=%s ignored: %r is a built-in name", ep.name, ep.value, ep.name)
            continue
        try:
            found[ep.name] = ep.load()
        except Exception as exc:
            logger.warning("plug-in %s=%s could not be loaded: %s", ep.name, ep.value, exc)
    return found


@lru_cache(maxsize=1)
def _aggregators() -> dict[str, type]:
    return _plugins("fedn.aggregators", AGGREGATORS)


def get_aggregator(name: str) -> type:
    """The aggregator class registered as ``name`` (built-in or plug-in); InvalidArgument names the known ones."""
    try:
        return _aggregators()[name]
    except KeyError:
        known = ", ".join(sorted(_aggregators()))
        raise InvalidArgument(f"unknown aggregator {name!r}; known: {known}") from None


def aggregator_config(name: str, config: Mapping[str, object] | None = None) -> BaseModel:
    """``config`` validated for aggregator ``name``; InvalidArgument says what is wrong."""
    cls = get_aggregator(name)
    try:
        return cls.Config.model_validate(dict(config or {}))
    except ValidationError as exc:
        raise validation_problem(exc, f"invalid config for aggregator {name!r}") from None


def make_aggregator(name: str, manifest: Sequence[TensorSpec], config: Mapping[str, object] | None = None):
    """A fresh aggregator for one round at one combiner."""
    return get_aggregator(name)(manifest, aggregator_config(name, config))


def add_delta(base: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> NamedArrays:
    """``base + delta`` in float64: where an async buffer's mean delta moves the global model to."""
    return {name: np.asarray(base[name], dtype=np.float64) + delta[name] for name in base}


def cast_like(arrays: Mapping[str, np.ndarray], like: Mapping[str, np.ndarray]) -> NamedArrays:
    """Cast float64 aggregates back to the dtypes of ``like`` (integers are rounded)."""
    out: NamedArrays = {}
    for name, ref in like.items():
        a = arrays[name]
        dtype = np.asarray(ref).dtype
        out[name] = (np.rint(a) if dtype.kind in "iub" else a).astype(dtype)
    return out

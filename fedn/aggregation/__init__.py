"""Aggregation math: pure functions and small classes over named arrays, no I/O."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib.metadata import entry_points

import numpy as np
from pydantic import BaseModel, ValidationError

from fedn.aggregation.aggregator import Aggregator, AggregatorBase, missing_members
from fedn.aggregation.metrics import MetricsAccumulator, merge_metric_summaries
from fedn.aggregation.robust import CoordinateMedian, Krum, TrimmedMean
from fedn.aggregation.staleness import staleness_weight
from fedn.aggregation.weighted_mean import Partial, PartialMerge, WeightedMean, merge_partials, partial_manifest
from fedn.codec import NamedArrays, TensorSpec
from fedn.errors import InvalidArgument, validation_problem

__all__ = [
    "AGGREGATORS",
    "Aggregator",
    "AggregatorBase",
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

# name -> aggregation rule run at each combiner (see fedn.aggregation.aggregator for the interface)
AGGREGATORS: dict[str, type[Aggregator]] = {
    "fedavg": WeightedMean,
    "median": CoordinateMedian,
    "trimmed_mean": TrimmedMean,
    "krum": Krum,
}


def _plugins(group: str, table: dict[str, type[Aggregator]]) -> dict[str, type[Aggregator]]:
    """Built-ins plus the classes other packages registered under entry-point ``group``.

    Loaded once, on first use; a plug-in that fails to import or lacks part of the Aggregator
    interface is logged and left out, and a plug-in may not replace a built-in name.
    """
    found = dict(table)
    for ep in entry_points(group=group):
        if ep.name in table:
            logger.warning("plug-in %s=%s ignored: %r is a built-in name", ep.name, ep.value, ep.name)
            continue
        try:
            cls = ep.load()
        except Exception as exc:
            logger.warning("plug-in %s=%s could not be loaded: %s", ep.name, ep.value, exc)
            continue
        missing = missing_members(cls) if isinstance(cls, type) else ["a class"]
        if missing:
            logger.warning("plug-in %s=%s ignored: not an Aggregator (lacks %s)", ep.name, ep.value, ", ".join(missing))
            continue
        found[ep.name] = cls
    return found


@lru_cache(maxsize=1)
def _aggregators() -> dict[str, type[Aggregator]]:
    return _plugins("fedn.aggregators", AGGREGATORS)


def get_aggregator(name: str) -> type[Aggregator]:
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


def make_aggregator(
    name: str, manifest: Sequence[TensorSpec], config: Mapping[str, object] | None = None
) -> Aggregator:
    """A fresh aggregator for one round at one combiner."""
    return get_aggregator(name)(manifest, aggregator_config(name, config))


def add_delta(base: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> NamedArrays:
    """``base + delta`` in float64: where an async buffer's mean delta moves the global model to."""
    return {name: np.asarray(base[name], dtype=np.float64) + delta[name] for name in base}


def cast_like(arrays: Mapping[str, np.ndarray], like: Mapping[str, np.ndarray]) -> NamedArrays:
    """Cast float64 aggregates back to the dtypes of ``like``, saturating at the target's range.

    Integers are rounded to the nearest and clipped to the dtype's range (uint8 -1 is 0, not 255;
    bool is the range 0..1). Floats narrower than the aggregate are clipped to ``±finfo.max``, so a
    finite value stays finite (float16 7e4 is 65504, not inf); infinities and NaN pass through.
    """
    out: NamedArrays = {}
    for name, ref in like.items():
        out[name] = _saturating_cast(np.asarray(arrays[name]), np.asarray(ref).dtype)
    return out


def _saturating_cast(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "iub":
        lo, hi = (0, 1) if dtype.kind == "b" else (np.iinfo(dtype).min, np.iinfo(dtype).max)
        top = float(hi)
        if int(top) > hi:  # int64's max is not a float64: 2**63 would wrap round
            top = float(np.nextafter(top, -np.inf))
        return np.asarray(np.clip(np.rint(a), float(lo), top)).astype(dtype)
    with np.errstate(over="ignore"):
        out = a.astype(dtype)
    narrower = dtype.kind == "f" and a.dtype.kind in "fiu" and float(np.finfo(dtype).max) < _largest(a.dtype)
    if narrower and not np.isfinite(out).all():
        overflowed = np.isinf(out) & np.isfinite(a)
        if overflowed.any():
            out[overflowed] = np.copysign(np.finfo(dtype).max, a[overflowed])
    return out


def _largest(dtype: np.dtype) -> float:
    return float(np.finfo(dtype).max if dtype.kind == "f" else np.iinfo(dtype).max)

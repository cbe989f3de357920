"""Robust aggregation rules, run at each combiner: coordinate-wise median, trimmed mean, (Multi-)Krum.

Unlike FedAvg these need all of a round's updates at once, so they keep them up to ``max_updates``;
past it an update is refused with a clear error. Each update is kept as one flat float64 vector:
8 bytes per parameter and update, twice a float32 model's size, so a combiner may hold
``8 * max_updates`` bytes per parameter (``max_updates`` is the bound to set). Computing the
estimate needs one more such stack: ``partial()`` copies the updates into it; ``finish()`` (what a
combiner calls at the end of a round) moves them there instead for median and trimmed mean, which
sort it in place, while Krum keeps the originals to return the chosen ones exactly.

Values are computed in float64, which holds float16/float32/float64, int8-32, uint8 and bool updates
exactly; int64 values beyond ±2^53 are rounded to the nearest float64 (a relative error below 1.2e-16),
as in FedAvg's float64 sums. Finite updates give a finite partial, even near float64's largest value.

Robustness holds per combiner: the partial a combiner reports resists a minority of bad updates
*among its own clients*; the reducer then merges partials by weight. Within a combiner the rules
ignore the updates' weights (every update counts once); the partial's weight is the total weight of
all updates the combiner accepted, so combiners still count in proportion to their data.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedn.aggregation.aggregator import AggregatorBase
from fedn.aggregation.weighted_mean import Partial
from fedn.codec import NamedArrays, TensorSpec, check_finite, check_manifest, manifest_of
from fedn.errors import InvalidArgument, PayloadTooLarge

__all__ = ["CoordinateMedian", "Krum", "TrimmedMean"]


def _mean_rows(rows: np.ndarray) -> np.ndarray:
    """Mean over axis 0 of finite float64 rows, finite even where their sum overflows."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean = rows.mean(axis=0)
    if not np.isfinite(mean).all():  # rare: redo scaled by a power of two, which is exact
        shift = len(rows).bit_length() + 1
        mean = np.ldexp(np.ldexp(rows, -shift).mean(axis=0), shift)
    return mean


class _StackedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_updates: int = Field(256, ge=1, le=100_000, description="updates one combiner may hold in a round")


class _StackedRule(AggregatorBase, ABC):
    """Keeps each update flattened; subclasses turn the stack into one estimate."""

    Config: type[_StackedConfig] = _StackedConfig
    _keeps_updates: ClassVar[bool] = False  # whether ``_estimate`` reads ``self._vectors`` too

    def __init__(self, manifest: Sequence[TensorSpec], config: _StackedConfig | None = None) -> None:
        super().__init__(manifest, config)
        self._sizes = [spec.size for spec in self._manifest]
        self._vectors: list[np.ndarray | None] = []
        self._weights: list[float] = []

    @property
    def count(self) -> int:
        return len(self._vectors)

    @property
    def total_weight(self) -> float:
        return float(sum(self._weights))

    def validate(self, arrays: Mapping[str, np.ndarray], weight: float) -> None:
        if not np.isfinite(weight) or weight <= 0:
            raise InvalidArgument(f"update weight must be a positive finite number, got {weight}")
        check_manifest(self._manifest, manifest_of(arrays), ordered=False)
        for name, array in arrays.items():
            check_finite(name, array)
        if self.count >= self.config.max_updates:
            raise PayloadTooLarge(
                f"{type(self).__name__} holds at most {self.config.max_updates} updates per combiner and round "
                "(raise max_updates in the aggregator config, or add combiners)"
            )

    def add(self, arrays: Mapping[str, np.ndarray], weight: float) -> None:
        self.validate(arrays, weight)
        flat = np.concatenate([np.asarray(arrays[s.name], dtype=np.float64).reshape(-1) for s in self._manifest])
        self._vectors.append(flat)
        self._weights.append(float(weight))

    @abstractmethod
    def _estimate(self, stack: np.ndarray) -> np.ndarray:
        """One float64 vector from the ``(updates, parameters)`` stack, which it may overwrite."""

    def _stack(self, consume: bool) -> np.ndarray:
        if not self._vectors:
            raise InvalidArgument("no updates to aggregate")
        if self._vectors[0] is None:
            raise InvalidArgument("finish() was called already: the updates are gone")
        stack = np.empty((len(self._vectors), sum(self._sizes)), dtype=np.float64)
        for i, vector in enumerate(self._vectors):
            stack[i] = vector
            if consume:
                self._vectors[i] = None  # one copy of each update at a time
        return stack

    def _to_partial(self, flat: np.ndarray) -> Partial:
        arrays: NamedArrays = {}
        offset = 0
        for spec, size in zip(self._manifest, self._sizes, strict=True):
            arrays[spec.name] = flat[offset : offset + size].reshape(spec.shape)
            offset += size
        return Partial(arrays=arrays, total_weight=self.total_weight, count=self.count)

    def partial(self) -> Partial:
        return self._to_partial(self._estimate(self._stack(consume=False)))

    def finish(self) -> Partial:
        """Like :meth:`partial`, without a second copy of the updates; the rule is spent afterwards."""
        return self._to_partial(self._estimate(self._stack(consume=not self._keeps_updates)))


class CoordinateMedian(_StackedRule):
    """Each coordinate is the median of the updates' values (Yin et al., 2018), unweighted."""

    def _estimate(self, stack):
        n = len(stack)
        middle = sorted({(n - 1) // 2, n // 2})
        stack.partition(middle, axis=0)
        return _mean_rows(stack[middle[0] : middle[-1] + 1])


class _TrimmedConfig(_StackedConfig):
    beta: float = Field(
        0.1, ge=0, lt=0.5, description="share trimmed from each end, per coordinate: floor(beta·n) values"
    )


class TrimmedMean(_StackedRule):
    """Per coordinate, drop the ``⌊beta·n⌋`` highest and lowest values and average the rest, unweighted."""

    Config = _TrimmedConfig

    def _estimate(self, stack):
        k = int(self.config.beta * len(stack))
        stack.sort(axis=0)
        return _mean_rows(stack[k : len(stack) - k])


class _KrumConfig(_StackedConfig):
    f: int = Field(1, ge=0, description="Byzantine updates to tolerate; needs at least 2f+3 updates")
    m: int = Field(1, ge=1, description="updates averaged (1 = Krum, more = Multi-Krum); at most n - f")

    @model_validator(mode="after")
    def _m_fits(self) -> _KrumConfig:
        # n is only known when the round ends; it can never exceed max_updates
        if self.m + self.f > self.max_updates:
            raise ValueError(f"m + f = {self.m + self.f} exceeds max_updates = {self.max_updates}: m must be <= n - f")
        return self


class Krum(_StackedRule):
    """Blanchard et al., 2017: pick the update(s) closest to their n - f - 2 nearest neighbours.

    Multi-Krum (``m > 1``) averages the ``m`` best uniformly, whatever their weights.
    """

    Config = _KrumConfig
    _keeps_updates = True

    def _estimate(self, stack):
        n, f, m = len(stack), self.config.f, self.config.m
        if n < 2 * f + 3:
            raise InvalidArgument(f"Krum with f={f} needs at least {2 * f + 3} updates at a combiner, got {n}")
        if m > n - f:
            raise InvalidArgument(f"Multi-Krum with m={m} needs m <= n - f = {n - f} (f={f}, n={n} updates)")
        # Distances rank the same after scaling by a power of two (exact) and centring: squares then
        # stay below the number of parameters, and |a|² + |b|² - 2a·b cancels less.
        top = max(float(stack.max()), -float(stack.min()))
        if top > 0:
            np.ldexp(stack, -np.frexp(top)[1], out=stack)
        stack -= stack.mean(axis=0)
        sq = np.einsum("ij,ij->i", stack, stack)
        dist = sq[:, None] + sq[None, :] - 2.0 * (stack @ stack.T)
        np.fill_diagonal(dist, np.inf)
        scores = np.sort(dist, axis=1)[:, : n - f - 2].sum(axis=1)
        chosen = np.argsort(scores, kind="stable")[:m]
        return _mean_rows(np.stack([self._vectors[i] for i in chosen]))

"""Robust aggregation rules, run at each combiner: coordinate-wise median, trimmed mean, (Multi-)Krum.

Unlike FedAvg these need all of a round's updates at once, so they keep them (as one float32 vector
each) up to ``max_updates``; past it an update is refused with a clear error. Robustness therefore
holds per combiner: the partial a combiner reports resists a minority of bad updates *among its own
clients*; the reducer then merges partials by weight. The partial's weight is the total weight of all
updates the combiner accepted, so combiners still count in proportion to their data.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedn.aggregation.weighted_mean import Partial
from fedn.codec import NamedArrays, TensorSpec, check_finite, check_manifest, manifest_of
from fedn.errors import InvalidArgument, PayloadTooLarge

__all__ = ["CoordinateMedian", "Krum", "TrimmedMean"]


class _BufferedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_updates: int = Field(256, ge=1, le=100_000, description="updates one combiner may hold in a round")


class _Buffered(ABC):
    """Keeps each update flattened; subclasses turn the stack into one estimate."""

    Config: type[_BufferedConfig] = _BufferedConfig

    def __init__(self, manifest: Sequence[TensorSpec], config: _BufferedConfig | None = None) -> None:
        self.config = config or self.Config()
        self._manifest = list(manifest)
        self._sizes = [spec.size for spec in self._manifest]
        self._vectors: list[np.ndarray] = []
        self._weights: list[float] = []

    @property
    def manifest(self) -> list[TensorSpec]:
        return list(self._manifest)

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
        flat = np.concatenate([np.asarray(arrays[s.name], dtype=np.float32).reshape(-1) for s in self._manifest])
        self._vectors.append(flat)
        self._weights.append(float(weight))

    @abstractmethod
    def _estimate(self, stack: np.ndarray) -> np.ndarray:
        """One vector from the ``(updates, parameters)`` stack."""

    def partial(self) -> Partial:
        if not self._vectors:
            raise InvalidArgument("no updates to aggregate")
        flat = self._estimate(np.stack(self._vectors)).astype(np.float64)
        arrays: NamedArrays = {}
        offset = 0
        for spec, size in zip(self._manifest, self._sizes, strict=True):
            arrays[spec.name] = flat[offset : offset + size].reshape(spec.shape)
            offset += size
        return Partial(arrays=arrays, total_weight=self.total_weight, count=self.count)


class CoordinateMedian(_Buffered):
    """Each coordinate is the median of the updates' values (Yin et al., 2018)."""

    def _estimate(self, stack):
        return np.median(stack, axis=0)


class _TrimmedConfig(_BufferedConfig):
    beta: float = Field(0.1, ge=0, lt=0.5, description="share trimmed from each end, per coordinate")


class TrimmedMean(_Buffered):
    """Per coordinate, drop the ``beta`` share of highest and of lowest values and average the rest."""

    Config = _TrimmedConfig

    def _estimate(self, stack):
        k = int(self.config.beta * len(stack))
        ordered = np.sort(stack, axis=0)
        return ordered[k : len(stack) - k].mean(axis=0)


class _KrumConfig(_BufferedConfig):
    f: int = Field(1, ge=0, description="Byzantine updates to tolerate; needs at least 2f+3 updates")
    m: int = Field(1, ge=1, description="updates averaged (1 = Krum, more = Multi-Krum)")


class Krum(_Buffered):
    """Blanchard et al., 2017: pick the update(s) closest to their n - f - 2 nearest neighbours."""

    Config = _KrumConfig

    def _estimate(self, stack):
        n, f, m = len(stack), self.config.f, self.config.m
        if n < 2 * f + 3:
            raise InvalidArgument(f"Krum with f={f} needs at least {2 * f + 3} updates at a combiner, got {n}")
        sq = np.einsum("ij,ij->i", stack, stack, dtype=np.float64)
        dist = sq[:, None] + sq[None, :] - 2.0 * (stack.astype(np.float64) @ stack.T.astype(np.float64))
        np.fill_diagonal(dist, np.inf)
        nearest = np.sort(dist, axis=1)[:, : n - f - 2]
        scores = nearest.sum(axis=1)
        chosen = np.argsort(scores, kind="stable")[: min(m, n)]
        return stack[chosen].astype(np.float64).mean(axis=0)

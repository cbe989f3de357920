"""An example aggregator plug-in: a weighted mean of updates clipped to a maximum norm.

Registered in pyproject.toml::

    [project.entry-points."fedn.aggregators"]
    clipped_mean = "examples.plugins.clipped_mean:ClippedMean"

and then used like any built-in rule: ``fedn session start --aggregator clipped_mean
--aggregator-config '{"max_norm": 10}'``. An aggregator is a class taking ``(manifest, config)``
with a nested pydantic ``Config``, implementing the ``Aggregator`` protocol of
``fedn/aggregation/aggregator.py``; a registered class lacking part of it is logged and left out
when the registry is first loaded. Subclassing ``WeightedMean``, as here, provides all of it.
Here the clipping is on each update's distance from the origin of its own values, which bounds
what any single client can contribute; it streams like FedAvg, holding one model in memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import Field

from fedn.aggregation import WeightedMean
from fedn.codec import TensorSpec

__all__ = ["ClippedMean"]


class ClippedMean(WeightedMean):
    class Config(WeightedMean.Config):
        max_norm: float = Field(100.0, gt=0, description="updates with a larger L2 norm are scaled down to it")

    def __init__(self, manifest: Sequence[TensorSpec], config: Config | None = None) -> None:
        super().__init__(manifest, config or self.Config())

    def add(self, arrays: Mapping[str, np.ndarray], weight: float) -> None:
        self.validate(arrays, weight)
        norm = float(np.sqrt(sum(np.sum(np.square(np.asarray(a, dtype=np.float64))) for a in arrays.values())))
        scale = min(1.0, self.config.max_norm / norm) if norm > 0 else 1.0
        super().add({k: (np.asarray(v) * scale).astype(np.asarray(v).dtype) for k, v in arrays.items()}, weight)

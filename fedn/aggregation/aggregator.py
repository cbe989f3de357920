"""The one interface of an aggregation rule run at a combiner (built-in or plug-in).

A rule is a class taking ``(manifest, config)``, with a nested pydantic ``Config`` of its
parameters. Per round and combiner one instance folds the accepted updates and emits one
:class:`Partial`. Two class attributes tell its callers what it can
do, so nobody probes it:

- ``mergeable``: partials of disjoint sets of updates merge by weight into the partial of their
  union (true of a weighted mean, false of a median). The simulator then splits a combiner's clients
  over worker processes.
- ``reads_spooled``: ``add`` reads each tensor through ``np.asarray``/``flat_slices``, so a combiner
  may hand it a large update still on disk (``SpooledTensor``); otherwise it gets numpy arrays.

Plug-ins subclass :class:`AggregatorBase` (or a built-in rule) to get the defaults; a registered
class that lacks part of the interface is refused when the registry is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict

from fedn.codec import NamedArrays, TensorSpec

__all__ = ["Aggregator", "AggregatorBase", "Partial", "missing_members"]


@dataclass(frozen=True)
class Partial:
    """What an aggregator emits: a weighted mean of some updates, with the weight it stands for."""

    arrays: NamedArrays
    total_weight: float
    count: int


@runtime_checkable
class Aggregator(Protocol):
    """One combiner's rule for one round: validate and fold updates, then emit a partial."""

    Config: ClassVar[type[BaseModel]]
    mergeable: ClassVar[bool]
    reads_spooled: ClassVar[bool]

    @property
    def count(self) -> int:
        """Updates folded so far."""
        ...

    @property
    def total_weight(self) -> float:
        """Sum of the weights (``num_examples``) of the updates folded so far."""
        ...

    def validate(self, arrays: Mapping[str, np.ndarray], weight: float) -> None:
        """Raise (InvalidArgument and subclasses, PayloadTooLarge) if ``add`` would refuse this update."""
        ...

    def add(self, arrays: Mapping[str, np.ndarray], weight: float) -> None:
        """Fold one update; on error the state is unchanged."""
        ...

    def partial(self) -> Partial:
        """The aggregate so far; InvalidArgument if nothing was added."""
        ...

    def finish(self) -> Partial:
        """The final partial; the aggregator may be spent afterwards (saves a model copy)."""
        ...


class AggregatorBase:
    """Defaults for a rule: keeps nothing special, reads numpy arrays only, does not merge by weight."""

    mergeable: ClassVar[bool] = False
    reads_spooled: ClassVar[bool] = False

    class Config(BaseModel):
        """No parameters."""

        model_config = ConfigDict(extra="forbid")

    def __init__(self, manifest: Sequence[TensorSpec], config: BaseModel | None = None) -> None:
        self.config = config or self.Config()
        self._manifest = list(manifest)

    @property
    def manifest(self) -> list[TensorSpec]:
        return list(self._manifest)

    def finish(self) -> Partial:
        return self.partial()  # type: ignore[attr-defined]  # every rule defines partial()


_REQUIRED = ("Config", "mergeable", "reads_spooled", "count", "total_weight", "validate", "add", "partial", "finish")


def missing_members(cls: type) -> list[str]:
    """The parts of the :class:`Aggregator` interface ``cls`` lacks (empty if it is a rule)."""
    missing = [name for name in _REQUIRED if not hasattr(cls, name)]
    config = getattr(cls, "Config", None)
    if "Config" not in missing and not (isinstance(config, type) and issubclass(config, BaseModel)):
        missing.append("Config (a pydantic model)")
    return missing

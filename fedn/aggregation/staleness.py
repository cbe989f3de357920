"""Staleness in asynchronous aggregation (FedBuff, Nguyen et al., AISTATS 2022).

An update trained on global version ``b`` and folded when the combiner knows version ``v`` is
``s = v - b`` versions stale. Its delta is scaled by ``(1 + s) ** -exponent``; the paper's choice
is ``exponent = 0.5``, i.e. ``1/sqrt(1+s)``. ``exponent = 0`` folds stale updates at full weight.
"""

from __future__ import annotations

import math

from fedn.errors import InvalidArgument

__all__ = ["staleness_weight"]


def staleness_weight(staleness: int, exponent: float = 0.5) -> float:
    """The factor applied to an update ``staleness`` versions old."""
    if staleness < 0:
        raise InvalidArgument(f"staleness cannot be negative, got {staleness}")
    if not (math.isfinite(exponent) and exponent >= 0):
        raise InvalidArgument(f"staleness exponent must be a finite number >= 0, got {exponent}")
    return (1.0 + staleness) ** -exponent

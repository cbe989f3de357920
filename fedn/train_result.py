"""What a client's ``train`` must return, checked in one place for the client runtime and the simulator."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedn.codec import NamedArrays, TensorSpec

__all__ = ["check_evaluate_result", "check_train_result"]


def check_train_result(result: object, manifest: list[TensorSpec]) -> tuple[NamedArrays, float, dict[str, float]]:
    """Validate what ``train`` returned against the global model; raise ValueError saying what is wrong.

    Arrays come back in the manifest's order; a float array in another float dtype is cast back.
    """
    if not isinstance(result, tuple) or len(result) != 3:
        raise ValueError("train must return (params, num_examples, metrics)")
    params, num_examples, metrics = result
    if not isinstance(params, Mapping):
        raise ValueError(f"train returned params of type {type(params).__name__}, expected a dict of arrays")
    if len(params) != len(manifest) or not all(spec.name in params for spec in manifest):
        names = {spec.name for spec in manifest}
        missing, extra = sorted(names - set(params)), sorted(map(str, set(params) - names))
        raise ValueError(f"train returned other tensors than it received: missing {missing[:5]}, extra {extra[:5]}")
    out: NamedArrays = {}
    for spec in manifest:
        array = np.asarray(params[spec.name])
        if array.shape != spec.shape:
            raise ValueError(f"tensor {spec.name!r} has shape {array.shape}, expected {spec.shape}")
        want = np.dtype(spec.dtype)
        if array.dtype != want:
            if array.dtype.kind != want.kind:
                raise ValueError(f"tensor {spec.name!r} has dtype {array.dtype}, expected {want}")
            cast = array.astype(want)
            if want.kind in "iu" and not np.array_equal(cast, array):  # int64 -> int32 would wrap silently
                raise ValueError(f"tensor {spec.name!r} has {array.dtype} values outside {want}")
            array = cast
        out[spec.name] = array
    try:
        weight = float(num_examples)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int past float's range
        raise ValueError(f"num_examples must be a number, got {num_examples!r}") from None
    if not (weight > 0 and math.isfinite(weight)):
        raise ValueError(f"num_examples must be positive, got {num_examples!r}")
    if not isinstance(metrics, Mapping):
        raise ValueError("metrics must be a dict of name -> number")
    try:
        clean = {str(k): float(v) for k, v in metrics.items()}
    except (TypeError, ValueError, OverflowError):
        raise ValueError("metrics must be a dict of name -> number") from None
    return out, weight, clean


def check_evaluate_result(result: object) -> tuple[float, float, dict[str, float]]:
    """Validate what ``evaluate`` returned: ``(loss, num_examples, metrics)``, the loss finite, the example
    count positive; raise ValueError saying what is wrong. A NaN metric is left out, as in updates."""
    if not isinstance(result, tuple) or len(result) != 3:
        raise ValueError("evaluate must return (loss, num_examples, metrics)")
    loss, num_examples, metrics = result
    try:
        loss, weight = float(loss), float(num_examples)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(
            f"evaluate must return a number for loss and num_examples: {loss!r}, {num_examples!r}"
        ) from None
    if not math.isfinite(loss):
        raise ValueError(f"evaluate returned a loss of {loss}")
    if not (weight > 0 and math.isfinite(weight)):
        raise ValueError(f"num_examples must be positive, got {num_examples!r}")
    if not isinstance(metrics, Mapping):
        raise ValueError("metrics must be a dict of name -> number")
    try:
        clean = {str(k): float(v) for k, v in metrics.items()}
    except (TypeError, ValueError, OverflowError):
        raise ValueError("metrics must be a dict of name -> number") from None
    return loss, weight, {k: v for k, v in clean.items() if math.isfinite(v)}

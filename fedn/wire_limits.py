"""The bounds :mod:`fedn.wire` puts on what a peer sends: anything past them is refused with InvalidArgument
at decode, never truncated, so the core below the edge trusts its inputs (DESIGN §9)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from fedn.errors import InvalidArgument
from fedn.ids import check_text
from fedn.records import ConfigScalar, MetricSummary

__all__ = [
    "MAX_CLIENT_EVALUATIONS",
    "MAX_KEY_CHARS",
    "MAX_METRICS",
    "MAX_METRIC_KEY_CHARS",
    "MAX_NAME_CHARS",
    "MAX_TENSOR_DIM",
    "MAX_TENSOR_DIMS",
    "MAX_TENSOR_NAME_CHARS",
    "MAX_TIMEOUT_S",
    "check_count",
    "check_finite",
    "check_metric_summaries",
    "check_metrics",
    "check_model_sha256",
    "check_sha256",
    "config_from_proto",
    "config_to_proto",
]

MAX_TIMEOUT_S = 1e7  # 116 days
MAX_KEY_CHARS, MAX_NAME_CHARS = 128, 256  # config keys and aggregator names; client names
# Metrics are summed per name at the combiner and again at the reducer, and stored with every round:
# their number and names are bounded for every update and every combiner's result alike.
MAX_METRICS, MAX_METRIC_KEY_CHARS = 64, 64
# each client's own evaluation figures a combiner relays per evaluation round (all clients count in the
# summaries): bounds the combiner's memory and the RoundResult message, whatever the number of clients
MAX_CLIENT_EVALUATIONS = 500
MAX_TENSOR_NAME_CHARS, MAX_TENSOR_DIMS, MAX_TENSOR_DIM = 1024, 32, 1 << 40
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def check_finite(value: float, field: str) -> float:
    if not math.isfinite(value):
        raise InvalidArgument(f"{field} must be a finite number, not {value}")
    return value


def check_count(value: int, field: str) -> int:
    if value < 0:
        raise InvalidArgument(f"{field} must not be negative, got {value}")
    return int(value)


def check_sha256(digest: str, field: str = "sha256") -> str:
    if not _SHA256_RE.fullmatch(digest):
        raise InvalidArgument(f"{field} must be 64 lowercase hex digits")
    return digest


def check_model_sha256(digest: str) -> str:
    """A global model's expected digest: empty (the sender did not say) or a sha256."""
    return check_sha256(digest, "model_sha256") if digest else ""


def _check_metric_names(names: list[str]) -> None:
    if len(names) > MAX_METRICS:
        raise InvalidArgument(f"at most {MAX_METRICS} metrics may be sent, not {len(names)}")
    for name in names:
        check_text(name, "metric name", MAX_METRIC_KEY_CHARS, empty=False)


def check_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """An update's metrics, bounded; a NaN metric is common (a loss that diverged, an AUC with one
    class): it is left out and the update kept."""
    _check_metric_names(list(metrics))
    return {k: float(v) for k, v in metrics.items() if math.isfinite(v)}


def check_metric_summaries(summaries: Mapping[str, MetricSummary]) -> dict[str, MetricSummary]:
    """A combiner's metric summaries: bounded as an update's metrics, every number finite."""
    _check_metric_names(list(summaries))
    for name, s in summaries.items():
        for value in (s.mean, s.min, s.max):
            check_finite(value, f"metric {name}")
        check_count(s.count, f"metric {name} count")
        if not (math.isfinite(s.weight) and s.weight >= 0):
            raise InvalidArgument(f"metric {name} weight must be a finite number of at least 0, got {s.weight}")
    return dict(summaries)


def config_to_proto(config: Mapping[str, ConfigScalar], target) -> None:
    """Fill a ``map<string, ConfigValue>`` field from a dict of scalars."""
    for key, value in config.items():
        slot = target[key]
        if isinstance(value, bool):
            slot.bool_value = value
        elif isinstance(value, int):
            slot.int_value = value
        elif isinstance(value, float):
            slot.double_value = value
        elif isinstance(value, str):
            slot.string_value = value
        else:
            raise InvalidArgument(f"config value {key!r} must be bool, int, float or str, not {type(value).__name__}")


def config_from_proto(config, field: str = "config") -> dict[str, ConfigScalar]:
    """A ``map<string, ConfigValue>`` as a dict; InvalidArgument for a value with no kind, NaN or an infinity."""
    out: dict[str, ConfigScalar] = {}
    for key, value in config.items():
        check_text(key, f"{field} key", MAX_KEY_CHARS, empty=False)
        kind = value.WhichOneof("kind")
        if kind is None:
            raise InvalidArgument(f"{field}.{key} has no value (set one of double, int, string, bool)")
        scalar = getattr(value, kind)
        if kind == "double_value":
            check_finite(scalar, f"{field}.{key}")
        out[key] = scalar
    return out

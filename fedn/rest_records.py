"""Records as the REST API shows them: timestamps as ISO 8601 UTC strings, not epoch floats.

The stores and :mod:`fedn.records` keep seconds since the epoch (cheap to compare and sort); people
and other tools read ``2026-11-30T08:05:13.123456Z``. The reducer converts at its edge with
:func:`record_to_rest`, :class:`fedn.api_client.ReducerAPI` converts back with :func:`record_from_rest`,
so callers of either side keep the float fields. Microseconds are kept; finer digits are not.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel

from fedn.errors import InvalidArgument
from fedn.records import AuditEvent, ClientRecord, CombinerRecord, ModelRecord, Round, Session, TokenRecord

__all__ = ["TIMESTAMP_FIELDS", "epoch_seconds", "iso_utc", "record_from_rest", "record_to_rest"]

M = TypeVar("M", bound=BaseModel)

TIMESTAMP_FIELDS: dict[type[BaseModel], tuple[str, ...]] = {
    Session: ("created_at", "updated_at"),
    Round: ("created_at", "started_at", "finished_at"),
    ModelRecord: ("created_at",),
    ClientRecord: ("assigned_at", "last_seen"),
    CombinerRecord: ("registered_at", "last_seen"),
    AuditEvent: ("time",),
    TokenRecord: ("issued_at", "expires_at", "revoked_at"),
}
"""The fields of each record that are points in time (seconds since the epoch, UTC)."""


def iso_utc(seconds: float) -> str:
    """``seconds`` since the epoch as ISO 8601 in UTC with microseconds and a ``Z``."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def epoch_seconds(value: str | float | int) -> float:
    """An ISO 8601 time (with an offset or ``Z``) as seconds since the epoch; a number passes through
    (a reducer older than ISO timestamps). InvalidArgument for text that is not a time with a zone."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"not an ISO 8601 time: {str(value)[:60]!r}") from None
    if parsed.tzinfo is None:
        raise InvalidArgument(f"an ISO 8601 time needs a zone (Z or +hh:mm): {value[:60]!r}")
    return parsed.timestamp()


def record_to_rest(record: BaseModel) -> dict[str, Any]:
    """``record`` as JSON-ready data with its timestamps as ISO 8601 strings (None stays None)."""
    data = record.model_dump(mode="json")
    for name in TIMESTAMP_FIELDS.get(type(record), ()):
        if data.get(name) is not None:
            data[name] = iso_utc(data[name])
    return data


def record_from_rest(cls: type[M], data: dict[str, Any]) -> M:
    """The record of ``cls`` from its REST form (ISO strings or floats for its timestamps)."""
    if not isinstance(data, dict):
        raise InvalidArgument(f"expected a {cls.__name__} object, got {type(data).__name__}")
    data = dict(data)
    for name in TIMESTAMP_FIELDS.get(cls, ()):
        if data.get(name) is not None:
            data[name] = epoch_seconds(data[name])
    return cls.model_validate(data)

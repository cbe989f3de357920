"""What every backend checks at its edge: keys, pages, and stored documents read back into records.

A stored document that no longer validates (written by an older version, edited by hand, or stored
before a check existed) must not make every later read fail: ``list_*`` reports it once and skips
it, ``get_*`` refuses it with InvalidArgument, a permanent error, so no caller retries it forever.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from fedn.errors import InvalidArgument

__all__ = ["MAX_KEY_BYTES", "RecordReader", "check_key", "check_page", "check_time", "clip"]

logger = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)

MAX_KEY_BYTES = 1024  # S3's limit for a whole key
_MAX_SEGMENT_BYTES = 255  # a file name on common filesystems
_MAX_PAGE = 2**63 - 1  # SQLite's and BSON's largest integer
_MAX_REPORTED = 4096  # distinct unreadable records remembered, so each is logged once


def clip(value: object, limit: int = 120) -> str:
    """``value`` fit for one log line: control characters escaped, at most ``limit`` characters."""
    text = repr(value) if not isinstance(value, str) else repr(value)[1:-1]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_key(key: str) -> str:
    """``key`` if it names a blob the same way in every model store; InvalidArgument otherwise.

    Segments are separated by ``/``; none may be empty, ``.`` or ``..`` or longer than 255 bytes,
    the key at most 1024 bytes of UTF-8, with no control characters.
    """
    if not isinstance(key, str) or not _valid_key(key):
        raise InvalidArgument(f"invalid model key {clip(key)!r}")
    return key


def _valid_key(key: str) -> bool:
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    if not key or len(encoded) > MAX_KEY_BYTES or any(ord(ch) < 0x20 or ch == "\x7f" for ch in key):
        return False
    return all(part not in ("", ".", "..") and len(part.encode()) <= _MAX_SEGMENT_BYTES for part in key.split("/"))


def check_page(limit: int, offset: int) -> None:
    """InvalidArgument unless ``0 <= offset`` and ``0 <= limit`` fit in a signed 64-bit integer."""
    for name, value in (("limit", limit), ("offset", offset)):
        if not 0 <= value <= _MAX_PAGE:
            raise InvalidArgument(f"{name} must be between 0 and {_MAX_PAGE}, not {clip(value, 40)}")


def check_time(value: float | None, name: str) -> None:
    """InvalidArgument unless ``value`` is None or a finite number (a cursor or a cut-off time)."""
    if value is not None and not math.isfinite(value):
        raise InvalidArgument(f"{name} must be a finite number of seconds, not {clip(value, 40)}")


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(map(str, first["loc"])) or "document"
    return clip(f"{where}: {first['msg']}", 200)


class RecordReader:
    """Turns stored documents (JSON text or dicts) into records for one store instance.

    Each unreadable record is logged once per store instance (its kind, id and first error, never
    the document), so a caller that lists in a loop does not flood the log.
    """

    def __init__(self, backend: str) -> None:
        self._backend = backend
        self._reported: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def one(self, cls: type[T], kind: str, record_id: str, document: str | bytes | dict) -> T:
        """The record; InvalidArgument naming ``record_id`` if the stored document does not validate."""
        try:
            return _validate(cls, document)
        except ValidationError as exc:
            raise InvalidArgument(f"stored {kind} {clip(record_id)} does not validate: {_first_error(exc)}") from None

    def storable(self, record: BaseModel) -> None:
        """InvalidArgument if ``record`` would not read back the same from every backend: a NaN or an
        infinity (JSON writes it as ``null``, which no longer validates) or an integer beyond 64 bits
        (MongoDB cannot hold it)."""
        what = f"{type(record).__name__} {clip(getattr(record, 'id', '?'))}"
        try:
            document = record.model_dump_json()
            type(record).model_validate_json(document)
        except ValidationError as exc:
            raise InvalidArgument(f"refusing to store {what}, it would not read back: {_first_error(exc)}") from None
        where = _int_out_of_range(record.model_dump(mode="json"))
        if where is not None:
            raise InvalidArgument(f"refusing to store {what}: {clip(where, 80)} does not fit in 64 bits")

    def many(self, cls: type[T], kind: str, rows: Iterable[tuple[str, str | bytes | dict]]) -> list[T]:
        """The records of ``(id, document)`` rows in order, without those that do not validate."""
        records = []
        for record_id, document in rows:
            try:
                records.append(_validate(cls, document))
            except ValidationError as exc:
                self._report(kind, str(record_id), exc)
        return records

    def _report(self, kind: str, record_id: str, exc: ValidationError) -> None:
        with self._lock:
            if (kind, record_id) in self._reported:
                return
            full = len(self._reported) >= _MAX_REPORTED
            if not full:
                self._reported.add((kind, record_id))
        if full:
            logger.debug("%s: skipping unreadable stored %s %s", self._backend, kind, clip(record_id))
            return
        logger.warning(
            "%s: skipping stored %s %s, it does not validate: %s (reported once)",
            self._backend,
            kind,
            clip(record_id),
            _first_error(exc),
        )


def _int_out_of_range(value: object, where: str = "") -> str | None:
    """The path of the first integer in ``value`` that does not fit in a signed 64-bit integer."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        is_big = isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63
        return (where or "document") if is_big else None
    for key, item in items:
        found = _int_out_of_range(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def _validate(cls: type[T], document: str | bytes | dict) -> T:
    if isinstance(document, str | bytes):
        return cls.model_validate_json(document)
    return cls.model_validate(document)

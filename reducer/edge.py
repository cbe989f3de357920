"""The REST API's edge: every JSON document, id and bounded value the reducer accepts is checked here,
once (DESIGN §9), so the routes and the stores below trust what they are given.

- :func:`load_json` parses a body with Python's ``json``: NaN, Infinity and -Infinity, numbers that
  overflow a float, integers outside int64 and nesting deeper than :data:`MAX_DEPTH` are refused
  with :class:`~fedn.errors.InvalidArgument` naming the field (``config.lr: NaN is not allowed``).
- :func:`check_ids` matches ids in a path against :data:`ID_PATTERN` (the one pattern for ids).
- The pydantic types :data:`Id` and :func:`Line` carry the same rules into the request
  models of :mod:`reducer.requests`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import StringConstraints

from fedn.errors import InvalidArgument
from fedn.ids import ID_PATTERN, MAX_ID_CHARS

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "MAX_DEPTH",
    "MAX_JSON_BYTES",
    "Id",
    "Line",
    "check_ids",
    "load_json",
]

MAX_JSON_BYTES = 1 << 20
"""The largest JSON body the API reads (model uploads have ``max_model_bytes`` instead)."""
MAX_DEPTH = 32
"""Objects and arrays nested deeper than this are refused."""
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_NO_CONTROLS = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$"

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]


def Line(max_length: int, min_length: int = 0) -> Any:
    """A one-line text of bounded length: no control characters, no line breaks."""
    return Annotated[str, StringConstraints(min_length=min_length, max_length=max_length, pattern=_NO_CONTROLS)]


_ID_RE = re.compile(ID_PATTERN)
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_CONSTANTS = {"NaN", "Infinity", "-Infinity"}


class _Refused:
    """Stands in a parsed document for a value the edge refuses; :func:`_walk` reports it with its place."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _constant(name: str) -> _Refused:
    return _Refused(f"{name if name in _CONSTANTS else 'this constant'} is not allowed")


def _float(text: str) -> float | _Refused:
    value = float(text)
    return value if math.isfinite(value) else _Refused("the number is too large for a finite float")


def _int(text: str) -> int | _Refused:
    if len(text.lstrip("-")) <= 19:  # int64 has 19 digits; longer texts are never converted
        value = int(text)
        if INT64_MIN <= value <= INT64_MAX:
            return value
    return _Refused(f"integers must lie between {INT64_MIN} and {INT64_MAX}")


def _place(path: tuple[str | int, ...]) -> str:
    if not path:
        return "body"
    parts = []
    for part in path:
        if isinstance(part, int) or _PLAIN_KEY.match(part):
            parts.append(str(part))
        else:
            parts.append(repr(part if len(part) <= 32 else part[:32] + "…"))
    return ".".join(parts)


def _too_deep(path: tuple[str | int, ...]) -> InvalidArgument:
    return InvalidArgument(f"{_place(path)}: JSON nested deeper than {MAX_DEPTH} levels")


def _walk(value: object, path: tuple[str | int, ...], depth: int) -> None:
    if isinstance(value, _Refused):
        raise InvalidArgument(f"{_place(path)}: {value.reason}")
    if isinstance(value, dict | list):
        if depth >= MAX_DEPTH:
            raise _too_deep(path)
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            _walk(item, (*path, key), depth + 1)


def load_json(data: bytes | str) -> Any:
    """The JSON document in ``data``, checked (see the module docstring); InvalidArgument otherwise."""
    try:
        document = json.loads(data, parse_constant=_constant, parse_float=_float, parse_int=_int)
    except RecursionError:  # the parser nests a call per level: far too deep for any document of ours
        raise _too_deep(()) from None
    except ValueError as exc:  # includes UnicodeDecodeError
        raise InvalidArgument(f"request body is not valid JSON: {str(exc)[:200]}") from None
    _walk(document, (), 0)
    return document


def check_ids(params: Mapping[str, object]) -> None:
    """Refuse any id in ``params`` (a route's path parameters) that does not match :data:`ID_PATTERN`;
    the message names the parameter and never echoes the value (it may hold control characters)."""
    for name, value in params.items():
        if not isinstance(value, str) or not _ID_RE.fullmatch(value):
            raise InvalidArgument(f"{name}: an id is 1 to {MAX_ID_CHARS} characters of letters, digits and _ . : @ -")

"""The one pattern every id must match where it enters fedn: session, round, model, client, combiner.

Ids end up in model-store keys, file names, log lines and URLs, so they are checked once, at the edge
(the gRPC decode in :mod:`fedn.wire`), and the code below trusts them. Letters, digits and ``_ . -``,
at most :data:`MAX_ID_CHARS` characters: no path separators, no control characters, no key or file name
over a store's limit.
"""

from __future__ import annotations

import re

from fedn.errors import InvalidArgument

__all__ = ["ID_PATTERN", "MAX_ID_CHARS", "check_id", "check_text", "printable"]

MAX_ID_CHARS = 128
ID_PATTERN = rf"^[A-Za-z0-9_.\-]{{1,{MAX_ID_CHARS}}}$"
_ID_RE = re.compile(ID_PATTERN)
_SHOWN_CHARS = 40  # of a refused value, in the error message


def check_id(value: str, field: str, *, optional: bool = False) -> str:
    """``value`` if it is a valid id (or empty and ``optional``); InvalidArgument naming ``field`` otherwise.

    ``.`` and ``..`` alone are refused too: they name a directory, not a thing.
    """
    if optional and value == "":
        return value
    if not _ID_RE.fullmatch(value) or value in (".", ".."):
        raise InvalidArgument(
            f"{field} {_shown(value)!r} is not a valid id: 1 to {MAX_ID_CHARS} letters, digits or _ . -"
            f" ({len(value)} characters)"
        )
    return value


def check_text(text: str, field: str, max_chars: int, *, empty: bool = True) -> str:
    """``text`` if it is one printable line of at most ``max_chars`` characters (and not empty unless
    ``empty``): a name that is not an id (a client's display name, a metric name) but is still logged."""
    if len(text) > max_chars or not text.isprintable() or (not empty and not text):
        raise InvalidArgument(f"{field} {_shown(text)!r} must be printable text of 1 to {max_chars} characters")
    return text


def _shown(value: str) -> str:
    return printable(value[:_SHOWN_CHARS]) + ("..." if len(value) > _SHOWN_CHARS else "")


def printable(text: str) -> str:
    """``text`` with every non-printable character (control characters, line breaks) escaped, so it
    stays one line of plain text wherever it is shown."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
